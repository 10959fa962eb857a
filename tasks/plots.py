"""Per-run plots of an active-learning run, logged to its MLflow parent run under `plots/`:

- the active-learning curve (ActPRM, Duan et al., 2025, Fig. 2-style): ProcessBench F1 on the pool's held-out split
  against the cumulative judge labels bought, one point per round, from the loop's round records in DuckDB;
- the calibration (reliability) diagram of the last round's model: mean step probability against the share of
  correct steps per probability bin on the same eval split, with the ECE (actprm.metrics.step_calibration,
  computed by the evaluate stage and logged in the round run's evaluation.json).

Each PNG has its data beside it as JSON. Plots are a report: a failure to draw them is logged, never fails the run.
"""

from __future__ import annotations

import json
import logging
import tempfile
from pathlib import Path
from typing import Any

from actprm.config import Settings
from actprm.runlog import stage_logger
from actprm.store import Store

log = logging.getLogger(__name__)

PLOTS_DIR = "plots"  # artifact folder of the parent run
CURVE, CALIBRATION = "active_learning_curve", "calibration"


def curve_points(rounds: list[dict[str, Any]]) -> list[dict[str, Any]]:
    """One point per evaluated round, first round first: its labels, the labels bought up to it, its F1."""
    points, total = [], 0
    for r in sorted(rounds, key=lambda r: r["round"]):
        total += r["labels_bought"] or 0
        if r["f1"] is not None:
            points.append({"round": r["round"], "labels_bought": r["labels_bought"], "cumulative_labels": total,
                           "f1": r["f1"], "model_version": r["model_version"], "promoted": r["promoted"]})
    return points


def _pyplot():
    import matplotlib

    matplotlib.use("Agg")  # no display on a worker
    import matplotlib.pyplot as plt

    return plt


def plot_curve(points: list[dict[str, Any]], path: Path, title: str) -> Path:
    plt = _pyplot()
    fig, ax = plt.subplots(figsize=(6, 4), dpi=120)
    xs, ys = [p["cumulative_labels"] for p in points], [p["f1"] for p in points]
    ax.plot(xs, ys, marker="o")
    for p in points:
        ax.annotate(f"r{p['round']}" + ("*" if p["promoted"] else ""), (p["cumulative_labels"], p["f1"]),
                    textcoords="offset points", xytext=(4, 4), fontsize=8)
    ax.set_xlabel("judge labels bought (cumulative)")
    ax.set_ylabel("ProcessBench F1 (held-out split)")
    ax.set_title(title + "  (* promoted)", fontsize=10)
    ax.set_ylim(0, 1)
    ax.grid(alpha=0.3)
    fig.tight_layout()
    fig.savefig(path)
    plt.close(fig)
    return path


def plot_calibration(calibration: dict[str, Any], path: Path, title: str) -> Path:
    plt = _pyplot()
    fig, (ax, hist) = plt.subplots(2, 1, figsize=(5, 6), dpi=120, sharex=True, height_ratios=(3, 1))
    filled = [b for b in calibration["bins"] if b["n"]]
    ax.plot([0, 1], [0, 1], linestyle="--", color="grey", label="perfectly calibrated")
    ax.plot([b["mean_probability"] for b in filled], [b["correct_fraction"] for b in filled], marker="o",
            label="model")
    ax.set_ylabel("share of correct steps")
    ece = calibration.get("ece")
    ax.set_title(f"{title}\nECE {ece:.3f} over {calibration['steps']} steps" if ece is not None else title, fontsize=10)
    ax.set_xlim(0, 1)
    ax.set_ylim(0, 1)
    ax.legend(loc="upper left", fontsize=8)
    ax.grid(alpha=0.3)
    bins = calibration["bins"]
    hist.bar([b["lower"] for b in bins], [b["n"] for b in bins], width=[b["upper"] - b["lower"] for b in bins],
             align="edge", edgecolor="black")
    hist.set_xlabel("predicted P(step correct), mean over heads")
    hist.set_ylabel("steps")
    fig.tight_layout()
    fig.savefig(path)
    plt.close(fig)
    return path


def last_calibration(client, experiment_id: str, loop_id: str, k: int) -> dict[str, Any] | None:
    """The calibration the evaluate stage logged for round k of the loop (the newest run of that round that has
    one: a continued loop may have evaluated the round again in a run of its own)."""
    runs = client.search_runs([experiment_id], filter_string=f"tags.`actprm.loop` = '{loop_id}' AND "
                              f"tags.`actprm.round` = '{k}'", order_by=["attributes.start_time DESC"])
    for run in runs:
        if not any(a.path == "evaluation.json" for a in client.list_artifacts(run.info.run_id)):
            continue
        with tempfile.TemporaryDirectory() as tmp:
            evaluation = json.loads(Path(client.download_artifacts(run.info.run_id, "evaluation.json", tmp)).read_text())
        if evaluation.get("calibration"):
            return {**evaluation["calibration"], "round": k, "eval_set": evaluation.get("eval_set"),
                    "model_version": evaluation.get("model_version")}
    return None


def log_run_plots(settings: Settings, loop_id: str, parent: str, pool: str) -> dict[str, Any]:
    """Draws both plots of the loop and logs them (PNG + JSON) to the parent run; returns what it logged."""
    from mlflow.tracking import MlflowClient

    from actprm.tracking import configure_mlflow

    with Store(settings.duckdb_path) as store:
        points = curve_points(store.rounds(loop_id, limit=1_000_000))
    experiment_id = configure_mlflow(settings.tracking_uri, settings.experiment, settings.artifact_root)
    client = MlflowClient(settings.tracking_uri)
    calibration = last_calibration(client, experiment_id, loop_id, points[-1]["round"]) if points else None
    logged: dict[str, Any] = {"points": len(points), "files": []}
    with tempfile.TemporaryDirectory() as tmp:
        out = Path(tmp)
        if points:
            (out / f"{CURVE}.json").write_text(json.dumps({"pool": pool, "loop": loop_id, "points": points}, indent=1))
            plot_curve(points, out / f"{CURVE}.png", f"Active learning on {pool}")
        if calibration is not None:
            (out / f"{CALIBRATION}.json").write_text(json.dumps({"pool": pool, "loop": loop_id, **calibration}, indent=1))
            plot_calibration(calibration, out / f"{CALIBRATION}.png",
                             f"Calibration on {pool}, round {calibration['round']} model")
        logged["files"] = sorted(p.name for p in out.iterdir())
        if logged["files"]:
            client.log_artifacts(parent, str(out), PLOTS_DIR)
    stage_logger().info("plots of loop %s on %s: %s logged to MLflow run %s under %s/", loop_id, pool,
                        ", ".join(logged["files"]) or "nothing (no evaluated round)", parent, PLOTS_DIR)
    return logged


def run_plots(settings: Settings, loop_id: str, parent: str, pool: str) -> dict[str, Any]:
    """log_run_plots that never fails the loop: a plot is a report on rounds, labels and models already safe."""
    try:
        return log_run_plots(settings, loop_id, parent, pool)
    except Exception as exc:  # a report: the rounds, labels and models it reports on are already safe
        log.warning("could not log the plots of loop %s: %s", loop_id, exc, exc_info=True)
        stage_logger().warning("plots of loop %s not logged: %s", loop_id, exc)
        return {"points": 0, "files": [], "error": str(exc)}
