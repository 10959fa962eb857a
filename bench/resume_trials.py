"""Repeated kill -9 / rerun trials of `actprm run` (issue 41): does the rerun stay within the plan?

    .venv/bin/python bench/resume_trials.py [--trials 8] [--points labels,training,registered] [--rounds 2]
                                            [--labels-per-round 20]

Trial i kills a real `actprm run` (tiny preset, 120-trajectory pool) at point i mod len(points) (actprm/testing/
crash.py: labels committed, mid-training, after round 1's registration), reruns it, and checks: labels bought <=
rounds x labels_per_round, none paid twice, one registered version per round, champion among them, one loop, no
MLflow run left RUNNING and the killed ones FAILED, no checkpoint left, and (mid-training) that round 1 resumed from
the killed run's last checkpoint. Writes bench/results/resume_trials.json (every trial's facts) and .md (counts).
Not a timing benchmark: no ratio is measured.
"""

from __future__ import annotations

import argparse
import json
import tempfile
import time
from pathlib import Path

from actprm.testing import crash

RESULTS = Path(__file__).parent / "results" / "resume_trials"


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--trials", type=int, default=8)
    parser.add_argument("--points", default=",".join(crash.KILL_POINTS))
    parser.add_argument("--rounds", type=int, default=2)
    parser.add_argument("--labels-per-round", type=int, default=20)
    args = parser.parse_args()
    points = args.points.split(",")
    unknown = set(points) - set(crash.KILL_POINTS)
    if unknown:
        parser.error(f"unknown kill point(s) {sorted(unknown)}; choose from {', '.join(crash.KILL_POINTS)}")

    trials = []
    for i in range(args.trials):
        point = points[i % len(points)]
        started = time.monotonic()
        with tempfile.TemporaryDirectory(prefix="actprm-resume-") as tmp:
            try:
                got = crash.trial(Path(tmp) / "home", point, args.rounds, args.labels_per_round)
            except RuntimeError as exc:  # the kill missed its point or the rerun failed: a failed trial
                got = {"error": str(exc)[-2000:], "checks": {"completed": False}}
        got |= {"trial": i + 1, "point": point, "seconds": round(time.monotonic() - started, 1),
                "held": all(got["checks"].values())}
        trials.append(got)
        print(json.dumps({k: got.get(k) for k in ("trial", "point", "held", "labels_bought", "versions",
                                                  "round_1_resumed_from_step", "seconds")}), flush=True)

    plan = args.rounds * args.labels_per_round
    RESULTS.parent.mkdir(parents=True, exist_ok=True)
    RESULTS.with_suffix(".json").write_text(json.dumps({"rounds": args.rounds, "labels_per_round": args.labels_per_round,
                                                        "plan": plan, "trials": trials}, indent=2) + "\n")
    checks = sorted({name for t in trials for name in t["checks"]})
    lines = [f"# kill -9 / rerun of `actprm run`: {sum(t['held'] for t in trials)} of {len(trials)} trials held",
             "", f"Plan: {args.rounds} rounds x {args.labels_per_round} labels = {plan}. Written by "
             "bench/resume_trials.py.", "", "| check | " + " | ".join(points) + " | all |",
             "|---|" + "---|" * (len(points) + 1)]
    for name in checks:
        cells = []
        for group in [[t for t in trials if t["point"] == p] for p in points] + [trials]:
            relevant = [t for t in group if name in t["checks"]]
            cells.append(f"{sum(t['checks'][name] for t in relevant)}/{len(relevant)}" if relevant else "-")
        lines.append(f"| {name} | " + " | ".join(cells) + " |")
    bought = [t["labels_bought"] for t in trials if "labels_bought" in t]
    lines += ["", f"Labels bought per trial: {bought} (plan {plan}); versions registered: "
              f"{[len(t['versions']) for t in trials if 'versions' in t]}."]
    RESULTS.with_suffix(".md").write_text("\n".join(lines) + "\n")
    print("\n".join(lines))


if __name__ == "__main__":
    main()
