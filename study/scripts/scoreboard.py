"""Every active-learning study under study/results/ in one table: where issue 8's Target stands in each protocol.

Issue 8's Target has two halves, judged at a 50% budget against full data, averaged over seeds: ActPRM within
0.5 F1 points of full data, and ActPRM ahead of random by 3 points. The studies that measured them differ in pool,
protocol (the preset fields a variant changed) and seeds, and their findings are spread over study/FINDINGS.md; this
reads each study's al_study.json and prints one row each:

- full data's F1 (at threshold 0.5 / at the cross-fitted threshold) and what twice its steps add (`check_steps`):
  above 0.5 points the runs are short of training, and a tie with full data is not counted (`study.report`);
- ActPRM's 50% minus full data, and ActPRM minus random at 50%, each paired by seed (mean ± standard error);
- the two Target halves as the study itself judged them (`targets`, `targets_tuned`).

    .venv/bin/python study/scripts/scoreboard.py          # writes study/results/al_study_scoreboard.md / .json
                                                          # and the scoreboard block of study/FINDINGS.md
"""

from __future__ import annotations

import argparse
import dataclasses
import json
import os
import sys
from collections.abc import Callable
from pathlib import Path
from typing import Any

os.environ.setdefault("HF_HUB_OFFLINE", "1")
ROOT = Path(__file__).resolve().parents[2]
sys.path.insert(0, str(ROOT))

from study.protocol import STUDY_PRESETS, WITHIN_F1, StudyPreset  # noqa: E402
from study.report import METRICS, paired_gap, saved_preset  # noqa: E402

RESULTS = ROOT / "study" / "results"
HALF = 0.5
# Fields that say what was run, not how: they are in the pool, seeds and budgets columns or change only speed.
NOT_PROTOCOL = {"name", "seeds", "budgets", "synth_n", "synth_mix", "head_threads", "feature_threads",
                "feature_batch_size", "host_seconds", "model_preset",
                # adds full data at twice the steps (the 2x steps column) and changes no run
                "check_steps"}


def protocol(preset: StudyPreset) -> str:
    """The preset fields a study set away from the `full` preset (its budgets, seeds and pool aside)."""
    made, base = dataclasses.asdict(preset), dataclasses.asdict(STUDY_PRESETS["full"])
    changed = [f"{k}={made[k]}" for k in made if k not in NOT_PROTOCOL and made[k] != base[k]]
    return ", ".join(changed) or "the `full` preset"


def full_steps(saved: dict, preset: StudyPreset) -> int | None:
    """Head steps of a full-data run: as recorded, or (runs made before rows counted them) what fixed steps give."""
    recorded = next((r.get("steps") for r in saved["runs"] if r["strategy"] == "full"), None)
    if recorded is None and not preset.epochs:
        return min(preset.rounds, saved["train_size"]) * preset.steps_per_round
    return recorded


def converged_verdicts(rows: list[dict]) -> list[str]:
    """Per F1, the studies whose full data passed the step check (the study put no step warning on it), and in how
    many of those ActPRM's 50% came within 0.5 pt of full data: the Target's first half against a reference that
    more training would not lift."""
    out = []
    for suffix, title in (("", "at threshold 0.5"), ("_tuned", "cross-fitted")):
        checked = [r for r in rows if r[f"converged{suffix}"] is not None and r[f"actprm_minus_full{suffix}"]]
        ok = [r for r in checked if r[f"converged{suffix}"]]
        within = [r["study"] for r in ok if r[f"actprm_minus_full{suffix}"]["mean"] >= -WITHIN_F1]
        gaps = ", ".join(f"{r[f'actprm_minus_full{suffix}']['mean'] * 100:+.1f}" for r in ok)
        out.append(f"{title}: {len(ok)} of the {len(checked)} studies with a step check have converged full data; "
                   f"ActPRM's 50% is within 0.5 pt of it in {len(within)} ({', '.join(within) or 'none'}); "
                   f"its gaps there: {gaps or 'none'} pt")
    return out


def _mean_se(stats: dict | None, mean: str = "mean") -> dict | None:
    return None if stats is None else {"mean": stats[mean], "se": stats["se"]}


def study_row(name: str, saved: dict) -> dict:
    """One study's standing against the Target at a 50% budget; gaps in F1 units, None where it did not measure
    (studies made before the cross-fitted F1 existed have none of its keys)."""
    runs, preset = saved["runs"], saved_preset(saved)
    # Full data runs at b = 1; shown at the half, it pairs with the halves seed by seed.
    at_half = [r | {"budget": HALF} for r in runs if r["strategy"] == "full"]
    at_half += [r for r in runs if r["strategy"] in ("actprm", "random") and r["budget"] == HALF]
    row = {"study": name, "pool": saved["pool"], "train_size": saved["train_size"], "protocol": protocol(preset),
           "strategies": list(saved["strategies"]),
           "seeds": len(saved["seeds"]), "numerics_version": saved.get("numerics_version", 1),
           "full_steps": full_steps(saved, preset)}
    for metric, suffix in METRICS.items():
        measured = f"full_data_f1{suffix}" in saved
        check = saved.get(f"step_check{suffix}")
        row[f"full{suffix}"] = saved.get(f"full_data_f1{suffix}")
        row[f"steps_2x_gain{suffix}"] = _mean_se(check, "gain")
        # the study's own verdict on its step check (`study.report.summarize` warns past 0.5 pt)
        row[f"converged{suffix}"] = None if check is None else f"warning_steps{suffix}" not in saved
        for other in ("full", "random"):
            gap = paired_gap(at_half, "actprm", other, [HALF], metric).get(str(HALF)) if measured else None
            row[f"actprm_minus_{other}{suffix}"] = _mean_se(gap)
        row[f"targets{suffix}"] = saved.get(f"targets{suffix}")
        row[f"actprm_within_0.5pt_from{suffix}"] = (saved.get(f"smallest_budget_within_0.5pt{suffix}") or {}).get(
            "actprm")
    return row


def scoreboard(results: Path = RESULTS) -> list[dict]:
    """A row for every study under `results` (the headline al_study.json and each folder's), by pool then name."""
    paths = sorted(results.glob("al_study.json")) + sorted(results.glob("*/al_study.json"))
    rows = [study_row(p.parent.name if p.parent != results else "al_study", json.loads(p.read_text()))
            for p in paths]
    return sorted(rows, key=lambda r: (r["train_size"], r["pool"], r["study"]))


def _both(row: dict, key: str, cell: Callable[[Any], str]) -> str:
    """`cell` of the row's value at threshold 0.5 and of its cross-fitted twin, as "a / b" ("—" where missing)."""
    return " / ".join("—" if row[f"{key}{s}"] is None else cell(row[f"{key}{s}"]) for s in METRICS.values())


def _points(gap: dict) -> str:
    return f"{gap['mean'] * 100:+.1f} ± {gap['se'] * 100:.1f}"


def _met(half: str) -> Callable[[dict], str]:
    return lambda targets: "—" if half not in targets else ("met" if targets[half] else "no")


def markdown(rows: list[dict]) -> str:
    lines = [
        "# Issue 8's Target in every study under study/results/",
        "",
        "Each cell reads *at threshold 0.5 / at the cross-fitted threshold*; gaps are F1 points at a 50% budget, "
        "paired by seed (mean ± standard error). *2x steps*: what full data gains with twice its head steps; above "
        "+0.5 the study's runs are short of training and a tie with full data is not counted. *Target*: "
        "ActPRM within 0.5 pt of full data at ≤ 50%, then ActPRM ≥ 3 pt over random at 50%, as each study judged "
        "them; *within 0.5 pt from*: the smallest budget the study ran at which ActPRM's mean came within 0.5 pt of "
        "full data (100%: none below). Studies of numerics version 1 used other float rounding (same protocol).",
        "",
        "| study | pool (train) | protocol | seeds | full-data steps | full data F1 | 2x steps | ActPRM − full "
        "| ActPRM − random | ActPRM within 0.5 pt from | Target: within 0.5 pt | Target: +3 pt |",
        "|---|---|---|---|---|---|---|---|---|---|---|---|",
    ]
    body = []
    # A study that ran no ActPRM (the `oracle` diagnostic alone) has nothing to put in these columns.
    others = [r for r in rows if "actprm" not in r["strategies"]]
    for r in (r for r in rows if "actprm" in r["strategies"]):
        version = "" if r["numerics_version"] == 2 else f" (v{r['numerics_version']})"
        steps = "—" if r["full_steps"] is None else r["full_steps"]
        body.append(f"| `{r['study']}`{version} | {r['pool']} ({r['train_size']}) | {r['protocol']} | {r['seeds']} "
                     f"| {steps} | {_both(r, 'full', '{:.3f}'.format)} | {_both(r, 'steps_2x_gain', _points)} "
                     f"| {_both(r, 'actprm_minus_full', _points)} | {_both(r, 'actprm_minus_random', _points)} "
                     f"| {_both(r, 'actprm_within_0.5pt_from', '{:.0%}'.format)} "
                     f"| {_both(r, 'targets', _met('actprm_within_0.5pt_at_or_below_0.5'))} "
                     f"| {_both(r, 'targets', _met('actprm_beats_random_at_0.5_by_3pt'))} |")
    verdicts = ["", "Against converged full data (computed from the rows above):", "",
                *(f"- {line}" for line in converged_verdicts(rows))]
    if others:
        verdicts += ["", "Not in the table (they ran no ActPRM): " + "; ".join(
            f"`{r['study']}` ({', '.join(r['strategies'])})" for r in others) + "."]
    return "\n".join(lines + body + verdicts) + "\n"


# study/FINDINGS.md carries the scoreboard between these two lines, so the findings quote it instead of retyping it.
FINDINGS = ROOT / "study" / "FINDINGS.md"
BEGIN = "<!-- scoreboard: written by study/scripts/scoreboard.py from study/results; do not edit by hand -->"
END = "<!-- /scoreboard -->"


def findings_block(table: str) -> str:
    """The scoreboard as FINDINGS.md holds it: its title one level down, under the document's own."""
    return "\n".join([BEGIN, "", "##" + table.rstrip("\n"), "", END])


def with_scoreboard(findings: str, table: str) -> str:
    """`findings` with the text between BEGIN and END replaced by `table`; a one-line error if it has no such block."""
    start, stop = findings.find(BEGIN), findings.find(END)
    if start < 0 or stop < start:
        raise SystemExit(f"scoreboard: no {BEGIN!r} ... {END!r} block to fill")
    return findings[:start] + findings_block(table) + findings[stop + len(END):]


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--results", type=Path, default=RESULTS, help="folder of studies (default: study/results)")
    ap.add_argument("--output", type=Path, default=None, help="stem to write .md and .json to "
                    "(default: <results>/al_study_scoreboard)")
    ap.add_argument("--findings", type=Path, default=None, help="a markdown file whose scoreboard block to rewrite "
                    "(default: study/FINDINGS.md when --results is study/results)")
    args = ap.parse_args(argv)
    rows = scoreboard(args.results)
    if not rows:
        print(f"no al_study.json under {args.results}", file=sys.stderr)
        return 2
    stem = args.output or args.results / "al_study_scoreboard"
    table = markdown(rows)
    findings = args.findings or (FINDINGS if args.results.resolve() == RESULTS.resolve() else None)
    if findings is not None:  # checked before anything is written, so a bad file leaves every output as it was
        updated = with_scoreboard(findings.read_text(), table)
    stem.with_suffix(".json").write_text(json.dumps(rows, indent=1) + "\n")
    stem.with_suffix(".md").write_text(table)
    if findings is not None:
        findings.write_text(updated)
    print(table)
    return 0


if __name__ == "__main__":
    sys.exit(main())
