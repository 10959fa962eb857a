"""Train stage: fine-tune the ensemble PRM on judge-labeled trajectories with Hugging Face accelerate.

One code path for every machine: CPU by default, and bf16 / DDP / FSDP2 / DeepSpeed when launched with
one of ``configs/accelerate/*.yaml`` (``accelerate launch --config_file ... -m tasks.train ...``).

ActPRM in-training selection (Duan et al., 2025, arXiv 2504.10559, Sec. 3 / Alg. 1): within every
micro-batch the ensemble first scores the trajectories with the same rule as the scoring stage
(``models.uncertainty``: a step is confident when its ensemble mean is beyond ``p_threshold`` either way and
its ensemble std is at most ``std_threshold``); trajectories it is already confident about are left out of the
classification loss, so the update is spent on what the ensemble does not know yet. A backbone without dropout
(Qwen2.5) scores the same in training mode, so selection reads the training forward's own scores instead of
running a separate no-grad pass (``EnsemblePRM.has_dropout``). Per optimizer step we log

- ``trained_fraction``: kept / seen, where *seen* counts the trajectories of the optimizer step (all its
  micro-batches, all processes) and *kept* those that entered the classification loss (the uncertain ones;
  all of them when selection is off). The official trainer's ``trust_percentage`` is the opposite share, the
  confident trajectories left out: 1 - trained_fraction (this metric was called ``trusted_fraction`` before);
- ``pseudo_label_accuracy``: over the left-out (confident) trajectories of the step, the share whose
  ensemble-predicted first error equals the label's; absent when nothing was left out. It says how safe it
  is to trust the ensemble where it is confident.

An optimizer step with nothing kept anywhere is not taken (no update, not even weight decay), and a run that
never kept anything is reported as skipped, never as a NaN loss.

Reproducible on CPU: the data order (accelerate's seedable sampler, reseeded per epoch), the bootstrap masks
and dropout (both reseeded per micro-batch) are all functions of ``seed`` and the step, so the same
seed gives identical final weights, and a run resumed from ``checkpoints/step_N`` ends where an
uninterrupted one does (the checkpoints, their fingerprint and the counters they carry: tasks/train_state.py).
"""

from __future__ import annotations

import json
import logging
import math
import os
import shutil
import sys
import warnings
from collections.abc import Callable, Iterator
from dataclasses import asdict, dataclass, field, replace
from pathlib import Path
from typing import Any, Literal, get_args, get_origin

import torch

from actprm.config import TrainConfig
from actprm.errors import ActPRMError
from actprm.runlog import stage_logger
from models.errors import ModelError
from tasks.train_state import CHECKPOINTS_DIR, Checkpoints, Progress, run_fingerprint, save_final_model

log = logging.getLogger(__name__)

MODEL_DIR = "model"
RESULT_FILE = "train_result.json"


@dataclass
class TrainResult:
    model_dir: str | None
    train_trajectories: int
    steps: int  # optimizer steps of the run (including ones done before a resume)
    metrics: dict[str, Any] = field(default_factory=dict)
    skipped: bool = False
    reason: str | None = None
    resumed_from_step: int | None = None
    mlflow_run_id: str | None = None  # the run the train stage logged into (set by train_round, not train_prm)

    def as_dict(self) -> dict[str, Any]:
        return asdict(self)


def _check_examples(examples: list[dict]) -> None:
    for i, ex in enumerate(examples):
        steps = ex.get("steps")
        if not isinstance(ex.get("question"), str) or not isinstance(steps, list) or not steps:
            raise ActPRMError(f"training example {i} needs a question and a non-empty list of steps")
        if not all(isinstance(step, str) for step in steps):
            raise ActPRMError(f"training example {i} has a step that is not a string")
        fe = ex.get("first_error")
        if not isinstance(fe, int) or isinstance(fe, bool) or not -1 <= fe < len(steps):
            raise ActPRMError(f"training example {i} has first_error={fe!r}; expected -1 (all correct) "
                              f"or a step index in 0..{len(steps) - 1}")


def _confidence(logits: torch.Tensor, step_trajectory: torch.Tensor, n: int, first_errors: torch.Tensor,
                p_threshold: float, std_threshold: float) -> tuple[torch.Tensor, torch.Tensor]:
    """Per trajectory of a micro-batch of n, from its (E, N) step logits: (the ensemble is confident, its predicted
    first error == the label), by the scoring stage's rule."""
    from models.uncertainty import predicted_first_error, step_stats, trajectory_uncertain

    probs = torch.sigmoid(logits.float()).cpu()
    counts = torch.bincount(step_trajectory.cpu(), minlength=n).tolist()
    confident, agrees = [], []
    for i, p in enumerate(torch.split(probs, counts, dim=1)):
        mu, sigma = step_stats(p)
        confident.append(not trajectory_uncertain(mu, sigma, p_threshold, std_threshold))
        agrees.append(int(predicted_first_error(mu)) == int(first_errors[i]))
    return torch.tensor(confident), torch.tensor(agrees)


def _confident_trajectories(model, batch, first_errors: torch.Tensor, p_threshold: float, std_threshold: float):
    """`_confidence` from a scoring pass in the scoring stage's mode (eval: no dropout; no grad), on the current
    weights: what a model with dropout needs, since its training forward scores differently."""
    model.eval()
    with torch.no_grad():
        out = model(**batch.model_inputs())
    model.train()
    return _confidence(out.logits, out.step_trajectory, len(batch), first_errors, p_threshold, std_threshold)


def _make_trainable(model, *, freeze_backbone: bool, reg_lambda: float, learning_probability: float,
                    gradient_checkpointing: bool) -> None:
    """Set up a built or loaded model for this run, in place."""
    # The run's settings win over whatever the warm-start model was trained with (a model trained with a frozen
    # backbone may be fine-tuned whole in a later run); saved with the model.
    model.freeze(freeze_backbone)
    model.config.reg_lambda = reg_lambda
    model.config.learning_probability = learning_probability
    pooler = getattr(model.backbone, "pooler", None)
    if pooler is not None:
        # The PRM reads separator hidden states, never the pooled [CLS] output (BERT/MiniLM backbones): its
        # weights get no gradient, and DDP refuses trainable parameters that get none.
        pooler.requires_grad_(False)
    if gradient_checkpointing:  # transformers 5 renamed it; keep working with either name
        enable = (getattr(model.backbone, "activation_checkpointing_enable", None)
                  or model.backbone.gradient_checkpointing_enable)
        enable()


def _optimizer(model, *, lr: float, head_lr: float | None, weight_decay: float) -> torch.optim.Optimizer:
    """AdamW where fresh heads on a pre-trained backbone learn at head_lr (when set) and the backbone at lr; the
    warmup and decay schedule scales both groups alike."""
    heads = {id(p) for p in model.head_parameters()}
    groups = [{"params": [p for p in model.parameters() if p.requires_grad and id(p) not in heads], "lr": lr},
              {"params": [p for p in model.parameters() if p.requires_grad and id(p) in heads], "lr": head_lr or lr}]
    return torch.optim.AdamW([g for g in groups if g["params"]], lr=lr, weight_decay=weight_decay)


def _accelerator(*, mixed_precision: str, grad_accum: int, seed: int):
    """A fresh Accelerator for one training run."""
    from accelerate import Accelerator, DataLoaderConfiguration
    from accelerate.state import AcceleratorState, GradientState
    from accelerate.utils import GradientAccumulationPlugin

    # accelerate keeps one AcceleratorState per process and refuses a second run with other mixed precision;
    # a process that trains several times (a flow's rounds, a study) starts each run from a clean state. The
    # process group (PartialState) is kept. Private API: accelerate exposes no public reset.
    AcceleratorState._reset_state()
    GradientState._reset_state()
    # An Accelerator launched from a config file takes mixed precision from it unless we insist on one.
    return Accelerator(
        mixed_precision=None if mixed_precision == "no" else mixed_precision,
        # A plugin, not gradient_accumulation_steps=: `accelerate launch` exports its own default (1) in an
        # environment variable that would silently override the argument and break the LR schedule.
        gradient_accumulation_plugin=GradientAccumulationPlugin(num_steps=grad_accum),
        step_scheduler_with_optimizer=False,  # stepped by hand once per optimizer step, on every process
        dataloader_config=DataLoaderConfiguration(use_seedable_sampler=True, data_seed=seed),
    )


def _log_params(mlflow, params: dict[str, Any]) -> None:
    try:
        mlflow.log_params({f"train.{k}": v for k, v in params.items()})
    except mlflow.exceptions.MlflowException as exc:  # MLflow never lets a logged param change
        # A retried flow run reopens its round's MLflow run; when the retry trains under other settings (e.g.
        # from the registered copy of the previous round's model on another worker), the first attempt's
        # params stay and the metrics are this training's.
        log.warning("the MLflow run keeps the params of an earlier attempt: %s", str(exc).splitlines()[0][:300])


def _optimizer_step(accelerator, model, optimizer, scheduler, totals: torch.Tensor, *, step: int, lr: float,
                    max_grad_norm: float | None, mixed_precision: str) -> float | None:
    """Take optimizer step `step` from the accumulated gradients, given the step's window `totals` summed over
    processes; returns the gradient norm before clipping (None when not clipped or not taken). Refuses a
    non-finite loss or gradient before any weight changes; takes no step when no trajectory was kept."""
    kept, nonfinite = float(totals[1]), float(totals[6])
    if nonfinite:
        raise ActPRMError(f"training diverged at optimizer step {step}: the loss is not finite "
                          f"(lr={lr}); lower the learning rate or check the model weights — nothing was saved")
    grad_norm = None
    if kept > 0:
        if max_grad_norm:
            grad_norm = float(accelerator.clip_grad_norm_(model.parameters(), max_grad_norm))
            if not math.isfinite(grad_norm) and mixed_precision != "fp16":
                raise ActPRMError(f"training diverged at optimizer step {step}: gradient norm "
                                  f"is {grad_norm} (lr={lr}); lower the learning rate — nothing was saved")
        optimizer.step()
    optimizer.zero_grad(set_to_none=True)
    with warnings.catch_warnings():  # a skipped step still advances the schedule, on purpose
        warnings.filterwarnings("ignore", message="Detected call of `lr_scheduler.step")
        scheduler.step()
    return grad_norm


def _run_params(cfg: TrainConfig, *, given_model: bool) -> dict[str, Any]:
    """The knobs that change the weights: the checkpoints' fingerprint and the MLflow params (train.*). Its keys
    and values are what they were before TrainConfig, so checkpoints written by earlier versions still resume."""
    params = {"preset": cfg.preset, "num_heads": cfg.num_heads, "init_from": cfg.init_from or None,
              "given_model": given_model, "epochs": cfg.epochs, "batch_size": cfg.batch_size,
              "grad_accum": cfg.grad_accum, "lr": cfg.lr, "head_lr": cfg.head_lr, "weight_decay": cfg.weight_decay,
              "warmup_ratio": cfg.warmup_ratio, "seed": cfg.seed, "max_length": cfg.max_length,
              "reg_lambda": cfg.reg_lambda, "learning_probability": cfg.learning_probability,
              "in_training_selection": cfg.in_training_selection, "p_threshold": cfg.p_threshold,
              "std_threshold": cfg.std_threshold, "max_grad_norm": cfg.max_grad_norm,
              "freeze_backbone": cfg.freeze_backbone, "backbone_path": cfg.backbone_path,
              # A checkpoint's position in the data and its per-rank random states are only valid for the same
              # number of processes (accelerate launch sets WORLD_SIZE), and its weights for the same precision.
              "mixed_precision": cfg.mixed_precision, "processes": int(os.environ.get("WORLD_SIZE", "1"))}
    if cfg.warmup_steps is not None:  # only when set, so runs without it keep their checkpoints' fingerprint
        params["warmup_steps"] = cfg.warmup_steps
    return params


def _model_to_train(cfg: TrainConfig, model, tokenizer):
    """The model `train_prm` was given, else the one `cfg.init_from` names, else a fresh one of `cfg.preset`; set up
    for this run's settings."""
    from models import EnsemblePRM, build_prm, check_compatible

    if model is None:
        if cfg.init_from:
            model, tokenizer = EnsemblePRM.from_pretrained(cfg.init_from, with_tokenizer=True)
        else:
            model, tokenizer = build_prm(cfg.preset, num_heads=cfg.num_heads, seed=cfg.seed,
                                         backbone_path=cfg.backbone_path)
    check_compatible(model, tokenizer)
    _make_trainable(model, freeze_backbone=cfg.freeze_backbone, reg_lambda=cfg.reg_lambda,
                    learning_probability=cfg.learning_probability, gradient_checkpointing=cfg.gradient_checkpointing)
    return model, tokenizer


def _loader(examples: list[dict], tokenizer, cfg: TrainConfig):
    """Shuffled micro-batches of `examples` (indices, so a trajectory's bootstrap mask follows it), encoded with
    their step labels."""
    from torch.utils.data import DataLoader

    from models import StepBatcher

    batcher = StepBatcher(tokenizer, max_length=cfg.max_length)

    def collate(indices: list[int]) -> dict[str, Any]:
        chosen = [examples[i] for i in indices]
        fes = [ex["first_error"] for ex in chosen]
        batch = batcher.encode([ex["question"] for ex in chosen], [ex["steps"] for ex in chosen], fes)
        return {"batch": batch, "first_error": torch.tensor(fes), "index": torch.tensor(indices)}

    return DataLoader(list(range(len(examples))), batch_size=cfg.batch_size, shuffle=True, collate_fn=collate)


class TrainingRun:
    """One call of `train_prm`, in three parts: `__init__` sets the run up (model, data, optimizer, schedule, the
    checkpoint to resume), `step` trains one micro-batch (and takes the optimizer step that completes), `finish`
    saves the model and the result."""

    # Metric window of the optimizer step under way, summed over its micro-batches (then over processes):
    WINDOW = ("seen", "kept", "confident", "pseudo_correct", "cls", "reg", "nonfinite")

    def __init__(self, examples: list[dict], cfg: TrainConfig, out_dir: Path, *, model=None, tokenizer=None,
                 resume: bool = True, progress: bool = True,
                 on_metrics: Callable[[int, dict[str, float]], None] | None = None) -> None:
        from accelerate.utils import set_seed
        from transformers import get_linear_schedule_with_warmup

        self.examples, self.cfg, self.out_dir, self.on_metrics = examples, cfg, out_dir, on_metrics
        self.given_model = model is not None
        self.params = _run_params(cfg, given_model=self.given_model)
        self.fingerprint = run_fingerprint(examples, self.params)

        accelerator = self.accelerator = _accelerator(mixed_precision=cfg.mixed_precision, grad_accum=cfg.grad_accum,
                                                      seed=cfg.seed)
        set_seed(cfg.seed)
        model, self.tokenizer = _model_to_train(cfg, model, tokenizer)
        set_seed(cfg.seed)  # building/loading a model may consume RNG; training starts from the same state regardless
        loader = _loader(examples, self.tokenizer, cfg)
        optimizer = _optimizer(model, lr=cfg.lr, head_lr=cfg.head_lr, weight_decay=cfg.weight_decay)
        self.model, self.optimizer, self.loader = accelerator.prepare(model, optimizer, loader)
        self.model.train()  # from_pretrained hands back a model in eval mode
        # Without dropout the training forward scores exactly as the scoring stage's eval pass would, so selection
        # reads its scores and skips that extra forward pass of every micro-batch (the Qwen2.5 backbones).
        self.one_pass = not accelerator.unwrap_model(self.model).has_dropout()
        self.steps_per_epoch = math.ceil(len(self.loader) / cfg.grad_accum)
        self.total_steps = self.steps_per_epoch * cfg.epochs
        warmup = (cfg.warmup_steps if cfg.warmup_steps is not None
                  else math.ceil(cfg.warmup_ratio * self.total_steps))
        self.scheduler = accelerator.prepare(get_linear_schedule_with_warmup(
            self.optimizer, num_warmup_steps=warmup, num_training_steps=self.total_steps))
        self.state = Progress()
        accelerator.register_for_checkpointing(self.state)

        self.checkpoints = Checkpoints(out_dir / CHECKPOINTS_DIR, self.fingerprint, accelerator)
        self.checkpoints.drop_stale()
        self.resumed_from = None
        latest = self.checkpoints.latest() if resume else None
        if latest is not None:
            accelerator.load_state(str(latest))
            self.resumed_from = self.state.completed_steps
            log.info("resuming training from %s (optimizer step %d of %d)", latest, self.resumed_from,
                     self.total_steps)

        self.mlflow = _active_mlflow() if accelerator.is_main_process else None
        if self.mlflow is not None:
            _log_params(self.mlflow, self.params | {"trajectories": len(examples)})
        self.bar = None
        if progress and accelerator.is_local_main_process:
            from tqdm.auto import tqdm
            self.bar = tqdm(total=self.total_steps, initial=self.state.completed_steps, desc="train", unit="step",
                            file=sys.stderr)
        self.window = torch.zeros(len(self.WINDOW), dtype=torch.float64)
        self.micro = 0  # micro-batches of the optimizer step under way
        self.epoch = 0

    def batches(self) -> Iterator[dict[str, Any]]:
        """The micro-batches still to train, epoch after epoch; a resumed run skips those its checkpoint had done."""
        start_epoch = self.state.completed_steps // self.steps_per_epoch
        skip = (self.state.completed_steps % self.steps_per_epoch) * self.cfg.grad_accum
        for epoch in range(start_epoch, self.cfg.epochs):
            self.epoch = epoch  # the epoch `step` reports its optimizer steps under
            self.loader.set_epoch(epoch)
            if epoch == start_epoch and skip:
                yield from self.accelerator.skip_first_batches(self.loader, skip)
            else:
                yield from self.loader

    def step(self, item: dict[str, Any]) -> None:
        """Train on one micro-batch with ActPRM's in-training selection; when it completes an optimizer step, take
        that step and report it (metrics, MLflow, progress bar, checkpoint)."""
        cfg, accelerator, model, device = self.cfg, self.accelerator, self.model, self.accelerator.device
        batch: Any = item["batch"]
        n = len(batch)
        with accelerator.accumulate(model):
            judged: dict[str, torch.Tensor] = {}
            if not cfg.in_training_selection:
                judged["confident"] = judged["agrees"] = torch.zeros(n, dtype=torch.bool)
            elif not self.one_pass:
                judged["confident"], judged["agrees"] = _confident_trajectories(
                    model, batch, item["first_error"], cfg.p_threshold, cfg.std_threshold)

            def keep(logits, rows, n=n, first_errors=item["first_error"]):
                """The trajectories that enter the loss; with one pass, judged on this forward's scores."""
                if not judged:
                    judged["confident"], judged["agrees"] = _confidence(logits, rows, n, first_errors,
                                                                        cfg.p_threshold, cfg.std_threshold)
                return (~judged["confident"]).to(device)
            # Dropout comes from a seed fixed per (seed, optimizer step, micro-batch, process), not from
            # whatever the RNG went through before (a resumed run builds its data iterator at another
            # moment): so a resumed run draws exactly what an uninterrupted one does.
            micro_seed = (((cfg.seed * 1_000_003 + self.state.completed_steps) * 1_009 + self.micro) * 131
                          + accelerator.process_index)
            torch.manual_seed(micro_seed)
            # The bootstrap mask is fixed per (seed, trajectory), whatever minibatch or epoch it comes in.
            mask = accelerator.unwrap_model(model).bootstrap_mask_for(item["index"].tolist(), cfg.seed)
            out = model(**batch.model_inputs(), labels=batch.labels, bootstrap_mask=mask.to(device),
                        trajectory_mask=keep)
            confident, agrees = judged["confident"], judged["agrees"]
            loss = out.loss
            finite = bool(torch.isfinite(loss.detach()))
            self.window += torch.tensor([n, int((~confident).sum()), int(confident.sum()),
                                         int((confident & agrees).sum()),
                                         float(out.cls_loss.detach()) if finite else 0.0,
                                         float(out.reg_loss.detach()) if finite else 0.0, 0 if finite else 1],
                                        dtype=torch.float64)
            # Backward even on a non-finite loss: under DDP every rank must join the gradient all-reduce;
            # `_optimizer_step` refuses the step, before any weight changes.
            accelerator.backward(loss)
            self.micro += 1
            if not accelerator.sync_gradients:
                return
            totals = accelerator.reduce(self.window.to(device), reduction="sum").cpu()
            grad_norm = _optimizer_step(accelerator, model, self.optimizer, self.scheduler, totals,
                                        step=self.state.completed_steps + 1, lr=cfg.lr,
                                        max_grad_norm=cfg.max_grad_norm, mixed_precision=cfg.mixed_precision)
        self._report(totals, grad_norm)

    def _report(self, totals: torch.Tensor, grad_norm: float | None) -> None:
        """Record the optimizer step just taken: its metrics (on_metrics, MLflow `train/*`), the bar, a checkpoint."""
        state = self.state
        metrics = state.record_step(self.epoch, totals.tolist(), self.micro * self.accelerator.num_processes)
        metrics["lr"] = self.scheduler.get_last_lr()[0]
        if grad_norm is not None:
            metrics["grad_norm"] = grad_norm
        self.window.zero_()
        self.micro = 0
        if self.accelerator.is_main_process:
            if self.on_metrics is not None:
                self.on_metrics(state.completed_steps, dict(metrics))
            if self.mlflow is not None:
                self.mlflow.log_metrics({f"train/{k}": v for k, v in metrics.items()}, step=state.completed_steps)
        if self.bar is not None:
            self.bar.update(1)
            self.bar.set_postfix(cls=f"{metrics['cls_loss']:.4f}", trained=f"{metrics['trained_fraction']:.2f}")
        if self.cfg.checkpoint_every and state.completed_steps % self.cfg.checkpoint_every == 0:
            self.checkpoints.save(state.completed_steps)

    def finish(self) -> TrainResult:
        """Save the trained model (and a last checkpoint) and write the result; a run whose selection kept no
        trajectory at all is reported as skipped, with nothing saved."""
        from models import EnsemblePRM, build_prm

        cfg, state, n = self.cfg, self.state, len(self.examples)
        if self.bar is not None:
            self.bar.close()
        final = state.final_metrics(cfg.epochs - 1)
        if state.kept == 0:
            return TrainResult(None, n, state.completed_steps, final, skipped=True,
                               reason=f"in-training selection left no trajectory to learn from: the ensemble is "
                                      f"already confident on all {n} (p={cfg.p_threshold}, std={cfg.std_threshold})",
                               resumed_from_step=self.resumed_from)
        if not cfg.checkpoint_every or state.completed_steps % cfg.checkpoint_every:
            # the end state, so a crash while saving the model below loses no training
            self.checkpoints.save(state.completed_steps)

        model_dir = self.out_dir / MODEL_DIR
        rebuild = None if self.given_model else (
            (lambda: EnsemblePRM.from_pretrained(cfg.init_from)) if cfg.init_from
            else (lambda: build_prm(cfg.preset, num_heads=cfg.num_heads, seed=cfg.seed,
                                    backbone_path=cfg.backbone_path)[0]))
        save_final_model(self.accelerator, self.model, self.tokenizer, model_dir, rebuild)
        result = TrainResult(str(model_dir), n, state.completed_steps, final, resumed_from_step=self.resumed_from)
        if self.accelerator.is_main_process:
            (self.out_dir / RESULT_FILE).write_text(json.dumps(result.as_dict() | {"fingerprint": self.fingerprint},
                                                               indent=2))
        self.accelerator.wait_for_everyone()
        return result


def train_prm(
    examples: list[dict],
    cfg: TrainConfig,
    *,
    output_dir: str | Path,
    model=None,
    tokenizer=None,
    resume: bool = True,
    progress: bool = True,
    on_metrics: Callable[[int, dict[str, float]], None] | None = None,
) -> TrainResult:
    """Fine-tune the ensemble PRM on `examples` ({question, steps, first_error}; -1 = all correct) under `cfg`.

    The model is `model`/`tokenizer` when given (trained in place), else loaded from `cfg.init_from` (warm start
    from a saved model dir), else a fresh `build_prm(cfg.preset, cfg.num_heads, cfg.seed)`. The result lands in
    `output_dir/model` (model.save_pretrained with its tokenizer); checkpoints in `output_dir/checkpoints/step_N`
    every `cfg.checkpoint_every` optimizer steps (0: only at the end). With `resume`, a rerun continues from the
    latest checkpoint that matches the same data and settings. `on_metrics(step, metrics)` is called on the
    main process after every optimizer step. Raises ActPRMError on bad examples or a non-finite loss (a setting
    out of range cannot reach here: TrainConfig refuses it).
    """
    if (model is None) != (tokenizer is None):
        raise ActPRMError("pass both model and tokenizer, or neither")
    _check_examples(examples)
    if not examples:
        return TrainResult(None, 0, 0, skipped=True,
                           reason="no labeled trajectories to train on: label some with the judge first")
    run = TrainingRun(examples, cfg, Path(output_dir), model=model, tokenizer=tokenizer, resume=resume,
                      progress=progress, on_metrics=on_metrics)
    for item in run.batches():
        run.step(item)
    return run.finish()


def _active_mlflow():
    """mlflow, when the caller has a run open; never imports it otherwise (it is slow to import)."""
    mlflow = sys.modules.get("mlflow")
    if mlflow is not None and mlflow.active_run() is not None:
        return mlflow
    return None


def loop_train_dir(settings, pool: str, loop: str) -> Path:
    """Where an active-learning loop (tasks.pipeline.open_loop) trains its rounds."""
    return settings.checkpoints_dir / "train" / pool / loop


def round_dir(settings, pool: str, round: int | None, mlflow_run_id: str | None = None, *,
              loop: str | None = None) -> Path:
    """Where a round trains (checkpoints, then MODEL_DIR). A loop's round trains per (pool, loop, round), whoever
    runs it: a rerun that continues the loop resumes from the killed run's checkpoints, which are resumed only when
    they match the round's data and settings (their fingerprint, tasks/train_state.py). Outside a loop: per (pool,
    Prefect flow run, round), so a retried flow run resumes, or per MLflow run outside a flow."""
    if loop:
        return loop_train_dir(settings, pool, loop) / f"round-{round or 0}"
    from actprm.tracking import prefect_flow_run_id

    flow_run = prefect_flow_run_id()
    scope = f"flow-run-{flow_run}" if flow_run else (mlflow_run_id or "no-run")
    return settings.checkpoints_dir / "train" / pool / scope / f"round-{round or 0}"


def drop_checkpoints(folder: Path) -> int:
    """Remove every training checkpoint under `folder` (a round's or a loop's); returns how many. The models
    trained there stay: the next round starts from its predecessor's."""
    found = sorted(folder.rglob(CHECKPOINTS_DIR)) if folder.is_dir() else []
    for checkpoints in found:
        shutil.rmtree(checkpoints, ignore_errors=True)
    return len(found)


def drop_round_checkpoints(settings, pool: str, round: int, loop: str) -> int:
    """Once the round's model is registered its checkpoints are only disk (a 7B model's optimizer state is tens of
    GB): a rerun finds the round registered and does not train it again."""
    return drop_checkpoints(round_dir(settings, pool, round, loop=loop))


def train_round(settings, pool: str, *, init_from: str | Path | None = None, round: int | None = None,
                mlflow_run_id: str | None = None, only_ids: list[str] | None = None,
                loop: str | None = None) -> TrainResult:
    """Train stage (its Prefect task: flows.prefect_tasks.train_task): train on every judge label of the pool's
    train split, warm-starting from `init_from` (when given and settings.loop.warm_start), logging per-step metrics
    into MLflow run `mlflow_run_id`.

    The DuckDB file is held only while the examples are read, never during training. The output dir is
    `round_dir` (of `loop`, when the round is an active-learning loop's). Returns the TrainResult, with
    `mlflow_run_id`.
    """
    from actprm.judges import judge_identity
    from actprm.store import Store
    from actprm.tracking import logging_into

    judge_model, prompt_version = judge_identity(settings)
    with Store(settings.duckdb_path) as store:
        store.require_pool(pool)
        # The labels of the judge and prompt this pipeline buys with, as selection counts them: a label bought
        # under another prompt version (or judge) would otherwise train in silently, newest first.
        examples = store.training_examples(pool, judge_model=judge_model, prompt_version=prompt_version)
    if only_ids is not None:
        # ActPRM's online update (Duan et al., 2025, Alg. 1): a warm-started model learns from the
        # batch it just selected and paid for, not the whole history again.
        wanted = set(only_ids)
        examples = [e for e in examples if e["id"] in wanted]
    cfg = TrainConfig.from_settings(settings, init_from=str(init_from) if init_from and settings.loop.warm_start
                                    else None)
    out = round_dir(settings, pool, round, mlflow_run_id, loop=loop)
    with logging_into(mlflow_run_id, settings.tracking_uri):
        result = train_prm(examples, cfg, output_dir=out, progress=sys.stderr.isatty())
    if result.skipped:
        stage_logger().warning("train %s: skipped, %s", pool, result.reason)
    else:
        stage_logger().info("train %s: %d labeled trajectories, %d optimizer steps, final loss %s", pool,
                            result.train_trajectories, result.steps, result.metrics.get("loss", "n/a"))
    return replace(result, mlflow_run_id=mlflow_run_id)


# -- `accelerate launch -m tasks.train` --------------------------------------------------------------
def _read_examples(path: str) -> list[dict]:
    """Training examples from a JSONL file, each line checked (`_check_examples` checks the values)."""
    try:
        fh = open(path, encoding="utf-8")
    except OSError as exc:
        raise ActPRMError(f"--examples {path}: {exc.strerror}") from None
    examples = []
    with fh:
        for n, line in enumerate(fh, start=1):
            if not line.strip():
                continue
            try:
                example = json.loads(line)
            except ValueError as exc:
                raise ActPRMError(f"--examples {path} line {n}: not JSON ({exc})") from None
            if not isinstance(example, dict):
                raise ActPRMError(f"--examples {path} line {n}: expected a JSON object, got {type(example).__name__}")
            examples.append(example)
    return examples


def _add_config_flags(parser) -> None:
    """One flag per TrainConfig field (`lr` -> `--lr`), its help and default the field's: never retyped here.
    Unset flags stay out of the namespace, so YAML, env and the preset's own defaults apply beneath them."""
    import argparse

    group = parser.add_argument_group(
        "training settings", "Defaults: actprm.config.TrainConfig, beneath --config / ACTPRM_CONFIG and ACTPRM_* "
        "variables as for `actprm` (the qwen2.5-math-7b preset has its own: actprm.config.PRESET_DEFAULTS).")
    for name, info in TrainConfig.model_fields.items():
        flag = "--" + name.replace("_", "-")
        help_text = f"{info.description} (default: {info.default})".replace("%", "%%")
        if info.annotation is bool:
            group.add_argument(flag, dest=name, action=argparse.BooleanOptionalAction, default=argparse.SUPPRESS,
                               help=help_text)
        else:
            choices = get_args(info.annotation) if get_origin(info.annotation) is Literal else None
            optional = type(None) in get_args(info.annotation)
            # Choices are shown, not enforced here: TrainConfig refuses a bad value with its one-line error.
            metavar = "{" + ",".join(choices) + "}" if choices else f"{name.upper()}|none" if optional else None
            group.add_argument(flag, dest=name, default=argparse.SUPPRESS, metavar=metavar, help=help_text)
    # The flag's name before it was generated from in_training_selection; kept for scripts that use it.
    group.add_argument("--no-selection", dest="in_training_selection", action="store_false",
                       default=argparse.SUPPRESS, help=argparse.SUPPRESS)


def _config_from_flags(flags: dict[str, Any], config_file: str | None) -> TrainConfig:
    """The run config from the given flags over YAML/env and the defaults, through load_settings as `actprm`
    builds it (its sections, its preset defaults); `none` sets an optional field to None."""
    from actprm.config import load_settings

    sections: dict[str, dict[str, Any]] = {}
    to_none = {}
    for name, value in flags.items():
        if isinstance(value, str) and value.lower() in ("none", "null"):
            to_none[name] = None
        else:
            sections.setdefault(TrainConfig.section_of(name), {})[name] = value
    return TrainConfig.from_settings(load_settings(sections, config_file=config_file), **to_none)


def main(argv: list[str] | None = None) -> int:
    """Entry point for multi-process runs: examples from a JSONL file (one {question, steps, first_error}
    per line) or from a pool's judge labels in DuckDB."""
    import argparse

    from actprm.config import ConfigError

    ap = argparse.ArgumentParser(prog="python -m tasks.train", description=main.__doc__)
    src = ap.add_mutually_exclusive_group(required=True)
    src.add_argument("--examples", help="JSONL file of {question, steps, first_error}")
    src.add_argument("--pool", help="pool whose judge-labeled trajectories to train on (needs --duckdb)")
    ap.add_argument("--duckdb", help="DuckDB file of the pipeline (with --pool)")
    ap.add_argument("--judge-model", help="with --pool: only this judge's labels (default: the newest label of each)")
    ap.add_argument("--prompt-version", help="with --pool: only labels bought under this prompt version")
    ap.add_argument("--output-dir", required=True)
    ap.add_argument("--config", help="YAML config file, as `actprm --config` (default: ACTPRM_CONFIG)")
    _add_config_flags(ap)
    args = ap.parse_args(argv)
    try:
        cfg = _config_from_flags({k: v for k, v in vars(args).items() if k in TrainConfig.model_fields}, args.config)
        if args.examples:
            examples = _read_examples(args.examples)
        else:
            if not args.duckdb:
                raise ActPRMError("--pool needs --duckdb")
            if not os.path.isfile(args.duckdb):  # opening a missing file would create an empty store
                raise ActPRMError(f"--duckdb {args.duckdb}: no such file")
            from actprm.store import Store

            with Store(args.duckdb, read_only=True) as store:
                store.require_pool(args.pool)
                examples = store.training_examples(args.pool, judge_model=args.judge_model,
                                                   prompt_version=args.prompt_version)
        result = train_prm(examples, cfg, output_dir=args.output_dir)
    except (ActPRMError, ModelError, ConfigError) as exc:
        print(f"error: {exc}", file=sys.stderr)
        return 1
    if os.environ.get("RANK", "0") == "0":  # one report per run, not one per process
        print(json.dumps(result.as_dict()))
    return 0


if __name__ == "__main__":
    logging.basicConfig(level=logging.INFO)
    sys.exit(main())
