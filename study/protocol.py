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
  labeled; with `epochs` (off in the presets) a run's steps are instead passes over the labels its budget allows
  (`round_steps`), so they grow with the pool and shrink with the budget. Training is identical for all
  strategies (no in-training selection): only selection differs.
- `final_retrain` (off in the presets) scores what a strategy bought rather than the heads that bought it:
  fresh heads train on the bought labels exactly as full data trains on all of them (`retrain_on`).
- Rounding: a budget b buys round-half-up(b * N) labels over N train trajectories (`budget_labels`);
  ActPRM buys fewer only when its rule finds too few uncertain trajectories left (reported as `labels`).

Each seed also evaluates the untrained ensemble (`untrained_f1`): when full-data training does not beat
it by LEARNED_F1, the result carries a `warning` that the PRM learned nothing and the comparison is moot.
With `check_steps` each seed also trains full data at twice the head steps (`step_check_run`): when that lifts
it by more than WITHIN_F1 the steps under-train full data, the result carries `warning_steps`, and a tie with
full data does not count as the target met.
The cached backbone states and the ensembles over them are in `study.states`; the summary, table, plot
and MLflow run are in `study.report`.
"""

from __future__ import annotations

import dataclasses
import hashlib
import math
import re
import time
from collections.abc import Callable
from dataclasses import dataclass
from inspect import signature
from typing import Any

import torch

from actprm.errors import ActPRMError
from study.states import PackedPool, forward_pool, heads_model, step_probabilities, torch_threads

STRATEGY_NAMES = ("actprm", "random", "entropy", "bald")
# Not strategies: they read the gold labels, which no real selection has, and run only when named (`--strategies`).
# "oracle" buys the trajectories the current heads get most wrong (`oracle_scores`): how close to full data a
# choice of which half to label can bring these heads on this pool, against which ActPRM's gap is read.
DIAGNOSTIC_STRATEGIES = ("oracle",)
KNOWN_STRATEGIES = STRATEGY_NAMES + DIAGNOSTIC_STRATEGIES  # what a study may be asked to run, in canonical order
WITHIN_F1 = 0.005  # "within 0.5 F1 points of full data", in F1 units
STEP_CHECK = "full_2x_steps"  # the run label of full data at twice the head steps (`check_steps`)
# Bump when the heads' training changes its float arithmetic (same protocol, other rounding): runs then no longer
# reproduce bit for bit, so a study is not extended across versions. 2: training skips unlabeled steps, fused AdamW.
NUMERICS_VERSION = 2
LEARNED_F1 = 0.02  # full data must beat the untrained ensemble by 2 F1 points for the comparison to mean anything


@dataclass(frozen=True)
class StudyPreset:
    name: str
    budgets: tuple[float, ...]      # label fractions of the train split; 1.0 is full data
    seeds: tuple[int, ...]
    model_preset: str               # used unless the config names a model preset
    num_heads: int
    rounds: int                     # pool batches the stream is cut into (AL rounds)
    steps_per_round: int            # head optimizer steps after each batch's labels arrive (unless `epochs`)
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
    # 0.331) but left it at 0.43 at 50%, so the presets keep 0 (study/results/al_study_replay_new).
    replay_new_share: float = 0.0
    # How a ranked strategy (ActPRM, entropy, BALD) turns its scores into a batch's picks when the quota is smaller
    # than what it may buy: "top" takes the highest scores (the paper's rule, and `tasks.select`'s), "power" draws
    # them weighted by the score (`models.uncertainty.power_order`). Random selection is the same under both.
    selection: str = "top"
    # The `oracle` diagnostic's weight on the gold labels: it ranks a batch by oracle_mix x (the rank of the oracle's
    # loss) + (1 - oracle_mix) x (the rank of ActPRM's score), so a sweep between 0 and 1 asks how much more of the
    # heads' mistakes a score must point at than ActPRM's does before its half reaches full data. 1: the oracle.
    oracle_mix: float = 1.0
    # Evaluate fresh heads trained on the labels a run bought (the study's protocol at b = 1 on that subset, in a
    # seeded shuffled order) instead of the heads that bought them; the run's own F1 stays as f1_online. This is
    # the paper's large-scale recipe (Sec. 5: ActPRM filters the pool, a PRM is then trained on what it kept) and
    # what `actprm one-shot-filter` does. It doubles the heads training of every run below b = 1, so the presets
    # leave it off; on the `reading` pool at 50% it moved ActPRM - random from -0.4 to +3.5 points (5 seeds,
    # study/results/al_study_kinds_5seeds).
    final_retrain: bool = False
    # Train the backbone's top `top_layers` transformer layers with the heads (0: the whole backbone stays frozen).
    # The states entering those layers are cached per token instead of the step states, and every run trains its
    # own copy of the pretrained layers at `top_layers_lr` (the heads keep `lr`), on the same schedule. The paper
    # fine-tunes the whole 7B backbone; this is the part of that a 2-core box can afford (MiniLM's last layer: a
    # full-data run of `full` takes ~140 s instead of ~8 s on a 400 GFLOP/s host). The layers run without dropout,
    # so selection reads the network it trains (study/results/al_study_retrain_replay_new_top1).
    top_layers: int = 0
    top_layers_lr: float = 1e-4
    # Also train full data at twice the head steps, once per seed (the `STEP_CHECK` run), and report what it gains
    # (on in the `full` preset).
    # Every run takes the same steps whatever its budget, so when those steps under-train full data a half ties it
    # only because both are short of training: on 6,000 trajectories doubling 400 steps lifted full data +3.3 F1
    # points at 0.5, more than ActPRM (study/results/al_study_6000_retrain_replay_new_steps50). It adds runs and
    # changes none, so an extension may add it to a study made without it.
    check_steps: bool = False
    # Head steps as passes over the labels a run may buy, instead of `steps_per_round` fixed steps a round (0: fixed).
    # A run at budget b over N train trajectories then takes ceil(epochs * budget_labels(b, N) / batch_size) steps,
    # paced along the stream as its quota is (`round_steps`): a pool four times larger trains four times longer, and
    # a half takes half full data's steps, as a user who trains "for k epochs" would. Fixed steps fit one pool size:
    # the 400 that suffice for 3,000 trajectories under-train full data by 3 F1 points on 12,000
    # (study/results/al_study_12000). 400 steps on the full preset's 2,394 train trajectories are 9.36 epochs.
    epochs: float = 0.0
    # Where the backbone pass and every run's training and scoring happen: "cpu", or "cuda" / "cuda:N" on a GPU.
    # The packed pool stays in host memory and each minibatch goes to the device, so a token pool (`top_layers`)
    # larger than the GPU still runs. A GPU rounds differently, so runs reproduce bit for bit only on their own kind
    # of device, and its name goes into the preset's (a variant, not the CPU study).
    device: str = "cpu"
    feature_batch_size: int = 32
    # Heads training is many small matmuls. On a quiet 2-core box two threads train the full preset's heads
    # ~1.7x faster than one; on a loaded box one thread is far faster (threads spin waiting for each other):
    # study/scripts/run.py --head-threads 1. The backbone pass keeps torch's default.
    head_threads: int = 1
    feature_threads: int | None = None  # None: torch's default (all cores)
    # Seconds spent timing the host's GEMM before and after each invocation (study.host), recorded next to its
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
    # F1 points short of full data, and its lead over random from +2.7 to +4.0 points (study/results/*_rounds8).
    # The step check is on: ~40 s a seed on 2 cores for the 3,000-trajectory pool, where doubling the steps moves
    # full data -0.4 +- 0.6 points (study/results/al_study_3000_check_steps), but on a larger pool of the user's the
    # same 400 steps can under-train full data by 3 points (study/results/al_study_12000), and the study then says so.
    "full": StudyPreset("full", budgets=(0.1, 0.2, 0.3, 0.4, 0.5, 0.75, 1.0), seeds=(0, 1, 2),
                        model_preset="cpu", num_heads=32, rounds=16, steps_per_round=25, batch_size=56,
                        lr=3e-3, synth_n=3000, synth_mix="reading", head_threads=2, check_steps=True),
}


def study_preset(name: str) -> StudyPreset:
    try:
        return STUDY_PRESETS[name]
    except KeyError:
        raise ActPRMError(f"unknown study preset {name!r}; choose one of: {', '.join(STUDY_PRESETS)}") from None


# The name records what changed; seeds and the model have their own options, and the pool (synth_mix) is a
# different pool, not a variant of the protocol.
_FIXED = ("name", "seeds", "model_preset", "synth_mix")


def customize(preset: StudyPreset, overrides: dict[str, Any] | None) -> StudyPreset:
    """The preset with some fields replaced (`study/scripts/run.py --set rounds=16`); values may be strings, as a
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


def parse_fields(pairs: list[str] | None) -> dict[str, str]:
    """--set rounds=16 --set budgets=0.5,1.0 -> {"rounds": "16", "budgets": "0.5,1.0"}; a clear one-line error
    for anything that is not FIELD=VALUE (the values are checked by the preset, study.protocol.customize)."""
    out: dict[str, str] = {}
    for pair in pairs or ():
        key, sep, value = pair.partition("=")
        if not sep or not key.strip():
            raise ActPRMError(f"--set takes FIELD=VALUE, e.g. --set rounds=16, got {pair!r}")
        out[key.strip()] = value.strip()
    return out


def parse_seeds(text: str | None) -> list[int] | None:
    """--seeds 0,1,2 -> [0, 1, 2]; a clear one-line error for anything else."""
    if text is None:
        return None
    try:
        seeds = [int(part) for part in text.split(",") if part.strip()]
    except ValueError:
        raise ActPRMError(f"--seeds takes comma-separated integers like 0,1,2, got {text!r}") from None
    if not seeds or len(set(seeds)) != len(seeds):
        raise ActPRMError(f"--seeds takes distinct comma-separated integers like 0,1,2, got {text!r}")
    return seeds


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
        elif key == "epochs":
            kind = "a number of passes over the labels, 0 (fixed steps_per_round) or more"
            out = float(value)
            ok = math.isfinite(out) and out >= 0
        elif key == "device":
            kind = "cpu, or cuda / cuda:N where torch sees a CUDA device"
            out = str(value).strip().lower()
            ok = out == "cpu" or (re.fullmatch(r"cuda(:\d+)?", out) is not None and _cuda_has(out))
        elif key == "selection":
            kind = "top or power"
            out = str(value).strip().lower()
            ok = out in ("top", "power")
        elif key in ("replay_new_share", "oracle_mix"):
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


def _cuda_has(device: str) -> bool:
    index = int(device.split(":")[1]) if ":" in device else 0
    return torch.cuda.is_available() and index < torch.cuda.device_count()


def synthetic_pool(preset: StudyPreset) -> tuple[str, dict[str, Any]]:
    """The preset's own synthetic pool: its name and the `synth` settings that create it on first use.

    A study run without a named pool runs here, so `actprm study --study-preset full` and
    `study/scripts/run.py --preset full` measure the same pool (synth_n trajectories, synth_mix, generator seed 0)."""
    from actprm.synth import mix_tag

    return (f"synth-study-{preset.synth_n}{mix_tag(preset.synth_mix)}",
            {"n": preset.synth_n, "seed": 0, "mix": preset.synth_mix})


def strategy_names(names: list[str] | tuple[str, ...] | str | None) -> tuple[str, ...]:
    """The strategies a study compares, in the canonical order; all of them (not the diagnostics) by default."""
    if not names:
        return STRATEGY_NAMES
    wanted = [n.strip() for n in (names.split(",") if isinstance(names, str) else names) if n.strip()]
    unknown = [n for n in wanted if n not in KNOWN_STRATEGIES]
    if unknown or not wanted:
        raise ActPRMError(f"unknown study strategy {(unknown or [''])[0]!r}; "
                          f"choose from: {', '.join(KNOWN_STRATEGIES)}")
    return tuple(n for n in KNOWN_STRATEGIES if n in wanted)


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


def run_knobs(settings, pool: str) -> dict[str, Any]:
    """What a run takes from the settings beyond the preset (heads and uncertainty knobs, the pool as the
    benchmark subset): the flow and study/scripts/portable.py pass the same ones, and `extend` compares them."""
    return {"reg_lambda": settings.model.reg_lambda, "learning_probability": settings.model.learning_probability,
            "p_threshold": settings.uncertainty.p_threshold, "std_threshold": settings.uncertainty.std_threshold,
            "subset": pool}


def split_fingerprint(data: dict[str, list[dict]]) -> str:
    """sha256 of the train and eval trajectory ids in order: two studies ran on the same split iff they match."""
    h = hashlib.sha256()
    for part in ("train", "eval"):
        h.update(f"{part}:{len(data[part])}\n".encode())
        for t in data[part]:
            h.update(f"{t['id']}\n".encode())
    return h.hexdigest()


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


def round_steps(preset: StudyPreset, budget: float, batch_sizes: list[int]) -> list[int]:
    """Head steps after each round of the stream: `steps_per_round` each, or with `epochs` as many as bring the
    run's steps so far to ceil(epochs * labels its budget allows so far / batch_size), so they follow its quota."""
    if not preset.epochs:
        return [preset.steps_per_round] * len(batch_sizes)
    out, seen, done = [], 0, 0
    for size in batch_sizes:
        seen += size
        # round() first: 1.1 * 90 / 3 is 33.00000000000001 in floats, which must not take a 34th step
        total = math.ceil(round(preset.epochs * budget_labels(budget, seen) / preset.batch_size, 9))
        out.append(total - done)
        done = total
    return out


def select_from_batch(strategy: str, probs: list[torch.Tensor], quota: int, *, p_threshold: float,
                      std_threshold: float, generator: torch.Generator,
                      unread: list[int] | None = None, selection: str = "top",
                      gold: torch.Tensor | None = None, oracle_mix: float = 1.0) -> tuple[list[int], int]:
    """Positions (in the batch) to label, best first, and how many were eligible.

    The same rule as `tasks.select.select_for_labeling`: ActPRM considers only the trajectories its
    ensemble is uncertain about (`unread`: steps past max_length, which make a trajectory whose read steps all
    look right uncertain, as `tasks.score` flags it); the baselines rank the whole batch by their own score.
    With `selection="power"` the order is drawn, weighted by the score (`power_order`), instead of sorted.
    The `oracle` diagnostic scores by the batch's `gold` step labels (`oracle_scores`) instead, with `oracle_mix` < 1
    mixed by rank with ActPRM's score (`mixed_ranks`).
    """
    from models.uncertainty import acquisition, power_order, step_stats, trajectory_uncertain

    def score(name: str) -> list[float]:
        return [acquisition(name, p, p_threshold=p_threshold, std_threshold=std_threshold, generator=generator)
                for p in probs]

    scores = oracle_scores(probs, gold) if strategy == "oracle" else score(strategy)
    if strategy == "oracle" and oracle_mix < 1:
        scores = mixed_ranks(scores, score("actprm"), oracle_mix)
    eligible = range(len(probs))
    if strategy == "actprm":
        unread = unread or [0] * len(probs)
        eligible = [i for i in eligible
                    if trajectory_uncertain(*step_stats(probs[i]), p_threshold, std_threshold, unread[i])]
    if selection == "power" and strategy != "random":  # random's draws stay those of the top preset
        order = [eligible[j] for j in power_order([scores[i] for i in eligible], generator)]
    else:
        order = sorted(eligible, key=lambda i: (-scores[i], i))
    return order[:max(quota, 0)], len(eligible)


def ranks(values: list[float]) -> torch.Tensor:
    """Each value's rank, from 0 (the lowest) to 1 (the highest), ties by position."""
    out = torch.empty(len(values), dtype=torch.float64)
    out[torch.argsort(torch.tensor(values, dtype=torch.float64), stable=True)] = torch.linspace(
        0, 1, len(values), dtype=torch.float64)
    return out


def mixed_ranks(first: list[float], second: list[float], weight: float) -> list[float]:
    """weight x (each item's rank by `first`) + (1 - weight) x (its rank by `second`): the two orders blended,
    whatever the scales of the scores."""
    return (weight * ranks(first) + (1 - weight) * ranks(second)).tolist()


def misjudged(probs: torch.Tensor, first_error: int) -> bool:
    """Whether the ensemble mean's verdict on a trajectory (its first error, or none: what ProcessBench F1 counts,
    Zheng et al., 2024) differs from the gold one."""
    from models.uncertainty import predicted_first_error, step_stats

    return predicted_first_error(step_stats(probs)[0]) != first_error


def oracle_scores(probs: list[torch.Tensor], labels: torch.Tensor) -> list[float]:
    """Per trajectory, the binary cross-entropy of the ensemble mean against its gold step labels (the steps the
    PRM is trained on: up to and including the first error), averaged over them: the loss buying its label would
    train away. Loss as the acquisition target is the premise of "learning loss" active learning (Yoo and Kweon,
    CVPR 2019); here it is read off the gold labels instead of predicted, so it is an oracle."""
    from models import IGNORE_INDEX

    out = []
    for p, gold in zip(probs, labels):
        gold = gold[:p.shape[-1]]
        keep = gold != IGNORE_INDEX
        mu = p.double().mean(0)[keep].clamp(1e-12, 1 - 1e-12)
        out.append(float(torch.nn.functional.binary_cross_entropy(mu, gold[keep].double())) if keep.any() else 0.0)
    return out


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
    (study/scripts/kinds.py reads what a strategy bought and what the heads learned from it)."""
    if strategy != "full" and strategy not in KNOWN_STRATEGIES:
        raise ActPRMError(f"unknown study strategy {strategy!r}; choose one of: full, {', '.join(KNOWN_STRATEGIES)}")
    if not 0 < budget <= 1:
        raise ActPRMError(f"budget fractions must be in (0, 1], got {budget}")
    with torch_threads(preset.head_threads):
        return _run_budget(train, evaluation, strategy, budget, seed, preset, hidden_size, separator_id,
                           reg_lambda, learning_probability, p_threshold, std_threshold, subset, inspect)


def _run_budget(train, evaluation, strategy, budget, seed, preset, hidden_size, separator_id, reg_lambda,
                learning_probability, p_threshold, std_threshold, subset, inspect) -> dict:
    t0 = time.perf_counter()
    model = heads_model(hidden_size, separator_id, num_heads=preset.num_heads, seed=seed, reg_lambda=reg_lambda,
                        learning_probability=learning_probability, top=train.top).to(preset.device)
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
    round_plan = round_steps(preset, budget, [len(b) for b in batches])
    total_steps = max(sum(round_plan), 1)
    schedule = torch.optim.lr_scheduler.LambdaLR(
        optimizer, (lambda step: max(0.0, 1 - step / total_steps)) if preset.lr_decay else (lambda step: 1.0))
    pick = torch.Generator().manual_seed(seed * 7919 + 1)
    draw = torch.Generator().manual_seed(seed * 7919 + 2)
    labeled: list[int] = []
    seen = uncertain_seen = steps = wrong = chose = 0
    for batch, steps_this_round in zip(batches, round_plan):
        seen += len(batch)
        quota = min(len(batch), budget_labels(budget, seen) - len(labeled))
        if strategy == "full" or (strategy != "actprm" and quota >= len(batch)):
            chosen = batch.tolist()  # nothing to choose: the whole batch is bought
        else:
            probs = step_probabilities(model, train, batch)
            picked, eligible = select_from_batch(strategy, probs, quota, p_threshold=p_threshold,
                                                 std_threshold=std_threshold, generator=pick,
                                                 unread=train.unread[batch].tolist(), selection=preset.selection,
                                                 gold=train.labels[batch] if strategy == "oracle" else None,
                                                 oracle_mix=preset.oracle_mix)
            chosen = [int(batch[i]) for i in picked]
            wrong += sum(misjudged(probs[i], train.first_errors[c]) for i, c in zip(picked, chosen))
            chose += len(chosen)
            uncertain_seen += eligible if strategy == "actprm" else 0
        labeled += chosen
        if not labeled:
            continue
        model.train()
        pool_idx, new_idx = torch.tensor(labeled), torch.tensor(chosen, dtype=torch.long)
        for _ in range(steps_this_round):
            idx = replay_minibatch(pool_idx, new_idx, preset.batch_size, preset.replay_new_share, draw)
            _, _, loss = forward_pool(model, train, idx, with_labels=True)
            optimizer.zero_grad(set_to_none=True)
            loss.backward()
            torch.nn.utils.clip_grad_norm_(model.head_parameters(), 1.0)
            if layers:  # on their own, so a layer's gradient does not shrink the heads' step
                torch.nn.utils.clip_grad_norm_(layers, 1.0)
            optimizer.step()
            schedule.step()
            steps += 1
    if inspect is not None:
        inspect(model, list(labeled))
    scores = evaluate_heads(model, evaluation, subset)
    if preset.final_retrain and strategy != "full" and labeled:  # full data's run is already that protocol
        online = scores
        scores = retrain_on(train, labeled, evaluation, seed=seed, preset=preset, hidden_size=hidden_size,
                            separator_id=separator_id, reg_lambda=reg_lambda,
                            learning_probability=learning_probability, subset=subset)
        scores |= {f"{k}_online": online[k] for k in ("f1", "f1_tuned")}
    return {"strategy": strategy, "budget": budget, "seed": seed, "labels": len(labeled), "steps": steps,
            **scores, "seconds": round(time.perf_counter() - t0, 3),
            # Share of bought trajectories that contain an error: what the strategy spends its labels on.
            "error_share": (sum(train.first_errors[i] >= 0 for i in labeled) / len(labeled)) if labeled else None,
            # ActPRM: trajectories its rule flagged uncertain when their batch came (an upper bound it buys from).
            "uncertain_seen": uncertain_seen if strategy == "actprm" else None,
            # Of what it chose from a batch (not bought whole), the share whose verdict (first error or none, as
            # ProcessBench F1 counts it) the heads had wrong when they chose: how well its score finds their mistakes.
            "misjudged_share": wrong / chose if chose else None}


def run_arguments(recorded: dict[str, Any]) -> dict[str, Any]:
    """The knobs a study recorded, less those recorded only for `--extend` to compare (the backbone's max_length and
    path): what a script that reruns the study's runs (study/scripts/kinds.py) passes to `run_budget`."""
    takes = signature(run_budget).parameters
    return {k: v for k, v in recorded.items() if k in takes}


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
                        learning_probability=learning_probability, top=evaluation.top).to(preset.device)
    return {"strategy": "untrained", "budget": 0.0, "seed": seed, "labels": 0,
            **evaluate_heads(model, evaluation, subset), "seconds": 0.0, "uncertain_seen": None, "error_share": None,
            "misjudged_share": None}


def step_check_run(train: PackedPool, evaluation: PackedPool, *, seed: int, preset: StudyPreset,
                   **knobs: Any) -> dict:
    """Full data at twice the preset's head steps, with the same seed (stream, head init, minibatch draws) and
    a schedule decaying over the doubled run: what full data gains when it is trained longer (`check_steps`)."""
    longer = dataclasses.replace(preset, steps_per_round=2 * preset.steps_per_round, epochs=2 * preset.epochs)
    row = run_budget(train, evaluation, strategy="full", budget=1.0, seed=seed, preset=longer, **knobs)
    return row | {"strategy": STEP_CHECK}


def run_seed(train: PackedPool, evaluation: PackedPool, *, seed: int, preset: StudyPreset,
             strategies: tuple[str, ...] = STRATEGY_NAMES, on_run: Callable[[dict], None] | None = None,
             **knobs: Any) -> list[dict]:
    """The untrained floor and full data once (and at twice the steps, with `check_steps`), then every strategy
    at every budget below 1, for one seed."""
    plan = [("untrained", 0.0), ("full", 1.0), *([(STEP_CHECK, 1.0)] if preset.check_steps else [])]
    plan += [(s, b) for b in preset.budgets if b < 1 for s in strategies]
    rows = []
    for strategy, budget in plan:
        if strategy == "untrained":
            row = untrained_run(evaluation, seed=seed, preset=preset, **knobs)
        elif strategy == STEP_CHECK:
            row = step_check_run(train, evaluation, seed=seed, preset=preset, **knobs)
        else:
            row = run_budget(train, evaluation, strategy=strategy, budget=budget, seed=seed, preset=preset, **knobs)
        rows.append(row)
        if on_run is not None:
            on_run(row)
    return rows
