"""How well each acquisition score points at the trajectories the heads get wrong: why ActPRM's half falls short.

The `oracle` diagnostic of study/scripts/run.py (`--strategies oracle`) buys what the current heads get most wrong by
the gold labels (`study.protocol.oracle_scores`); where it reaches full data with half the labels and ActPRM does not,
the gap lies in how well ActPRM's score finds those trajectories. This reruns one run of a study made by
study/scripts/run.py on the preset's synthetic pool (random at 50% by default; its F1 is checked against the study's),
takes the heads it trained, and scores the train trajectories it did not buy (what a next batch would choose from)
with every registered acquisition strategy (`models.uncertainty.STRATEGIES`). Per score, averaged over seeds:

- its Spearman rank correlation with the oracle's loss;
- the share of the oracle's top half that its own top half shares (random: about 0.5);
- the share of its top half whose verdict the heads get wrong (the first error, or its absence, that ProcessBench
  F1 counts: Zheng et al., 2024), against the same share over all of them;
- the share of its top half that contains an error.

A `learned` row stands for a learned loss predictor (Yoo and Kweon, 2019): a ridge regression from each trajectory's
label-free features (`trajectory_features`) to whether the heads misjudge it, cross-fitted over two folds of these very
trajectories (`learned_scores`). It is fit on gold verdicts no real run has for the trajectories it ranks, so it bounds
from above what such a predictor, trained on the labels a run bought, would find.

    .venv/bin/python study/scripts/signals.py --study study/results/al_study_12000_steps100/al_study.json \\
        --home /tmp/study-home12k --seeds 0,1,2

Where there is no DuckDB home (a GPU box), `--split` and `--backbone` read the study's split as
study/scripts/portable.py exported it instead, e.g. for the fine-tuned study:

    python study/scripts/signals.py --study study/results/al_study_12000_gpu_finetune/al_study.json \\
        --split .portable/split.json.gz --backbone .portable/backbone --matmul-precision high --output OUT

Writes study/results/al_study_signals.json and .md.
"""

from __future__ import annotations

import argparse
import json
import os
import statistics
import sys
import time
from pathlib import Path

os.environ.setdefault("HF_HUB_OFFLINE", "1")
os.environ.setdefault("TOKENIZERS_PARALLELISM", "false")
ROOT = Path(__file__).resolve().parents[2]
sys.path.insert(0, str(ROOT))

import torch  # noqa: E402


def spearman(a: list[float], b: list[float]) -> float:
    """Spearman's rank correlation (ties broken by position; acquisition scores are continuous)."""
    from study.protocol import ranks

    ra, rb = ranks(a), ranks(b)
    ra, rb = ra - ra.mean(), rb - rb.mean()
    denominator = float(ra.norm() * rb.norm())
    return float((ra * rb).sum()) / denominator if denominator else 0.0


def top_half(scores: list[float]) -> set[int]:
    return set(sorted(range(len(scores)), key=lambda i: (-scores[i], i))[:len(scores) // 2])


# Ridge penalty of the learned row, on standardized features. Not tuned: 10, 100 and 1000, tried on seeds 0 and 1 of
# al_study_12000_steps100's random halves, put within 2.5 points of each other misjudged in the top half.
LEARNED_RIDGE = 100.0


def trajectory_features(probs: torch.Tensor, states: torch.Tensor | None = None) -> torch.Tensor:
    """What a loss predictor can read of one trajectory without its label: the ensemble's statistics (how many
    steps, the mean's lowest and average value, the heads' largest and average spread, how close the verdict's
    deciding step is to 0.5, whether it finds an error and where) and, where the pool holds step states (a frozen
    backbone), their mean and the state of the step that decides the verdict."""
    from models.uncertainty import decisive_steps, predicted_first_error, step_stats

    mu, sigma = step_stats(probs)
    k = decisive_steps(mu)
    stats = torch.tensor([len(mu), float(mu.min()), float(mu.mean()), float(sigma.max()), float(sigma.mean()),
                          float((mu[:k] - 0.5).abs().min()), float(predicted_first_error(mu) < 0), k],
                         dtype=torch.float64)
    if states is None:
        return stats
    return torch.cat([states.double().mean(0), states[k - 1].double(), stats])


def learned_scores(features: torch.Tensor, wrong: list[bool], seed: int, ridge: float = LEARNED_RIDGE
                   ) -> list[float]:
    """Per trajectory, the predicted chance that the heads misjudge it, from a ridge regression fit on the other
    of two random folds: no trajectory's own verdict reaches its score."""
    n = len(wrong)
    x = (features - features.mean(0)) / (features.std(0) + 1e-9)  # label-free, so over both folds
    x = torch.cat([x, torch.ones(n, 1, dtype=x.dtype)], 1)
    y = torch.tensor(wrong, dtype=x.dtype)
    penalty = ridge * torch.eye(x.shape[1], dtype=x.dtype)
    penalty[-1, -1] = 0.0  # the intercept is not shrunk
    folds = torch.randperm(n, generator=torch.Generator().manual_seed(seed)).tensor_split(2)
    out = torch.empty(n, dtype=x.dtype)
    for fit, score in (folds, folds[::-1]):
        w = torch.linalg.solve(x[fit].T @ x[fit] + penalty, x[fit].T @ y[fit])
        out[score] = x[score] @ w
    return out.tolist()


def signal_rows(probs: list[torch.Tensor], labels: torch.Tensor, first_errors: list[int], *,
                p_threshold: float = 0.95, std_threshold: float = 0.005, seed: int = 0,
                features: torch.Tensor | None = None) -> dict:
    """Per acquisition strategy (and the oracle's own loss, as the reference row), how its ranking of these
    trajectories lines up with the heads' mistakes on them; `base` holds the shares over all of them. With
    `features` (one row per trajectory, `trajectory_features`), a `learned` row too."""
    from models.uncertainty import STRATEGIES, acquisition
    from study.protocol import misjudged, oracle_scores

    loss = oracle_scores(probs, labels)
    wrong = [misjudged(p, fe) for p, fe in zip(probs, first_errors)]
    erroneous = [fe >= 0 for fe in first_errors]
    best = top_half(loss)
    generator = torch.Generator().manual_seed(seed)
    scores = {"oracle": loss} | {
        name: [acquisition(name, p, p_threshold=p_threshold, std_threshold=std_threshold, generator=generator)
               for p in probs] for name in sorted(STRATEGIES)}
    if features is not None:
        scores["learned"] = learned_scores(features, wrong, seed)
    rows = {}
    for name, values in scores.items():
        top = top_half(values)
        rows[name] = {"spearman_with_oracle": spearman(values, loss),
                      "oracle_top_half_shared": len(top & best) / max(len(best), 1),
                      "verdict_wrong_share": sum(wrong[i] for i in top) / max(len(top), 1),
                      "error_share": sum(erroneous[i] for i in top) / max(len(top), 1)}
    return {"trajectories": len(probs), "base": {"verdict_wrong_share": sum(wrong) / max(len(wrong), 1),
                                                 "error_share": sum(erroneous) / max(len(erroneous), 1)},
            "signals": rows}


def average(per_seed: list[dict]) -> dict:
    """Mean over seeds of every share, per signal and for the base rates."""
    first = per_seed[0]
    return {"base": {k: statistics.fmean(s["base"][k] for s in per_seed) for k in first["base"]},
            "signals": {name: {k: statistics.fmean(s["signals"][name][k] for s in per_seed) for k in row}
                        for name, row in first["signals"].items()}}


def markdown(result: dict) -> str:
    avg = result["average"]
    lines = ["# Which trajectories each acquisition score ranks first, against the heads' mistakes",
             "",
             f"Study `{result['study']}`, the heads of its **{result['strategy']}** run at "
             f"**{result['budget']:.0%}** (seeds {', '.join(map(str, result['seeds']))}), scoring the "
             f"{result['per_seed'][0]['trajectories']} train trajectories that run did not buy. *oracle*: the loss of "
             "the heads' mean against the gold step labels (`study.protocol.oracle_scores`), which the `oracle` "
             "diagnostic buys by. *learned*: a ridge regression from label-free features "
             f"({result.get('learned_features', 'none')}) to the heads' verdict being wrong, cross-fitted over two "
             "folds of these trajectories on their gold verdicts: an upper bound on a learned loss predictor "
             "(Yoo and Kweon, 2019). Shares are means over seeds.",
             "",
             "| score | Spearman with the oracle's loss | share of the oracle's top half "
             "| verdict wrong in its top half | erroneous in its top half |",
             "|---|---|---|---|---|"]
    for name, row in avg["signals"].items():
        lines.append(f"| {name} | {row['spearman_with_oracle']:+.3f} | {row['oracle_top_half_shared']:.3f} "
                     f"| {row['verdict_wrong_share']:.3f} | {row['error_share']:.3f} |")
    lines.append(f"| *all of them* | | | {avg['base']['verdict_wrong_share']:.3f} | {avg['base']['error_share']:.3f} |")
    return "\n".join(lines) + "\n"


def exported_study(study_path: Path, split_path: str, backbone: str | None):
    """The study's JSON and preset, its train and eval pools and a run's knobs, from the split
    study/scripts/portable.py exported (no DuckDB home needed), checked to be the split the study ran on."""
    from actprm.errors import ActPRMError
    from study.report import require_numerics, saved_preset
    from study.scripts.portable import packed_split, read_split

    saved = json.loads(study_path.read_text())
    require_numerics(saved, f"cannot reproduce the runs of {study_path}")
    split = read_split(split_path)
    if split["split_sha256"] != saved["split_sha256"]:
        raise ActPRMError(f"{split_path} is not the split the study in {study_path} ran on")
    preset = saved_preset(saved)
    train, evaluation, knobs, _ = packed_split(split, backbone=backbone, preset=preset,
                                               log=lambda line: print(line, file=sys.stderr))
    return saved, preset, train, evaluation, knobs


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--study", default=str(ROOT / "study" / "results" / "al_study.json"))
    ap.add_argument("--home", default=str(Path.home() / ".actprm"), help="the home the study ran in")
    ap.add_argument("--split", default=None, help="instead of --home: the study's split, as "
                    "study/scripts/portable.py exported it")
    ap.add_argument("--backbone", default=None, help="with --split: the backbone portable.py exported")
    ap.add_argument("--matmul-precision", default="highest", choices=("highest", "high", "medium"),
                    help="torch's float32 matmul precision, as the study ran (portable.py run)")
    ap.add_argument("--seeds", default=None, help="comma-separated seeds of the study (default: all of its)")
    ap.add_argument("--strategy", default="random", help="whose run's heads to read (default: random)")
    ap.add_argument("--budget", type=float, default=0.5)
    ap.add_argument("--output", default=str(ROOT / "study" / "results" / "al_study_signals"))
    args = ap.parse_args(argv)

    from actprm.errors import ActPRMError
    from models.errors import ModelError
    from study import protocol as study
    from study.scripts.kinds import load_study
    from study.states import step_probabilities

    torch.set_float32_matmul_precision(args.matmul_precision)  # as the study ran, or its F1s do not reproduce
    try:
        if args.split:
            saved, preset, train, evaluation, knobs = exported_study(Path(args.study), args.split, args.backbone)
        else:
            saved, preset, train, evaluation, _ = load_study(Path(args.study), Path(args.home))
            knobs = saved["knobs"]
        seeds = study.parse_seeds(args.seeds) or saved["seeds"]
        if not set(seeds) <= set(saved["seeds"]):
            raise ActPRMError(f"--seeds {args.seeds}: the study ran seeds {saved['seeds']}")
    except (ActPRMError, ModelError) as e:
        print(f"error: {e}", file=sys.stderr)
        return 1
    knobs = study.run_arguments(knobs)
    recorded = {(r["strategy"], r["budget"], r["seed"]): r["f1"] for r in saved["runs"]}
    started, per_seed = time.perf_counter(), []
    for seed in seeds:
        seen: dict = {}
        row = study.run_budget(train, evaluation, strategy=args.strategy, budget=args.budget, seed=seed,
                               preset=preset, inspect=lambda model, bought: seen.update(model=model, bought=bought),
                               **knobs)
        if recorded.get((args.strategy, args.budget, seed)) != row["f1"]:
            print(f"warning: {args.strategy} at {args.budget} seed {seed} gave F1 {row['f1']:.4f}, the study "
                  f"recorded {recorded.get((args.strategy, args.budget, seed))}", file=sys.stderr)
        rest = sorted(set(range(len(train))) - set(seen["bought"]))
        idx = torch.tensor(rest, dtype=torch.long)
        probs = step_probabilities(seen["model"], train, idx)
        # A token pool (a fine-tuned backbone) holds token states, not step states: its predictor reads the stats.
        features = torch.stack([trajectory_features(p, None if train.top is not None else train.states[i, :p.shape[-1]])
                                for p, i in zip(probs, rest)])
        per_seed.append(signal_rows(probs, train.labels[idx], [train.first_errors[i] for i in rest],
                                    p_threshold=knobs.get("p_threshold", 0.95),
                                    std_threshold=knobs.get("std_threshold", 0.005), seed=seed, features=features)
                        | {"seed": seed})
        print(f"seed {seed}: {len(rest)} unbought trajectories scored", file=sys.stderr)
    result = {"study": Path(args.study).parent.name, "strategy": args.strategy, "budget": args.budget,
              "seeds": seeds, "per_seed": per_seed, "average": average(per_seed),
              "learned_features": "ensemble statistics" + ("" if train.top is not None else " and step states"),
              "wall_seconds": round(time.perf_counter() - started, 1)}
    out = Path(args.output)
    out.parent.mkdir(parents=True, exist_ok=True)
    out.with_suffix(".json").write_text(json.dumps(result, indent=1) + "\n")
    out.with_suffix(".md").write_text(markdown(result))
    print(markdown(result))
    return 0


if __name__ == "__main__":
    sys.exit(main())
