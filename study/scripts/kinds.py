"""What each strategy of a synthetic-pool study buys, and what the heads it trained catch, by error kind.

Reruns some runs of a study made by study/scripts/run.py on the preset's synthetic pool (same pool, split, preset
and knobs, read from the study's JSON, so each run reproduces the study's F1, which is checked) and reports, per
strategy and budget, averaged over seeds:
- the share of bought trajectories that are correct, carry an error of reading, or an arithmetic error
  (`actprm.synth.READING_KINDS`; random buys the pool's own shares);
- on the eval split, the share of each group whose first error (or absence of one) the ensemble mean finds at
  threshold 0.5, which is what ProcessBench F1 counts (Zheng et al., 2024);
- the same two shares for each of the nine error kinds (`actprm.synth.ERROR_KINDS`);
- the F1 of fresh heads trained on the same bought labels streamed in a seeded shuffled order (the study's
  protocol with every label bought, on that subset): it separates what a strategy buys from when it buys it,
  since the study's replay weights a label by how early it was bought.

    .venv/bin/python study/scripts/kinds.py                    # study/results/al_study.json, 20% and 50%

Writes study/results/al_study_kinds.json and .md.
"""

from __future__ import annotations

import argparse
import json
import math
import os
import statistics
import sys
import time
from collections import Counter, defaultdict
from pathlib import Path

os.environ.setdefault("HF_HUB_OFFLINE", "1")
os.environ.setdefault("TOKENIZERS_PARALLELISM", "false")
ROOT = Path(__file__).resolve().parents[2]
sys.path.insert(0, str(ROOT))

GROUPS = ("correct", "reading", "arithmetic")


def group_of(kind: str) -> str:
    from actprm.synth import READING_KINDS

    return kind if kind == "correct" else "reading" if kind in READING_KINDS else "arithmetic"


def load_study(path: Path, home: Path):
    """The study's JSON and preset, its packed train/eval splits, and each split's error kinds in order
    ("correct" for a trajectory without an error)."""
    from actprm.config import Settings
    from actprm.errors import ActPRMError
    from actprm.store import Store, trajectory_id
    from actprm.synth import generate
    from study import protocol as study, states as study_states
    from study.report import require_numerics, saved_preset

    saved = json.loads(path.read_text())
    require_numerics(saved, f"cannot reproduce the runs of {path}")
    preset = saved_preset(saved)
    settings = Settings()
    with Store(home / "actprm.duckdb", read_only=True) as store:
        data = study.load_pool(store, saved["pool"], settings.loop.eval_fraction, settings.train.seed)
    if study.split_fingerprint(data) != saved["split_sha256"]:
        raise ActPRMError(f"pool {saved['pool']!r} under {home} is not split as the study in {path} was")
    kinds = {trajectory_id(r["question"], r["steps"]): r["error_kind"] or "correct"
             for r in generate(preset.synth_n, seed=0, mix=preset.synth_mix)}
    everything = data["train"] + data["eval"]
    missing = sum(t["id"] not in kinds for t in everything)
    if missing:
        raise ActPRMError(f"{missing} trajectories of pool {saved['pool']!r} are not in the preset's synthetic pool "
                          f"(n={preset.synth_n}, mix={preset.synth_mix}): error kinds are known only there")
    states, info = study_states.cached_step_states(everything, preset=preset.model_preset,
                                                   cache_dir=home / "study" / "cache",
                                                   batch_size=preset.feature_batch_size, top_layers=preset.top_layers)
    train, evaluation = study_states.pack_splits(data, states, info["top"])
    return saved, preset, train, evaluation, {"train": [kinds[i] for i in train.ids],
                                              "eval": [kinds[i] for i in evaluation.ids]}


def found_by_group_and_kind(model, evaluation, groups: list[str], kinds: list[str]) -> dict[str, list[bool]]:
    """Per group and per error kind, whether the ensemble mean finds each eval trajectory's first error (or its
    absence) at threshold 0.5."""
    import torch

    from actprm.metrics import predicted_first_error
    from study import states as study_states

    probs = study_states.step_probabilities(model, evaluation, torch.arange(len(evaluation)))
    found: dict[str, list[bool]] = defaultdict(list)
    for p, gold, g, k in zip(probs, evaluation.first_errors, groups, kinds):
        hit = predicted_first_error(p.mean(0).tolist()) == gold
        found[g].append(hit)
        if g != "correct":
            found[k].append(hit)
    return found


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--study", default=str(ROOT / "study" / "results" / "al_study.json"), help="a study's JSON")
    ap.add_argument("--home", default=str(ROOT / ".actprm" / "bench-study"), help="the study's --home")
    ap.add_argument("--budgets", default="0.2,0.5", help="comma-separated budget fractions the study ran")
    ap.add_argument("--strategies", default="actprm,random", help="comma-separated strategies the study ran")
    ap.add_argument("--output", default=str(ROOT / "study" / "results"), help="where al_study_kinds.* go")
    args = ap.parse_args(argv)

    from actprm.synth import ERROR_KINDS
    from study import protocol as study

    t0 = time.perf_counter()
    from actprm.errors import ActPRMError
    from models.errors import ModelError

    try:
        saved, preset, train, evaluation, kinds = load_study(Path(args.study), Path(args.home))
    except (ActPRMError, ModelError) as e:
        print(f"error: {e}", file=sys.stderr)
        return 1
    groups = {split: [group_of(k) for k in ks] for split, ks in kinds.items()}
    knobs = study.run_arguments(saved["knobs"])
    recorded = {(r["strategy"], r["budget"], r["seed"]): r["f1"] for r in saved["runs"]}
    plan = [("full", 1.0)] + [(s, float(b)) for b in args.budgets.split(",") for s in args.strategies.split(",")]
    rows: dict[str, list[dict]] = defaultdict(list)
    for seed in saved["seeds"]:
        for strategy, budget in plan:
            seen: dict = {}
            r = study.run_budget(train, evaluation, strategy=strategy, budget=budget, seed=seed, preset=preset,
                                 inspect=lambda model, bought: seen.update(model=model, bought=bought), **knobs)
            if recorded.get((strategy, budget, seed)) != r["f1"]:
                print(f"warning: {strategy} at {budget} seed {seed} gave F1 {r['f1']:.4f}, the study recorded "
                      f"{recorded.get((strategy, budget, seed))}", file=sys.stderr)
            bought = Counter(groups["train"][i] for i in seen["bought"])
            bought_kind = Counter(kinds["train"][i] for i in seen["bought"])
            found = found_by_group_and_kind(seen["model"], evaluation, groups["eval"], kinds["eval"])
            shuffled = {}
            if strategy != "full":  # full data already trains on its labels in a shuffled order
                again = study.retrain_on(train, seen["bought"], evaluation, seed=seed, preset=preset, **knobs)
                shuffled = {"f1_shuffled": again["f1"], "f1_shuffled_tuned": again["f1_tuned"]}
            row = {"seed": seed, "f1": r["f1"], "f1_tuned": r["f1_tuned"], **shuffled,
                   "bought": {g: bought[g] / len(seen["bought"]) for g in GROUPS},
                   "found": {g: statistics.fmean(found[g]) for g in GROUPS},
                   "bought_kind": {k: bought_kind[k] / len(seen["bought"]) for k in ERROR_KINDS},
                   "found_kind": {k: statistics.fmean(found[k]) if found[k] else math.nan for k in ERROR_KINDS}}
            rows[f"{strategy}@{budget}"].append(row)
            print(f"seed {seed} {strategy:7s} {budget:.2f}: F1 {r['f1']:.4f}"
                  + (f" (its labels shuffled: {shuffled['f1_shuffled']:.4f})" if shuffled else "") + "; bought "
                  + ", ".join(f"{g} {row['bought'][g]:.2f}" for g in GROUPS) + "; found "
                  + ", ".join(f"{g} {row['found'][g]:.2f}" for g in GROUPS), flush=True)
    summary = {key: {**{f: statistics.fmean(r[f] for r in rs) if f in rs[0] else None
                        for f in ("f1", "f1_tuned", "f1_shuffled", "f1_shuffled_tuned")},
                     **{f"{part}_{g}": statistics.fmean(r[part][g] for r in rs) for part in ("bought", "found")
                        for g in GROUPS}} for key, rs in rows.items()}
    by_kind = {key: {part: {k: statistics.fmean(r[f"{part}_kind"][k] for r in rs) for k in ERROR_KINDS}
                     for part in ("bought", "found")} for key, rs in rows.items()}
    out = Path(args.output)
    out.mkdir(parents=True, exist_ok=True)
    result = {"study": args.study, "pool": saved["pool"], "preset": saved["preset"], "seeds": saved["seeds"],
              "eval_groups": dict(Counter(groups["eval"])), "eval_kinds": dict(Counter(kinds["eval"])),
              "summary": summary, "by_kind": by_kind, "runs": rows,
              "wall_seconds": round(time.perf_counter() - t0, 1)}
    (out / "al_study_kinds.json").write_text(json.dumps(result, indent=2) + "\n")
    lines = [f"# What each strategy buys, by error kind: pool `{saved['pool']}`, seeds {saved['seeds']}", "",
             "Shares of the trajectories bought, and of the eval split's trajectories whose first error (or its "
             "absence) the ensemble finds at threshold 0.5; means over seeds. Eval split: "
             + ", ".join(f"{n} {g}" for g, n in result["eval_groups"].items()) + ".", "",
             "\"Its labels, shuffled\": fresh heads trained on the same bought labels streamed in a shuffled order "
             "(F1 at 0.5 / cross-fitted); the gap to the run's own F1 is what the order of buying cost.", "",
             "| run | F1 | F1 cross-fitted | its labels, shuffled | bought correct | bought reading "
             "| bought arithmetic | found correct | found reading | found arithmetic |", "|---" * 10 + "|"]

    def shuffled(s: dict) -> str:
        return "—" if s["f1_shuffled"] is None else f"{s['f1_shuffled']:.3f} / {s['f1_shuffled_tuned']:.3f}"

    for key, s in summary.items():
        lines.append(f"| {key} | {s['f1']:.3f} | {s['f1_tuned']:.3f} | {shuffled(s)} | "
                     + " | ".join(f"{s[f'{part}_{g}']:.2f}" for part in ("bought", "found") for g in GROUPS) + " |")
    lines += ["", "By error kind (reading kinds last): share of the trajectories bought / share of the eval split's "
              "trajectories of that kind whose first error the ensemble finds.", "",
              "| run | " + " | ".join(k.replace("_", " ") for k in ERROR_KINDS) + " |",
              "|---" * (len(ERROR_KINDS) + 1) + "|"]
    for key, parts in by_kind.items():
        lines.append(f"| {key} | " + " | ".join(f"{parts['bought'][k]:.3f} / {parts['found'][k]:.2f}"
                                               for k in ERROR_KINDS) + " |")
    (out / "al_study_kinds.md").write_text("\n".join(lines) + "\n")
    print("\n".join(lines))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
