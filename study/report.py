"""The active-learning study's report: the summary (F1 per strategy and budget, the smallest budget within
0.5 points of full data, ActPRM minus random paired by seed), its table, plot and MLflow run.

The runs it summarizes come from `study.protocol`; the JSON shape is the one issue 8 asks for
(study/results/al_study.json).
"""

from __future__ import annotations

import json
import math
import os
import statistics
import textwrap
from collections.abc import Sequence
from dataclasses import MISSING, asdict, fields, replace
from pathlib import Path
from typing import Any, NamedTuple

from actprm.errors import ActPRMError
from study.protocol import (LEARNED_F1, NUMERICS_VERSION, STEP_CHECK, STRATEGY_NAMES, WITHIN_F1, StudyPreset,
                         budget_labels)


def _spread(values: list[float]) -> float:
    return statistics.stdev(values) if len(values) > 1 else 0.0


# The two F1s every run reports (`study.protocol.evaluate_heads`): at the fixed 0.5 threshold, and at a threshold
# cross-fitted on the eval split. Each gets the same summary; JSON keys of the tuned one end in "_tuned".
METRICS = {"f1": "", "f1_tuned": "_tuned"}


def paired_gap(runs: list[dict], strategy: str, baseline: str, budgets: list[float],
               metric: str = "f1") -> dict[str, dict]:
    """Per budget, `strategy` minus `baseline` F1 paired by seed (both meet the same stream and head init
    in a seed, so the seed-to-seed spread they share cancels): mean, standard error, seeds ahead."""
    out = {}
    for b in budgets:
        a = {r["seed"]: r[metric] for r in runs if r["strategy"] == strategy and r["budget"] == b}
        z = {r["seed"]: r[metric] for r in runs if r["strategy"] == baseline and r["budget"] == b}
        diffs = [a[k] - z[k] for k in sorted(a.keys() & z.keys())]
        if diffs:
            out[str(b)] = {"mean": statistics.fmean(diffs), "se": _spread(diffs) / math.sqrt(len(diffs)),
                           "seeds_ahead": sum(d > 0 for d in diffs), "seeds": len(diffs)}
    return out


# Where a run's scores fall against the 0.5 threshold: the share of the eval split's erroneous trajectories whose
# first error it finds there (ProcessBench's acc_error, Zheng et al., 2024), of correct ones it passes (acc_correct),
# and the threshold the cross-fit tuned. A strategy can lead at 0.5 merely because what it bought moved its scores
# towards where 0.5 finds more errors; these columns show that shift next to the F1 it explains.
CALIBRATION = ("acc_error", "acc_correct", "threshold_tuned")


def _calibration(rs: list[dict]) -> dict[str, float]:
    return {f"{k}_mean": statistics.fmean(r[k] for r in rs) for k in CALIBRATION
            if rs and all(r.get(k) is not None for r in rs)}


# What each run records of the trajectories it bought (`study.protocol.run_budget`), and how the table names it.
SHARES = {"error_share": "Share of bought trajectories that contain an error (the pool's own share is what random "
                         "buys):",
          "misjudged_share": "Share of the trajectories chosen from a batch whose verdict the heads had wrong when "
                             "they chose (what a score that finds the heads' mistakes buys; studies before this "
                             "column have none):"}


def _mean_of(rows: list[dict], key: str) -> float | None:
    values = [r[key] for r in rows if r.get(key) is not None]
    return statistics.fmean(values) if values else None


def summarize(runs: list[dict], *, preset: StudyPreset, pool: str, seeds: list[int], train_size: int,
              eval_size: int, strategies: tuple[str, ...] = STRATEGY_NAMES) -> dict:
    """The study's numbers in the shape of study/results/al_study.json (plus the same keys ending in
    "_tuned" for F1 at the cross-fitted threshold)."""
    full = [r for r in runs if r["strategy"] == "full"]
    untrained = [r for r in runs if r["strategy"] == "untrained"]
    # The runs behind each cell; at b = 1 every strategy labels everything, so its cell is full data.
    cells = {(s, b): full if b >= 1 else [r for r in runs if r["strategy"] == s and r["budget"] == b]
             for s in strategies for b in preset.budgets}
    table: dict[str, dict[str, dict]] = {s: {} for s in strategies}
    for (s, b), rs in cells.items():
        table[s][str(b)] = ({"labels": train_size, "full_data": True} if b >= 1 else
                            {"labels": int(round(statistics.fmean(r["labels"] for r in rs))),
                             **{k: _mean_of(rs, k) for k in SHARES}})
        table[s][str(b)] |= _calibration(rs)
    out: dict[str, Any] = {"strategies": table, "preset": preset.name, "pool": pool, "seeds": list(seeds),
                           "budgets": list(preset.budgets), "train_size": train_size, "eval_size": eval_size,
                           "budget_labels": {str(b): budget_labels(b, train_size) for b in preset.budgets},
                           "study_preset": asdict(preset)}
    compare = "actprm" in table and "random" in table
    for metric, suffix in METRICS.items():
        full_f1 = statistics.fmean(r[metric] for r in full)
        floor = statistics.fmean(r[metric] for r in untrained) if untrained else None
        out[f"full_data_f1{suffix}"], out[f"full_data_f1{suffix}_std"] = full_f1, _spread([r[metric] for r in full])
        out[f"untrained_f1{suffix}"] = floor
        for (s, b), rs in cells.items():
            values, cell = [r[metric] for r in rs], table[s][str(b)]
            cell[f"f1{suffix}_mean"], cell[f"f1{suffix}_std"] = statistics.fmean(values), _spread(values)
            if b < 1:
                cell[f"f1{suffix}_min"], cell[f"f1{suffix}_max"] = min(values), max(values)
            online = [r[f"{metric}_online"] for r in rs if f"{metric}_online" in r]
            if b < 1 and online:  # final_retrain: the F1 of the heads that did the buying, for comparison
                cell[f"f1{suffix}_online_mean"] = statistics.fmean(online)
        smallest = {s: min((b for b in preset.budgets if table[s][str(b)][f"f1{suffix}_mean"] >= full_f1 - WITHIN_F1),
                           default=None) for s in strategies}
        out[f"smallest_budget_within_0.5pt{suffix}"] = smallest
        # Judged per F1: heads can learn to rank steps (the tuned F1 moves) while their scores never cross 0.5.
        learned = floor is None or full_f1 - floor >= LEARNED_F1
        if not learned:
            out[f"warning{suffix}"] = (
                f"full-data training barely beats the untrained ensemble (F1 {full_f1:.3f} vs {floor:.3f}): the PRM "
                "learned (almost) nothing on this pool by this F1, so the strategy comparison on it is not meaningful")
        converged = True  # unless the step check shows more training lifts full data beyond the target's tolerance
        if check := step_check(runs, metric):
            out[f"step_check{suffix}"] = check
            converged = check["gain"] <= WITHIN_F1
            if not converged:
                out[f"warning_steps{suffix}"] = (
                    f"full data gains {check['gain'] * 100:+.2f} ± {check['se'] * 100:.2f} F1 points with twice the "
                    f"head steps ({check['steps']} → {check['steps_2x']}; {check['seeds_ahead']}/{check['seeds']} "
                    "seeds): every run is short of training, so a budget within 0.5 points of full data here may "
                    "only be as under-trained as it; raise steps_per_round (or epochs) until this gain is within "
                    "0.5 points")
        if compare:
            out[f"actprm_minus_random{suffix}"] = paired_gap(runs, "actprm", "random",
                                                             [b for b in preset.budgets if b < 1], metric)
        if compare and "0.5" in table["actprm"]:
            gap = table["actprm"]["0.5"][f"f1{suffix}_mean"] - table["random"]["0.5"][f"f1{suffix}_mean"]
            out[f"actprm_minus_random_at_0.5{suffix}"] = gap
            best = smallest["actprm"]
            out[f"targets{suffix}"] = {  # a target met by a PRM that learned nothing is not met
                # ... nor is a tie with a full-data run that more steps would lift past it.
                "actprm_within_0.5pt_at_or_below_0.5": learned and converged and best is not None and best <= 0.5,
                "actprm_beats_random_at_0.5_by_3pt": learned and gap >= 0.03,
            }
    return out


def step_check(runs: list[dict], metric: str = "f1") -> dict | None:
    """Full data at twice the head steps (`study.protocol.step_check_run`) against full data, paired by seed: the
    2x-steps F1, the gain (mean, standard error, seeds where the longer run is ahead) and both step counts; None
    when no seed ran the check."""
    full = {r["seed"]: r for r in runs if r["strategy"] == "full"}
    longer = {r["seed"]: r for r in runs if r["strategy"] == STEP_CHECK and r["seed"] in full}
    if not longer:
        return None
    diffs = [longer[k][metric] - full[k][metric] for k in sorted(longer)]
    steps_2x = longer[min(longer)]["steps"]
    return {"full_data_f1_2x_steps": statistics.fmean(r[metric] for r in longer.values()),
            "gain": statistics.fmean(diffs), "se": _spread(diffs) / math.sqrt(len(diffs)),
            "seeds_ahead": sum(d > 0 for d in diffs), "seeds": len(diffs),
            # Full-data runs made before rows counted their steps took half the check's, as every check does.
            "steps": full[min(longer)].get("steps", steps_2x // 2), "steps_2x": steps_2x}


def saved_preset(saved: dict) -> StudyPreset:
    """The preset a study's JSON was made under (tuples come back from JSON as lists; fields it does not know,
    from a later version, are dropped)."""
    known = {f.name for f in fields(StudyPreset)}
    return StudyPreset(**{k: tuple(v) if isinstance(v, list) else v for k, v in saved["study_preset"].items()
                          if k in known})


def require_numerics(saved: dict, refused: str) -> None:
    """Raise ActPRMError (one line, starting with `refused`) when a study's JSON was made by another version of the
    heads' training arithmetic (study.protocol.NUMERICS_VERSION): its runs would not reproduce bit for bit."""
    made = saved.get("numerics_version", 1)  # studies written before the version was recorded are version 1
    if made != NUMERICS_VERSION:
        raise ActPRMError(f"{refused}: it was made by version {made} of the study's training arithmetic, this is "
                          f"version {NUMERICS_VERSION} (study.protocol.NUMERICS_VERSION); its runs would not reproduce "
                          "bit for bit, so rerun it")


# What must match for runs of two invocations to be summarized together: every preset field that shapes a
# run's F1. Threads and host timing only change or measure speed, seeds are what an extension adds, and the name
# only labels the fields.
# check_steps adds runs (full data at twice the steps) and changes none, so an extension may turn it on.
_NOT_COMPARED = {"name", "seeds", "head_threads", "feature_threads", "host_seconds", "check_steps"}


class Earlier(NamedTuple):
    """What a study's earlier invocations left for the one that extends it."""
    runs: list[dict]
    wall_seconds: list[float]  # one entry per invocation
    hosts: list[dict]          # one entry per invocation that recorded its host (study.host.host_facts)


def previous_runs(path: str | Path, *, pool: str, preset: StudyPreset, knobs: dict[str, Any],
                  split: str, train_size: int, eval_size: int,
                  strategies: tuple[str, ...] = STRATEGY_NAMES) -> Earlier:
    """The runs of an earlier study that a new invocation extends with more seeds, and the wall seconds and host
    of each invocation that made them.

    Raises ActPRMError (one line) when the earlier study was made under anything that changes a run's F1:
    another pool or split, another study or model preset, other heads or uncertainty knobs. Runs of the same
    seed are deterministic (`study.protocol`), so an extended study summarizes exactly as one run over all its
    seeds would.
    """
    path = Path(path)
    if not path.is_file():
        raise ActPRMError(f"cannot extend {path}: no such study (run it once without --extend)")
    try:
        earlier = json.loads(path.read_text())
    except json.JSONDecodeError as e:
        raise ActPRMError(f"cannot extend {path}: not a study's JSON ({e})") from None
    if not isinstance(earlier, dict) or not isinstance(earlier.get("runs"), list):
        raise ActPRMError(f"cannot extend {path}: it holds no per-run results (\"runs\")")
    require_numerics(earlier, f"cannot extend {path}")
    if earlier.get("pool") != pool:
        raise ActPRMError(f"cannot extend {path}: it was made on pool {earlier.get('pool')!r}, not {pool!r}")
    # Studies written before the split was fingerprinted carry none (nor knobs); their runs used the defaults.
    if earlier.get("split_sha256", split) != split or (earlier.get("train_size"), earlier.get("eval_size")) != (
            train_size, eval_size):
        raise ActPRMError(f"cannot extend {path}: pool {pool!r} was split into other train/eval trajectories then "
                          "(re-ingested, or another eval_fraction or seed)")
    # Compared as JSON sees them (tuples read back as lists).
    mine = {k: v for k, v in json.loads(json.dumps(asdict(preset))).items() if k not in _NOT_COMPARED}
    # A field added since the earlier study was written ran at its default there (that is what defaults are for).
    added = {f.name: f.default for f in fields(StudyPreset) if f.default is not MISSING}
    theirs = {k: v for k, v in (added | (earlier.get("study_preset") or {})).items() if k not in _NOT_COMPARED}
    for key in sorted(mine.keys() | theirs.keys()):
        if mine.get(key) != theirs.get(key):
            raise ActPRMError(f"cannot extend {path}: study preset {key} was {theirs.get(key)!r}, "
                              f"this run has {mine.get(key)!r}")
    if set(earlier.get("strategies") or ()) != set(strategies):
        raise ActPRMError(f"cannot extend {path}: it compares {', '.join(earlier.get('strategies') or ())}, "
                          f"this run {', '.join(strategies)}")
    recorded = earlier.get("knobs") or {}
    for key in sorted(knobs.keys() & recorded.keys()):
        if knobs[key] != recorded[key]:
            raise ActPRMError(f"cannot extend {path}: {key} was {recorded[key]!r}, this run has {knobs[key]!r}")
    # Studies from before the flow timed itself carry one total, or none.
    spent = earlier.get("wall_seconds_per_invocation")
    if spent is None:
        spent = [earlier["wall_seconds"]] if "wall_seconds" in earlier else []
    hosts = [dict(h) for h in earlier.get("host_gemm_gflops_per_invocation") or []]
    if len(hosts) == 1 and "cpu_capability" in earlier:  # written by the bench before each entry named its kernels
        hosts[0].setdefault("cpu_capability", earlier["cpu_capability"])
    return Earlier(earlier["runs"], [float(s) for s in spent], hosts)


def other_kernels(hosts: Sequence[dict]) -> list[str]:
    """The CPU kernel sets of a study's invocations, when they are more than one: its runs then reproduce bit for
    bit only on their own kind of host (study.host)."""
    kinds = sorted({h["cpu_capability"] for h in hosts if h.get("cpu_capability")})
    return kinds if len(kinds) > 1 else []


def study_result(runs: list[dict], *, preset: StudyPreset, pool: str, strategies: tuple[str, ...], train_size: int,
                 eval_size: int, model: dict, knobs: dict[str, Any], split: str,
                 wall_seconds_per_invocation: Sequence[float] = (), hosts: Sequence[dict] = ()) -> dict:
    """The study's JSON for the runs so far: the summary over every seed that has runs, the runs themselves,
    what a later `extend` must match (knobs, split fingerprint), and the wall time spent on them and the host
    that spent it: one entry per invocation, the last one up to now (so a checkpoint left by a crash still
    counts the time it cost)."""
    seeds = sorted({r["seed"] for r in runs})
    result = summarize(runs, preset=replace(preset, seeds=tuple(seeds)), pool=pool, seeds=seeds,
                       train_size=train_size, eval_size=eval_size, strategies=strategies)
    result.update(model=model, knobs=knobs, split_sha256=split, numerics_version=NUMERICS_VERSION, runs=runs)
    if wall_seconds_per_invocation:
        spent = [round(float(s), 1) for s in wall_seconds_per_invocation]
        result.update(wall_seconds_per_invocation=spent, wall_seconds=round(sum(spent), 1))
    if hosts:  # the field's name predates the kernels and seeds in each entry
        result.update(host_gemm_gflops_per_invocation=[dict(h) for h in hosts],
                      cpu_capability=hosts[-1].get("cpu_capability"), cpu_count=hosts[-1].get("cpu_count"))
        if other_kernels(hosts):
            result["cpu_capabilities"] = other_kernels(hosts)
    return result


def _f1_section(result: dict, suffix: str, title: str) -> list[str]:
    budgets = result["budgets"]
    untrained = result.get(f"untrained_f1{suffix}")
    check = result.get(f"step_check{suffix}")
    lines = [f"## {title}", "", *(line for key in (f"warning{suffix}", f"warning_steps{suffix}") if result.get(key)
                                  for line in (f"**Warning:** {result[key]}", "")),
             f"Full data: **{result[f'full_data_f1{suffix}']:.4f} ± {result[f'full_data_f1{suffix}_std']:.4f}**"
             + ("" if untrained is None else f" (untrained ensemble: {untrained:.4f})")
             + ("" if check is None else
                f"; at twice the head steps ({check['steps']} → {check['steps_2x']}): "
                f"{check['full_data_f1_2x_steps']:.4f}, "
                f"{check['gain'] * 100:+.2f} ± {check['se'] * 100:.2f} points paired by seed "
                f"({check['seeds_ahead']}/{check['seeds']} seeds ahead)"), "",
             "| strategy | " + " | ".join(f"{int(b * 100)}% ({result['budget_labels'][str(b)]})" for b in budgets)
             + " | smallest budget within 0.5 pt of full data |", "|---" * (len(budgets) + 2) + "|"]
    for s, row in result["strategies"].items():
        cells = [f"{row[str(b)][f'f1{suffix}_mean']:.4f} ± {row[str(b)][f'f1{suffix}_std']:.4f}" for b in budgets]
        best = result[f"smallest_budget_within_0.5pt{suffix}"][s]
        lines.append(f"| {s} | " + " | ".join(cells) + f" | {'—' if best is None else f'{int(best * 100)}%'} |")
    for s, row in result["strategies"].items():
        if any(f"f1{suffix}_online_mean" in row[str(b)] for b in budgets):
            cells = [f"{row[str(b)][f'f1{suffix}_online_mean']:.4f}" if f"f1{suffix}_online_mean" in row[str(b)]
                     else "—" for b in budgets]
            lines.append(f"| {s}, online | " + " | ".join(cells) + " | |")
    gaps = result.get(f"actprm_minus_random{suffix}") or {}
    if gaps:
        lines += ["", "ActPRM − random, paired by seed (F1 points, mean ± standard error; seeds where ActPRM is ahead):",
                  "", "| budget | " + " | ".join(f"{int(float(b) * 100)}%" for b in gaps) + " |",
                  "|---" * (len(gaps) + 1) + "|",
                  "| ActPRM − random | " + " | ".join(f"{g['mean'] * 100:+.2f} ± {g['se'] * 100:.2f} ({g['seeds_ahead']}/{g['seeds']})"
                                                    for g in gaps.values()) + " |"]
    if f"targets{suffix}" in result:
        met = ", ".join(f"{k}: {'met' if v else 'missed'}" for k, v in result[f"targets{suffix}"].items())
        lines += ["", f"ActPRM − random at 50%: {result[f'actprm_minus_random_at_0.5{suffix}'] * 100:+.2f} F1 points. "
                      f"Targets: {met}."]
    return lines + [""]


def markdown_table(result: dict) -> str:
    budgets = result["budgets"]
    lines = [f"# Active-learning study: pool `{result['pool']}`, preset `{result['preset']}`, "
             f"seeds {result['seeds']}", "",
             f"Train split {result['train_size']} trajectories, eval split {result['eval_size']}. "
             f"ProcessBench F1 (mean ± std over seeds) by label budget (labels bought), at the fixed threshold 0.5 "
             "and at a threshold cross-fitted on the eval split (two folds, each scored at the threshold tuned on "
             "the other).", "",
             *(["Each run below 100% is scored by fresh heads trained on the labels it bought, in a shuffled order, "
                "as full data trains on all of them (`final_retrain`); the heads that did the buying score the "
                "\"online\" rows.", ""] if result["study_preset"].get("final_retrain") else []),
             *_f1_section(result, "", "F1 at threshold 0.5"),
             *_f1_section(result, "_tuned", "F1 at the cross-fitted threshold")]
    low = [b for b in budgets if b < 1]
    for key, title in SHARES.items():
        shares = {s: row for s, row in result["strategies"].items()
                  if any(row[str(b)].get(key) is not None for b in low)}
        if shares:
            lines += [*([""] if lines[-1] else []), title, "", *_budget_header(low)]
            for s, row in shares.items():
                lines.append(f"| {s} | " + " | ".join("—" if row[str(b)].get(key) is None
                                                       else f"{row[str(b)][key]:.2f}" for b in low) + " |")
    return "\n".join(lines + _calibration_section(result) + _host_section(result)) + "\n"


def _budget_header(budgets: Sequence[float]) -> list[str]:
    return ["| strategy | " + " | ".join(f"{int(b * 100)}%" for b in budgets) + " |", "|---" * (len(budgets) + 1) + "|"]


def _calibration_section(result: dict) -> list[str]:
    budgets = result["budgets"]
    rows = {s: row for s, row in result["strategies"].items()
            if all(f"{k}_mean" in row[str(b)] for b in budgets for k in CALIBRATION)}
    if not rows:  # a study saved before these were summarized
        return []
    lines = ["", "Where the 0.5 threshold falls: share of the eval split's erroneous trajectories whose first error is "
             "found at 0.5 / share of its correct trajectories passed at 0.5 · the cross-fitted threshold. A lead at "
             "0.5 that the cross-fitted F1 does not share comes from where the scores fall, not from how they rank "
             "the steps:", "", *_budget_header(budgets)]
    for s, row in rows.items():
        lines.append(f"| {s} | " + " | ".join(
            f"{row[str(b)]['acc_error_mean']:.2f} / {row[str(b)]['acc_correct_mean']:.2f} · "
            f"{row[str(b)]['threshold_tuned_mean']:.2f}" for b in budgets) + " |")
    return lines


def _host_section(result: dict) -> list[str]:
    """Where the time went and on what: a wall time means little without the host's speed that day."""
    hosts = result.get("host_gemm_gflops_per_invocation") or []
    walls = result.get("wall_seconds_per_invocation") or []
    if not hosts:
        return []
    lines = ["", "## Wall time and host", "",
             "| invocation | seeds | wall | CPU kernels | CPUs | fp32 GEMM GFLOP/s before → after |", "|---" * 6 + "|"]
    gpus = []  # study/scripts/portable.py on a lent GPU: those runs trained there, not on the CPU
    for i, h in enumerate(hosts):
        if h.get("gpu"):
            gpus += ["", f"Invocation {i + 1} trained and scored on {h.get('device')} ({h['gpu']}), torch "
                         f"{h.get('torch')}, float32 matmul precision {h.get('float32_matmul_precision')}."]
        wall = f"{walls[i] / 60:.1f} min" if i < len(walls) else "—"
        seeds = ", ".join(map(str, h["seeds"])) if "seeds" in h else "—"
        after = "—" if h.get("after") is None else h["after"]
        before = "—" if h.get("before") is None else h["before"]
        lines.append(f"| {i + 1} | {seeds} | {wall} | {h.get('cpu_capability') or '—'} | {h.get('cpu_count') or '—'} "
                     f"| {before} → {after} |")
    lines += gpus
    if result.get("cpu_capabilities"):
        lines += ["", f"**Note:** these seeds ran on hosts with different CPU kernels "
                      f"({', '.join(result['cpu_capabilities'])}); float rounding follows the kernels, so each run "
                      "reproduces bit for bit only on its own kind of host."]
    return lines


def plot(result: dict, path: str | Path) -> Path:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, axes = plt.subplots(1, 2, figsize=(12, 4.5), sharey=True)
    for ax, (suffix, title) in zip(axes, (("", "threshold 0.5"), ("_tuned", "cross-fitted threshold"))):
        bs = result["budgets"]
        for s, row in result["strategies"].items():
            ax.errorbar([row[str(b)]["labels"] for b in bs], [row[str(b)][f"f1{suffix}_mean"] for b in bs],
                        yerr=[row[str(b)][f"f1{suffix}_std"] for b in bs], marker="o", capsize=3, label=s)
        full = result[f"full_data_f1{suffix}"]
        ax.axhline(full, color="black", linestyle="--", linewidth=1, label="full data")
        ax.axhspan(full - WITHIN_F1, full + WITHIN_F1, color="grey", alpha=0.2)
        if check := result.get(f"step_check{suffix}"):
            ax.axhline(check["full_data_f1_2x_steps"], color="black", linestyle=":", linewidth=1,
                       label="full data, 2x head steps")
        ax.set_xlabel("labels bought (trajectories)")
        ax.set_title(f"ProcessBench F1, {title}")
    axes[0].set_ylabel("ProcessBench F1 (eval split)")
    axes[0].legend()
    # A study run with several --set knobs has a long preset name: wrapped, or the figure clips it at both ends.
    title = f"Active learning on {result['pool']} ({result['preset']}, {len(result['seeds'])} seeds)"
    fig.suptitle(textwrap.fill(title, width=110))
    fig.tight_layout()
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    fig.savefig(path, dpi=120)
    plt.close(fig)
    return path


def write_outputs(result: dict, output_dir: str | Path, stem: str = "al_study", with_plot: bool = True
                  ) -> dict[str, str]:
    """Writes <stem>.json, <stem>.md and (`with_plot`: a GPU box may lack matplotlib) <stem>.png; returns their
    paths."""
    out = Path(output_dir)
    out.mkdir(parents=True, exist_ok=True)
    # Each file is written beside its final name and renamed over it, so a kill mid-write never leaves a torn
    # JSON for `extend` to read. The JSON goes last: it is what a rerun trusts.
    order = {"plot": out / f"{stem}.png"} if with_plot else {}
    order |= {"markdown": out / f"{stem}.md", "json": out / f"{stem}.json"}
    if with_plot:
        plot(result, _partial(order["plot"]))
    _partial(order["markdown"]).write_text(markdown_table(result))
    _partial(order["json"]).write_text(json.dumps(result, indent=2) + "\n")
    for path in order.values():
        os.replace(_partial(path), path)
    return {k: str(order[k]) for k in ("json", "markdown", "plot") if k in order}


def _partial(path: Path) -> Path:
    return path.with_name(f".{path.stem}.partial{path.suffix}")


def log_to_mlflow(result: dict, paths: dict[str, str], *, tracking_uri: str, experiment: str,
                  artifact_root: str | Path | None) -> str:
    """One MLflow run `study`: F1 per strategy and budget as metrics, the three outputs as artifacts."""
    import mlflow

    from actprm.tracking import configure_mlflow, start_run

    configure_mlflow(tracking_uri, experiment, artifact_root)
    with start_run("study", {"actprm.stage": "study", "actprm.pool": result["pool"],
                             "actprm.study_preset": result["preset"]}) as run:
        mlflow.log_params({"study.preset": result["preset"], "study.pool": result["pool"],
                           "study.seeds": ",".join(map(str, result["seeds"])),
                           "study.train_size": result["train_size"], "study.eval_size": result["eval_size"]})
        metrics = {}
        for suffix in METRICS.values():
            metrics[f"full_data_f1{suffix}"] = result[f"full_data_f1{suffix}"]
            if check := result.get(f"step_check{suffix}"):
                metrics[f"full_data_f1_2x_steps{suffix}"] = check["full_data_f1_2x_steps"]
            for s, row in result["strategies"].items():
                for b, cell in row.items():
                    metrics[f"f1{suffix}_{s}_{int(float(b) * 100)}pct"] = cell[f"f1{suffix}_mean"]
            if f"actprm_minus_random_at_0.5{suffix}" in result:
                metrics[f"actprm_minus_random_at_50pct{suffix}"] = result[f"actprm_minus_random_at_0.5{suffix}"]
        host = (result.get("host_gemm_gflops_per_invocation") or [{}])[-1]
        if host:
            mlflow.log_params({"study.cpu_capability": host.get("cpu_capability"),
                               "study.cpu_count": host.get("cpu_count")})
            metrics["host_gemm_gflops"] = host["before"]
        mlflow.log_metrics(metrics)
        for p in paths.values():
            mlflow.log_artifact(p, artifact_path="study")
        return run.info.run_id
