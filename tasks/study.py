"""The active-learning efficiency study: ActPRM against random, entropy, BALD and full-data training.

Protocol (after ActPRM's pool-based setting, Duan et al., 2025, arXiv 2504.10559, Sec. 4): the pool's
train split is streamed once, in a seeded order, in `rounds` batches. For each batch the *current*
ensemble scores the batch, the strategy picks which trajectories to label (gold labels stand in for the
judge), and the ensemble trains on the labels bought so far. The budget `b` is the fraction of the train
split that may be labeled; it is paced along the stream (after a batch, at most round(b * seen) labels),
so every strategy spends it at the same rate. ActPRM only ever buys trajectories the `uncertain` rule
flags (aleatoric + epistemic, `models.uncertainty`), ranked by the actprm acquisition score; unspent
quota carries over to later batches. Baselines rank every trajectory of the batch by their own score, as
`tasks.select` does. Full-data training is the same protocol at b = 1 (every trajectory is labeled, so it
does not depend on the strategy); it runs once per seed. Evaluation: ProcessBench F1 on the pool's held-out
eval split, both at the fixed threshold 0.5 (`f1`) and at a threshold cross-fitted on the eval split
(`f1_tuned`, `evaluate_heads`), as the paper's reference code tunes it.

Simplifications, to fit 30 minutes on 2 CPU cores:
- The backbone is frozen and the per-step states its heads read (`EnsemblePRM.step_states`: the
  separator state, or the step's token mean for the `cpu` preset) are computed once per trajectory
  (`step_states`); every run then trains only the ensemble heads on those cached states with the model's
  own `head_logits` and `step_loss` (BCE, bootstrap mask, anchor regularization). `top_layers` (off in the
  presets) trains the backbone's top layers too: the states entering them are cached per token instead, and each
  run trains its own copy of the pretrained layers with the heads (`TopLayers`).
- The paper takes one update per pool batch with a 7B backbone; frozen features need more, so after each
  batch the heads take `steps_per_round` AdamW steps on minibatches drawn from all labels bought so far
  (`replay_minibatch`; `replay_new_share` of each from the batch's own labels), with the learning rate
  decaying linearly to 0 over the run (`lr_decay`).
  Every run takes the same number of steps whatever its budget, so budgets differ only in what was
  labeled. Training is identical for all strategies (no in-training selection): only selection differs.
- `final_retrain` (off in the presets) scores what a strategy bought rather than the heads that bought it:
  fresh heads train on the bought labels exactly as full data trains on all of them (`retrain_on`).
- Rounding: a budget b buys round-half-up(b * N) labels over N train trajectories (`budget_labels`);
  ActPRM buys fewer only when its rule finds too few uncertain trajectories left (reported as `labels`).

Each seed also evaluates the untrained ensemble (`untrained_f1`): when full-data training does not beat
it by LEARNED_F1, the result carries a `warning` that the PRM learned nothing and the comparison is moot.
The summary, table, plot and MLflow run are in `tasks.study_report`.
"""

from __future__ import annotations

import contextlib
import dataclasses
import hashlib
import json
import math
import time
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from types import SimpleNamespace
from typing import Any

import torch
from torch import nn

from actprm.errors import ActPRMError

STRATEGY_NAMES = ("actprm", "random", "entropy", "bald")
WITHIN_F1 = 0.005  # "within 0.5 F1 points of full data", in F1 units
STATES_VERSION = 3  # bump when the layout or a readout changes, so cached step states are recomputed
# Bump when the heads' training changes its float arithmetic (same protocol, other rounding): runs then no longer
# reproduce bit for bit, so a study is not extended across versions. 2: training skips unlabeled steps, fused AdamW.
NUMERICS_VERSION = 2
TOKEN_GROUP = 16  # trajectories per forward of the trained top layers (`_forward_tokens`)
LEARNED_F1 = 0.02  # full data must beat the untrained ensemble by 2 F1 points for the comparison to mean anything


@dataclass(frozen=True)
class StudyPreset:
    name: str
    budgets: tuple[float, ...]      # label fractions of the train split; 1.0 is full data
    seeds: tuple[int, ...]
    model_preset: str               # used unless the config names a model preset
    num_heads: int
    rounds: int                     # pool batches the stream is cut into (AL rounds)
    steps_per_round: int            # head optimizer steps after each batch's labels arrive
    batch_size: int                 # trajectories per optimizer step
    lr: float
    synth_n: int                    # size of the synthetic pool the benchmark creates for this preset
    synth_mix: str = "uniform"      # its error-kind mix (actprm.synth.KIND_MIXES)
    # Linear decay of lr to 0 over the run (transformers' "linear" schedule, no warmup). With a constant lr
    # the last minibatches decide where the 0.5 threshold falls: full-data F1 spread 0.066 over 5 seeds,
    # against 0.018 with decay (bs 64).
    lr_decay: bool = True
    # Share of each training minibatch drawn from the labels the round just bought, the rest from every label
    # bought so far; 0 is uniform replay. Uniform replay weights a label by how early it was bought (the first
    # round's labels sit in every later minibatch pool), which an adaptive strategy's early picks pay for. On the
    # `reading` pool (5 seeds) 0.5 lifted ActPRM at 20% from 0.262 to 0.300 F1 at 0.5 (random moved 0.364 ->
    # 0.331) but left it at 0.43 at 50%, so the presets keep 0 (bench/results/al_study_replay_new).
    replay_new_share: float = 0.0
    # Evaluate fresh heads trained on the labels a run bought (the study's protocol at b = 1 on that subset, in a
    # seeded shuffled order) instead of the heads that bought them; the run's own F1 stays as f1_online. This is
    # the paper's large-scale recipe (Sec. 5: ActPRM filters the pool, a PRM is then trained on what it kept) and
    # what `actprm one-shot-filter` does. It doubles the heads training of every run below b = 1, so the presets
    # leave it off; on the `reading` pool at 50% it moved ActPRM - random from -0.4 to +3.5 points (5 seeds,
    # bench/results/al_study_kinds_5seeds).
    final_retrain: bool = False
    # Train the backbone's top `top_layers` transformer layers with the heads (0: the whole backbone stays frozen).
    # The states entering those layers are cached per token instead of the step states, and every run trains its
    # own copy of the pretrained layers at `top_layers_lr` (the heads keep `lr`), on the same schedule. The paper
    # fine-tunes the whole 7B backbone; this is the part of that a 2-core box can afford (MiniLM's last layer: a
    # full-data run of `full` takes ~140 s instead of ~8 s on a 400 GFLOP/s host). The layers run without dropout,
    # so selection reads the network it trains (bench/results/al_study_retrain_replay_new_top1).
    top_layers: int = 0
    top_layers_lr: float = 1e-4
    feature_batch_size: int = 32
    # Heads training is many small matmuls. On a quiet 2-core box two threads train the full preset's heads
    # ~1.7x faster than one; on a loaded box one thread is far faster (threads spin waiting for each other):
    # bench/al_study.py --head-threads 1. The backbone pass keeps torch's default.
    head_threads: int = 1
    feature_threads: int | None = None  # None: torch's default (all cores)
    # Seconds spent timing the host's GEMM before and after each invocation (actprm.host), recorded next to its
    # wall time: the same preset took 13 minutes one day and 36 the next on the same 2-core host.
    host_seconds: float = 3.0


STUDY_PRESETS: dict[str, StudyPreset] = {
    # Tests and smoke runs: tiny model, few budgets, one seed; seconds.
    "quick": StudyPreset("quick", budgets=(0.2, 0.5, 1.0), seeds=(0,), model_preset="tiny", num_heads=8,
                         rounds=3, steps_per_round=15, batch_size=16, lr=3e-3, synth_n=150, feature_threads=1,
                         host_seconds=0.2),
    # The study of issue 8: MiniLM backbone (step-mean readout), paper's 32 heads, 3 seeds, on the synthetic
    # pool with the `reading` error-kind mix (actprm.synth.KIND_MIXES); 13-37 minutes on the 2-core box, by the
    # day. The numbers below were measured on the `uniform` mix. 400 head steps in all: with 200 the heads underfit
    # (full-data F1 0.15 vs 0.29, seed 0). Batch 56 with lr decay, over 5 seeds: full-data F1 0.296 ± 0.020,
    # against 0.251 ± 0.066 with batch 32 and a constant lr (0.300 ± 0.018 with batch 64, but ~30% slower than
    # 56). 16 rounds of 25 steps rather than 8 of 50: the same steps and scoring, but each batch is picked by
    # heads that trained 1/16 of the stream ago. On PRMBench (5 seeds) that moved ActPRM at 50% from 2.5 to 0.6
    # F1 points short of full data, and its lead over random from +2.7 to +4.0 points (bench/results/*_rounds8).
    "full": StudyPreset("full", budgets=(0.1, 0.2, 0.3, 0.4, 0.5, 0.75, 1.0), seeds=(0, 1, 2),
                        model_preset="cpu", num_heads=32, rounds=16, steps_per_round=25, batch_size=56,
                        lr=3e-3, synth_n=3000, synth_mix="reading", head_threads=2),
}


@contextlib.contextmanager
def torch_threads(n: int | None):
    before = torch.get_num_threads()
    if n:
        torch.set_num_threads(n)
    try:
        yield
    finally:
        torch.set_num_threads(before)


def study_preset(name: str) -> StudyPreset:
    try:
        return STUDY_PRESETS[name]
    except KeyError:
        raise ActPRMError(f"unknown study preset {name!r}; choose one of: {', '.join(STUDY_PRESETS)}") from None


# The name records what changed; seeds and the model have their own options, and the pool (synth_mix) is a
# different pool, not a variant of the protocol.
_FIXED = ("name", "seeds", "model_preset", "synth_mix")


def customize(preset: StudyPreset, overrides: dict[str, Any] | None) -> StudyPreset:
    """The preset with some fields replaced (`bench/al_study.py --set rounds=16`); values may be strings, as a
    command line gives them. The name records what changed, so a table never passes a variant off as the preset."""
    settable = [f.name for f in dataclasses.fields(StudyPreset) if f.name not in _FIXED]
    changes = {}
    for key, value in (overrides or {}).items():
        if key not in settable:
            raise ActPRMError(f"cannot set study preset field {key!r}; settable: {', '.join(settable)}")
        new = _field_value(key, getattr(preset, key), value)
        if new != getattr(preset, key):  # `--set rounds=16` on a 16-round preset changes nothing
            changes[key] = new
    if not changes:
        return preset
    label = ", ".join(f"{k}={v}" for k, v in sorted(changes.items()))
    return dataclasses.replace(preset, name=f"{preset.name} ({label})", **changes)


def _field_value(key: str, current: Any, value: Any) -> Any:
    kind = ("comma-separated budget fractions in (0, 1]" if isinstance(current, tuple) else
            "true or false" if isinstance(current, bool) else "a positive number")
    try:
        if isinstance(current, tuple):
            out = tuple(float(v) for v in (value.split(",") if isinstance(value, str) else value))
            ok = bool(out) and all(0 < b <= 1 for b in out)
        elif isinstance(current, bool):
            out = value if isinstance(value, bool) else {"true": True, "false": False}[str(value).lower()]
            ok = True
        elif key == "top_layers":
            kind = "a whole number of layers, 0 or more"
            out = int(value)
            ok = out >= 0
        elif key == "replay_new_share":
            kind = "a share in [0, 1]"
            out = float(value)
            ok = 0 <= out <= 1
        else:  # ints (and feature_threads, None or an int) stay ints; lr stays a float
            out = float(value) if isinstance(current, float) else int(value)
            ok = out > 0
    except (ValueError, KeyError, TypeError):
        ok = False
    if not ok:
        raise ActPRMError(f"study preset field {key!r} takes {kind}, got {value!r}")
    return out


def synthetic_pool(preset: StudyPreset) -> tuple[str, dict[str, Any]]:
    """The preset's own synthetic pool: its name and the `synth` settings that create it on first use.

    A study run without a named pool runs here, so `actprm study --study-preset full` and
    `bench/al_study.py --preset full` measure the same pool (synth_n trajectories, synth_mix, generator seed 0)."""
    from actprm.synth import mix_tag

    return (f"synth-study-{preset.synth_n}{mix_tag(preset.synth_mix)}",
            {"n": preset.synth_n, "seed": 0, "mix": preset.synth_mix})


def strategy_names(names: list[str] | tuple[str, ...] | str | None) -> tuple[str, ...]:
    """The strategies a study compares, in the canonical order; all of them by default."""
    if not names:
        return STRATEGY_NAMES
    wanted = [n.strip() for n in (names.split(",") if isinstance(names, str) else names) if n.strip()]
    unknown = [n for n in wanted if n not in STRATEGY_NAMES]
    if unknown or not wanted:
        raise ActPRMError(f"unknown study strategy {(unknown or [''])[0]!r}; choose from: {', '.join(STRATEGY_NAMES)}")
    return tuple(n for n in STRATEGY_NAMES if n in wanted)


def budget_labels(budget: float, n: int) -> int:
    """Labels a budget fraction buys over n trajectories: round half up (Python's round() would bank)."""
    return int(math.floor(budget * n + 0.5))


# -- the pool -----------------------------------------------------------------------------------
def load_pool(store, pool: str, eval_fraction: float, seed: int) -> dict[str, list[dict]]:
    """The pool's gold-labeled train and eval trajectories; holds out an eval split when there is none."""
    from tasks.select import prepare_eval_split

    store.require_pool(pool)
    if not store.has_gold_labels(pool):
        raise ActPRMError(f"pool {pool!r} has no gold labels: the study needs them to stand in for the judge")
    prepare_eval_split(store, pool, eval_fraction, seed)
    out = {}
    for split in ("train", "eval"):
        rows = store.trajectories(store.pool_trajectory_ids(pool, split))
        out[split] = [r for r in rows if r["gold_first_error"] is not None]
        if len(out[split]) < 2:
            raise ActPRMError(f"pool {pool!r} has {len(out[split])} gold-labeled trajectories in its {split!r} "
                              "split; the study needs at least 2 in each")
    return out


def split_fingerprint(data: dict[str, list[dict]]) -> str:
    """sha256 of the train and eval trajectory ids in order: two studies ran on the same split iff they match."""
    h = hashlib.sha256()
    for part in ("train", "eval"):
        h.update(f"{part}:{len(data[part])}\n".encode())
        for t in data[part]:
            h.update(f"{t['id']}\n".encode())
    return h.hexdigest()


# -- cached backbone states --------------------------------------------------------------------
def _length_batches(tokenizer, trajectories: list[dict], batch_size: int, max_length: int):
    """(positions, encoded batch) over the trajectories, batched by length so padding stays small."""
    from models import StepBatcher

    batcher = StepBatcher(tokenizer, max_length=max_length)
    order = sorted(range(len(trajectories)), key=lambda i: len(trajectories[i]["question"])
                   + sum(len(s) for s in trajectories[i]["steps"]))
    for start in range(0, len(order), batch_size):
        idx = order[start:start + batch_size]
        yield idx, batcher.encode([trajectories[i]["question"] for i in idx], [trajectories[i]["steps"] for i in idx])


def step_states(model, tokenizer, trajectories: list[dict], *, batch_size: int = 32,
                max_length: int = 512) -> list[torch.Tensor]:
    """Per trajectory, the (scored_steps, H) states the frozen model's heads read (`EnsemblePRM.step_states`).

    Trajectories are batched by length so padding stays small, and returned in the order given.
    """
    out: list[torch.Tensor | None] = [None] * len(trajectories)
    model.eval()
    with torch.no_grad():
        for idx, batch in _length_batches(tokenizer, trajectories, batch_size, max_length):
            hidden = model.backbone(**batch.model_inputs()).last_hidden_state
            states, rows, _ = model.step_states(hidden, batch.input_ids, batch.attention_mask)
            per_row = torch.split(states.float(), torch.bincount(rows, minlength=len(idx)).tolist())
            for row, i in enumerate(idx):
                out[i] = per_row[row].clone()
    return out  # type: ignore[return-value]


def token_states(model, tokenizer, trajectories: list[dict], top_layers: int, *, batch_size: int = 32,
                 max_length: int = 512) -> list[tuple[torch.Tensor, torch.Tensor]]:
    """Per trajectory, the (tokens, H) states entering the frozen model's top `top_layers` layers and its (tokens,)
    input ids, padding dropped; batched by length as `step_states`, returned in the order given."""
    out: list[tuple[torch.Tensor, torch.Tensor] | None] = [None] * len(trajectories)
    model.eval()
    with torch.no_grad():
        for idx, batch in _length_batches(tokenizer, trajectories, batch_size, max_length):
            hidden = model.backbone(**batch.model_inputs(), output_hidden_states=True).hidden_states[-1 - top_layers]
            for row, i in enumerate(idx):
                real = batch.attention_mask[row].bool()
                out[i] = (hidden[row][real].float().clone(), batch.input_ids[row][real].clone())
    return out  # type: ignore[return-value]


class TopLayers(nn.Module):
    """The backbone slot of an ensemble that trains the backbone's top layers: it runs them on cached states that
    enter them (`token_states`), and carries how the heads read steps off their output."""

    def __init__(self, layers: nn.ModuleList, hidden_size: int, *, separator_id: int, readout: str,
                 prefix_end_id: int):
        super().__init__()
        self.layers = layers
        self.config = SimpleNamespace(hidden_size=hidden_size)
        self.separator_id, self.readout, self.prefix_end_id = separator_id, readout, prefix_end_id

    @classmethod
    def of(cls, model, k: int) -> TopLayers:
        """A copy of the top k layers of a BERT-style model's encoder (MiniLM, the tiny preset)."""
        import copy

        layers = getattr(getattr(model.backbone, "encoder", None), "layer", None)
        if layers is None:
            raise ActPRMError(f"study preset field top_layers needs a BERT-style encoder; the {model.config.preset!r} "
                              "backbone has none: use top_layers=0")
        if not 0 < k <= len(layers):
            raise ActPRMError(f"study preset field top_layers is {k}, but the {model.config.preset!r} backbone has "
                              f"{len(layers)} layers")
        return cls(copy.deepcopy(nn.ModuleList(list(layers)[-k:])), model.backbone.config.hidden_size,
                   separator_id=model.separator_id, readout=model.config.readout,
                   prefix_end_id=model.config.prefix_end_id)

    def forward(self, hidden: torch.Tensor, attention_mask: torch.Tensor) -> torch.Tensor:
        # The additive (B, 1, 1, T) mask BERT's layers take: padding keys get the dtype's lowest value.
        extended = (1.0 - attention_mask[:, None, None, :].to(hidden.dtype)) * torch.finfo(hidden.dtype).min
        for layer in self.layers:
            hidden = layer(hidden, attention_mask=extended)
            hidden = hidden[0] if isinstance(hidden, tuple) else hidden
        return hidden

    def train(self, mode: bool = True) -> TopLayers:
        """The layers always run as in eval mode (no dropout), so the scores a strategy picks by and the network it
        trains are the same function, and runs reproduce under a seed without touching torch's global generator."""
        super().train(mode)
        self.layers.eval()
        return self


def feature_cache_key(trajectories: list[dict], preset: str, backbone: str, max_length: int, readout: str,
                      top_layers: int = 0) -> str:
    what = [preset, backbone, max_length, readout, STATES_VERSION] + ([f"tokens-entering-top-{top_layers}"]
                                                                      if top_layers else [])
    h = hashlib.sha256(json.dumps(what).encode())
    for t in trajectories:
        h.update(t["id"].encode())
    return h.hexdigest()[:16]


def cached_step_states(trajectories: list[dict], *, preset: str, cache_dir: str | Path | None,
                            batch_size: int = 32, max_length: int = 512, seed: int = 0,
                            backbone_path: str | None = None, threads: int | None = None, top_layers: int = 0
                            ) -> tuple[list, dict]:
    """`step_states` of a fresh `build_prm(preset)` model, cached on disk by (trajectories, model, readout).

    With `top_layers` > 0, the `token_states` entering the model's top layers instead, and `info["top"]`: a copy of
    those pretrained layers (`TopLayers`), for `pack_splits`."""
    from models import build_prm

    t0 = time.perf_counter()
    model, tokenizer = build_prm(preset, num_heads=1, seed=seed, freeze_backbone=True, backbone_path=backbone_path)
    top = TopLayers.of(model, top_layers) if top_layers else None  # before the pass, so a bad k fails in seconds
    key = feature_cache_key(trajectories, preset, model.config.backbone_name, max_length, model.config.readout,
                            top_layers)
    path = Path(cache_dir) / f"{'token' if top else 'step'}-states-{key}.pt" if cache_dir else None
    info = {"preset": preset, "backbone": model.config.backbone_name, "cache_key": key,
            "hidden_size": model.backbone.config.hidden_size, "separator_id": model.separator_id,
            "readout": model.config.readout, "top_layers": top_layers, "top": top}
    if path is not None and path.is_file():
        states = torch.load(path)
        return states, info | {"cached": True, "seconds": time.perf_counter() - t0}
    with torch_threads(threads):
        if top is not None:
            states = token_states(model, tokenizer, trajectories, top_layers, batch_size=batch_size,
                                  max_length=max_length)
        else:
            states = step_states(model, tokenizer, trajectories, batch_size=batch_size, max_length=max_length)
    if path is not None:
        path.parent.mkdir(parents=True, exist_ok=True)
        tmp = path.with_suffix(".tmp")
        torch.save(states, tmp)
        tmp.replace(path)
    return states, info | {"cached": False, "seconds": time.perf_counter() - t0}


@dataclass
class PackedPool:
    """Cached step states of a split, zero-padded to (N, S, H), with gold step labels.

    With `top` (the preset's `top_layers` > 0), `states` are instead the (N, T, H) token states entering the
    backbone's top layers, with their `input_ids` and `attention_mask`; each run trains its own copy of `top`."""

    ids: list[str]
    states: torch.Tensor         # (N, S, H) float32
    steps: torch.Tensor          # (N,) scored steps per trajectory
    labels: torch.Tensor         # (N, S) 1 before the first error, 0 at it, IGNORE_INDEX elsewhere
    first_errors: list[int]      # gold, 0-based, -1 = all correct
    unread: torch.Tensor         # (N,) steps past the backbone's max_length, never read
    input_ids: torch.Tensor | None = None       # (N, T), token pools only
    attention_mask: torch.Tensor | None = None  # (N, T), token pools only
    top: TopLayers | None = None                # the pretrained top layers, token pools only

    def __len__(self) -> int:
        return len(self.ids)

    def take(self, positions: list[int]) -> PackedPool:
        """The trajectories at `positions`, in that order, as a pool of their own."""
        idx = torch.tensor(positions, dtype=torch.long)
        tokens = {} if self.top is None else {"input_ids": self.input_ids[idx],
                                              "attention_mask": self.attention_mask[idx], "top": self.top}
        return PackedPool([self.ids[i] for i in positions], self.states[idx], self.steps[idx], self.labels[idx],
                          [self.first_errors[i] for i in positions], self.unread[idx], **tokens)


def pack(trajectories: list[dict], states: list[torch.Tensor]) -> PackedPool:
    from models import IGNORE_INDEX, step_labels

    n, width = len(trajectories), max(int(s.shape[0]) for s in states)
    hidden = states[0].shape[1]
    packed = torch.zeros(n, width, hidden)
    labels = torch.full((n, width), IGNORE_INDEX, dtype=torch.long)
    for i, (t, s) in enumerate(zip(trajectories, states)):
        k = int(s.shape[0])
        packed[i, :k] = s
        # The labels of the scored steps only, as StepBatcher lays them out when later steps are cut.
        labels[i, :k] = torch.tensor(step_labels(len(t["steps"]), int(t["gold_first_error"]))[:k])
    return PackedPool([t["id"] for t in trajectories], packed, torch.tensor([int(s.shape[0]) for s in states]),
                      labels, [int(t["gold_first_error"]) for t in trajectories],
                      torch.tensor([len(t["steps"]) - int(s.shape[0]) for t, s in zip(trajectories, states)]))


def pack_tokens(trajectories: list[dict], states: list[tuple[torch.Tensor, torch.Tensor]], top: TopLayers
                ) -> PackedPool:
    """`token_states` zero-padded to (N, T, H), with the step labels of the steps the tokens hold (those whose
    separator survived max_length), laid out as `pack` lays them."""
    from models import IGNORE_INDEX, step_labels

    n, width = len(trajectories), max(int(ids.shape[0]) for _, ids in states)
    scored = [int((ids == top.separator_id).sum()) for _, ids in states]
    packed = torch.zeros(n, width, states[0][0].shape[1])
    input_ids = torch.zeros(n, width, dtype=torch.long)
    mask = torch.zeros(n, width, dtype=torch.long)
    labels = torch.full((n, max(max(scored), 1)), IGNORE_INDEX, dtype=torch.long)
    for i, (t, (hidden, ids), k) in enumerate(zip(trajectories, states, scored)):
        packed[i, :len(ids)], input_ids[i, :len(ids)], mask[i, :len(ids)] = hidden, ids, 1
        labels[i, :k] = torch.tensor(step_labels(len(t["steps"]), int(t["gold_first_error"]))[:k])
    return PackedPool([t["id"] for t in trajectories], packed, torch.tensor(scored), labels,
                      [int(t["gold_first_error"]) for t in trajectories],
                      torch.tensor([len(t["steps"]) - k for t, k in zip(trajectories, scored)]),
                      input_ids=input_ids, attention_mask=mask, top=top)


def pack_splits(data: dict[str, list[dict]], states: list, top: TopLayers | None = None
                ) -> tuple[PackedPool, PackedPool]:
    """The train and eval splits packed, from the states of `data["train"] + data["eval"]` in that order (token
    states when `top` is given)."""
    n = len(data["train"])
    if top is not None:
        return pack_tokens(data["train"], states[:n], top), pack_tokens(data["eval"], states[n:], top)
    return pack(data["train"], states[:n]), pack(data["eval"], states[n:])


class CachedStates(nn.Module):
    """The backbone slot of a heads-only ensemble: the study feeds cached step states to the heads."""

    def __init__(self, hidden_size: int):
        super().__init__()
        self.config = SimpleNamespace(hidden_size=hidden_size)

    def forward(self, *_: Any, **__: Any):
        raise ActPRMError("this ensemble has no backbone: feed it cached step states (tasks.study)")


def heads_model(hidden_size: int, separator_id: int, *, num_heads: int, seed: int, reg_lambda: float,
                learning_probability: float, top: TopLayers | None = None):
    """A fresh ensemble (same head init as build_prm with this seed) over cached step states, or, with `top`,
    over a trainable copy of those pretrained top layers."""
    import copy

    from models import EnsemblePRM, PRMConfig

    if top is None:
        config = PRMConfig(num_heads=num_heads, reg_lambda=reg_lambda, learning_probability=learning_probability,
                           seed=seed, freeze_backbone=True, separator_id=separator_id, preset="cached-states")
        return EnsemblePRM(CachedStates(hidden_size), config)
    config = PRMConfig(num_heads=num_heads, reg_lambda=reg_lambda, learning_probability=learning_probability,
                       seed=seed, separator_id=separator_id, preset="cached-token-states", readout=top.readout,
                       prefix_end_id=top.prefix_end_id)
    return EnsemblePRM(copy.deepcopy(top).requires_grad_(True), config)


def _forward(model, pool: PackedPool, idx: torch.Tensor, with_labels: bool):
    """(E, N) logits over the scored steps of `idx` (row-major), their rows and, with labels, the loss.

    With labels only the labeled steps are scored: a step after the first error carries IGNORE_INDEX and adds
    nothing to the loss or its gradient, and skipping it saves a quarter of the training compute on the
    synthetic pool (the loss is the same up to float rounding)."""
    from models import IGNORE_INDEX

    if pool.top is not None:
        return _forward_tokens(model, pool, idx, with_labels)
    width = int(pool.steps[idx].max())
    present = torch.arange(width).unsqueeze(0) < pool.steps[idx].unsqueeze(1)
    if with_labels:
        present &= pool.labels[idx, :width] != IGNORE_INDEX
    rows = present.nonzero(as_tuple=True)[0]
    logits = model.head_logits(pool.states[idx, :width][present])
    if not with_labels:
        return logits, rows, None
    cls_loss, reg_loss = model.step_loss(logits, pool.labels[idx, :width][present], rows)
    return logits, rows, cls_loss + reg_loss


def _forward_tokens(model, pool: PackedPool, idx: torch.Tensor, with_labels: bool):
    """`_forward` on a token pool: the model's top layers run on the cached states that enter them, then its heads
    read the steps off their output (`EnsemblePRM.step_states`), the labeled steps only when training."""
    from models import IGNORE_INDEX

    lengths = pool.attention_mask[idx].sum(1)
    # The layers run on groups of trajectories of similar length, each padded to its own longest: a minibatch
    # padded to its longest trajectory would be about half padding on the synthetic pool.
    parts = []
    for group in torch.split(torch.argsort(lengths, stable=True), TOKEN_GROUP):
        width, where = int(lengths[group].max()), idx[group]
        ids, mask = pool.input_ids[where, :width], pool.attention_mask[where, :width]
        states, rows, step_index = model.step_states(model.backbone(pool.states[where, :width], mask), ids, mask)
        parts.append((states, group[rows], step_index))
    states, rows, step_index = (torch.cat(t) for t in zip(*parts))
    # Back to row-major order over idx, as `_forward` and `step_probabilities` lay steps out.
    order = torch.argsort(rows * (int(step_index.max()) + 1 if step_index.numel() else 1) + step_index)
    states, rows, step_index = states[order], rows[order], step_index[order]
    if not with_labels:
        return model.head_logits(states), rows, None
    labels = pool.labels[idx][rows, step_index]
    keep = labels != IGNORE_INDEX
    logits = model.head_logits(states[keep])
    cls_loss, reg_loss = model.step_loss(logits, labels[keep], rows[keep])
    return logits, rows[keep], cls_loss + reg_loss


@torch.no_grad()
def step_probabilities(model, pool: PackedPool, idx: torch.Tensor, batch_size: int = 512) -> list[torch.Tensor]:
    """Per trajectory of `idx`, its (E, scored_steps) P(step correct), as `EnsemblePRM.step_probabilities`."""
    model.eval()
    out: list[torch.Tensor] = []
    for start in range(0, len(idx), batch_size):
        part = idx[start:start + batch_size]
        logits, rows, _ = _forward(model, pool, part, with_labels=False)
        out += list(torch.split(torch.sigmoid(logits), torch.bincount(rows, minlength=len(part)).tolist(), dim=1))
    return out


# -- one run --------------------------------------------------------------------------------------
def replay_minibatch(labeled: torch.Tensor, new: torch.Tensor, size: int, new_share: float,
                     generator: torch.Generator) -> torch.Tensor:
    """Train positions of one minibatch: round(new_share * size) of the labels just bought (all of them when
    fewer), the rest drawn without replacement from every label bought so far (a new one may come twice)."""
    k = min(len(new), round(new_share * size))
    if k == 0:  # uniform replay, drawn exactly as before the share existed (same generator stream)
        return labeled[torch.randperm(len(labeled), generator=generator)[:size]]
    fresh = new[torch.randperm(len(new), generator=generator)[:k]]
    return torch.cat([fresh, labeled[torch.randperm(len(labeled), generator=generator)[:size - k]]])


def select_from_batch(strategy: str, probs: list[torch.Tensor], quota: int, *, p_threshold: float,
                      std_threshold: float, generator: torch.Generator,
                      unread: list[int] | None = None) -> tuple[list[int], int]:
    """Positions (in the batch) to label, best first, and how many were eligible.

    The same rule as `tasks.select.select_for_labeling`: ActPRM considers only the trajectories its
    ensemble is uncertain about (`unread`: steps past max_length, which make a trajectory whose read steps all
    look right uncertain, as `tasks.score` flags it); the baselines rank the whole batch by their own score.
    """
    from models.uncertainty import acquisition, step_stats, trajectory_uncertain

    scores = [acquisition(strategy, p, p_threshold=p_threshold, std_threshold=std_threshold, generator=generator)
              for p in probs]
    eligible = range(len(probs))
    if strategy == "actprm":
        unread = unread or [0] * len(probs)
        eligible = [i for i in eligible
                    if trajectory_uncertain(*step_stats(probs[i]), p_threshold, std_threshold, unread[i])]
    return sorted(eligible, key=lambda i: (-scores[i], i))[:max(quota, 0)], len(eligible)


def evaluate_heads(model, pool: PackedPool, subset: str) -> dict:
    """ProcessBench F1 of the ensemble mean on a packed eval split, at 0.5 and at a cross-fitted threshold.

    The row carries `f1` (threshold 0.5, as the pipeline's `evaluate` reports without a dev split), its
    accuracies, and `f1_tuned` (`actprm.metrics.processbench_crossfit`: the paper's reference code tunes the
    threshold on held-out benchmark records). A strategy can shift where the scores fall (what it buys changes
    the share of correct steps the heads see) without ranking steps any better or worse; `f1_tuned` is blind
    to that shift, `f1` is not.
    """
    from actprm.metrics import processbench_crossfit, processbench_metrics

    probs = step_probabilities(model, pool, torch.arange(len(pool)))
    scores = {i: p.mean(0).tolist() for i, p in zip(pool.ids, probs)}
    records = [{"id": i, "label": fe, "subset": subset} for i, fe in zip(pool.ids, pool.first_errors)]
    at_half = processbench_metrics(records, scores)
    tuned = processbench_crossfit(records, scores)
    sub = next(iter(at_half["subsets"].values()))
    return {"f1": at_half["f1"], "acc_error": sub["acc_error"], "acc_correct": sub["acc_correct"],
            "f1_tuned": tuned["f1"], "threshold_tuned": tuned["threshold"]}


def run_budget(train: PackedPool, evaluation: PackedPool, *, strategy: str, budget: float, seed: int,
               preset: StudyPreset, hidden_size: int, separator_id: int, reg_lambda: float = 0.5,
               learning_probability: float = 1.0, p_threshold: float = 0.95, std_threshold: float = 0.005,
               subset: str = "pool", inspect: Callable[[Any, list[int]], None] | None = None) -> dict:
    """One active-learning run over the stream of the train split; returns its labels and eval F1.

    `inspect`, when given, is called with the trained ensemble and the train positions bought, in buying order
    (bench/al_study_kinds.py reads what a strategy bought and what the heads learned from it)."""
    if strategy != "full" and strategy not in STRATEGY_NAMES:
        raise ActPRMError(f"unknown study strategy {strategy!r}; choose one of: full, {', '.join(STRATEGY_NAMES)}")
    if not 0 < budget <= 1:
        raise ActPRMError(f"budget fractions must be in (0, 1], got {budget}")
    with torch_threads(preset.head_threads):
        return _run_budget(train, evaluation, strategy, budget, seed, preset, hidden_size, separator_id,
                           reg_lambda, learning_probability, p_threshold, std_threshold, subset, inspect)


def _run_budget(train, evaluation, strategy, budget, seed, preset, hidden_size, separator_id, reg_lambda,
                learning_probability, p_threshold, std_threshold, subset, inspect) -> dict:
    t0 = time.perf_counter()
    model = heads_model(hidden_size, separator_id, num_heads=preset.num_heads, seed=seed, reg_lambda=reg_lambda,
                        learning_probability=learning_probability, top=train.top)
    layers = [] if train.top is None else list(model.backbone.parameters())
    # fused: one pass over the parameters per step instead of one per operation, ~10% faster on CPU (the heads
    # are 1.6M parameters updated 400 times a run); other rounding than the per-tensor loop (NUMERICS_VERSION 2).
    optimizer = torch.optim.AdamW(
        model.head_parameters() if not layers else [{"params": model.head_parameters()},
                                                    {"params": layers, "lr": preset.top_layers_lr}],
        lr=preset.lr, weight_decay=0.0, fused=True)
    # The stream order and the minibatches depend on the seed only, so strategies meet the same stream.
    order = torch.randperm(len(train), generator=torch.Generator().manual_seed(seed))
    batches = torch.tensor_split(order, min(preset.rounds, len(train)))
    total_steps = len(batches) * preset.steps_per_round
    schedule = torch.optim.lr_scheduler.LambdaLR(
        optimizer, (lambda step: max(0.0, 1 - step / total_steps)) if preset.lr_decay else (lambda step: 1.0))
    pick = torch.Generator().manual_seed(seed * 7919 + 1)
    draw = torch.Generator().manual_seed(seed * 7919 + 2)
    labeled: list[int] = []
    seen = uncertain_seen = 0
    for batch in batches:
        seen += len(batch)
        quota = min(len(batch), budget_labels(budget, seen) - len(labeled))
        if strategy == "full" or (strategy != "actprm" and quota >= len(batch)):
            chosen = batch.tolist()  # nothing to choose: the whole batch is bought
        else:
            probs = step_probabilities(model, train, batch)
            picked, eligible = select_from_batch(strategy, probs, quota, p_threshold=p_threshold,
                                                 std_threshold=std_threshold, generator=pick,
                                                 unread=train.unread[batch].tolist())
            chosen = [int(batch[i]) for i in picked]
            uncertain_seen += eligible if strategy == "actprm" else 0
        labeled += chosen
        if not labeled:
            continue
        model.train()
        pool_idx, new_idx = torch.tensor(labeled), torch.tensor(chosen, dtype=torch.long)
        for _ in range(preset.steps_per_round):
            idx = replay_minibatch(pool_idx, new_idx, preset.batch_size, preset.replay_new_share, draw)
            _, _, loss = _forward(model, train, idx, with_labels=True)
            optimizer.zero_grad(set_to_none=True)
            loss.backward()
            torch.nn.utils.clip_grad_norm_(model.head_parameters(), 1.0)
            if layers:  # on their own, so a layer's gradient does not shrink the heads' step
                torch.nn.utils.clip_grad_norm_(layers, 1.0)
            optimizer.step()
            schedule.step()
    if inspect is not None:
        inspect(model, list(labeled))
    scores = evaluate_heads(model, evaluation, subset)
    if preset.final_retrain and strategy != "full" and labeled:  # full data's run is already that protocol
        online = scores
        scores = retrain_on(train, labeled, evaluation, seed=seed, preset=preset, hidden_size=hidden_size,
                            separator_id=separator_id, reg_lambda=reg_lambda,
                            learning_probability=learning_probability, subset=subset)
        scores |= {f"{k}_online": online[k] for k in ("f1", "f1_tuned")}
    return {"strategy": strategy, "budget": budget, "seed": seed, "labels": len(labeled),
            **scores, "seconds": round(time.perf_counter() - t0, 3),
            # Share of bought trajectories that contain an error: what the strategy spends its labels on.
            "error_share": (sum(train.first_errors[i] >= 0 for i in labeled) / len(labeled)) if labeled else None,
            # ActPRM: trajectories its rule flagged uncertain when their batch came (an upper bound it buys from).
            "uncertain_seen": uncertain_seen if strategy == "actprm" else None}


def retrain_on(train: PackedPool, bought: list[int], evaluation: PackedPool, *, seed: int, preset: StudyPreset,
               **knobs: Any) -> dict:
    """`evaluate_heads` of fresh heads trained on the train positions `bought` alone, as full data trains on
    the whole split: the same seed (so the same head init), steps and schedule, the labels streamed in the
    seed's shuffled order, so the order they were bought in plays no part."""
    row = run_budget(train.take(bought), evaluation, strategy="full", budget=1.0, seed=seed, preset=preset, **knobs)
    return {k: row[k] for k in ("f1", "acc_error", "acc_correct", "f1_tuned", "threshold_tuned")}


def untrained_run(evaluation: PackedPool, *, seed: int, preset: StudyPreset, hidden_size: int, separator_id: int,
                  reg_lambda: float = 0.5, learning_probability: float = 1.0, subset: str = "pool", **_: Any) -> dict:
    """The fresh ensemble before any label: the floor that tells whether training learned anything at all."""
    model = heads_model(hidden_size, separator_id, num_heads=preset.num_heads, seed=seed, reg_lambda=reg_lambda,
                        learning_probability=learning_probability, top=evaluation.top)
    return {"strategy": "untrained", "budget": 0.0, "seed": seed, "labels": 0,
            **evaluate_heads(model, evaluation, subset), "seconds": 0.0, "uncertain_seen": None, "error_share": None}


def run_seed(train: PackedPool, evaluation: PackedPool, *, seed: int, preset: StudyPreset,
             strategies: tuple[str, ...] = STRATEGY_NAMES, on_run: Callable[[dict], None] | None = None,
             **knobs: Any) -> list[dict]:
    """The untrained floor and full data once, then every strategy at every budget below 1, for one seed."""
    plan = [("untrained", 0.0), ("full", 1.0)] + [(s, b) for b in preset.budgets if b < 1 for s in strategies]
    rows = []
    for strategy, budget in plan:
        if strategy == "untrained":
            row = untrained_run(evaluation, seed=seed, preset=preset, **knobs)
        else:
            row = run_budget(train, evaluation, strategy=strategy, budget=budget, seed=seed, preset=preset, **knobs)
        rows.append(row)
        if on_run is not None:
            on_run(row)
    return rows
