"""Single-stage flows behind `actprm score | label | train`: the same tasks the loop runs, one at a time."""

from __future__ import annotations

from typing import Any

from prefect import flow

from actprm.config import flow_settings
from flows import scoring
from flows.prefect_tasks import evaluate_stage, label_stage, register_stage, starting_model_stage, train_stage
from tasks import pipeline
from tasks.label import judge_down
from tasks.score import export_stage
from tasks.select import prepare_eval_split_task


@flow(name="score", log_prints=True)
def score_flow(pool: str, model: str | None = None, export: str | None = None,
               config: dict[str, Any] | None = None) -> dict[str, Any]:
    """Score a pool's uncertainty with the ensemble PRM (champion by default; resumable)."""
    settings = flow_settings(config)
    prepare_eval_split_task(str(settings.duckdb_path), pool, settings.loop.eval_fraction, settings.train.seed)
    model_dir, model_version = starting_model_stage(settings, model)
    run_id = pipeline.open_run_task(settings, "score", {"pool": pool})
    summary = scoring.score(settings, pool, model_dir, model_version, run_id)
    if export:
        summary["export"] = export_stage(settings, pool, model_version, export)
    pipeline.close_run_task(settings, run_id)
    return summary


@flow(name="label", log_prints=True)
def label_flow(pool: str, select: str = "uncertain", config: dict[str, Any] | None = None) -> dict[str, Any]:
    """Buy judge labels for the pool's not-yet-labeled trajectories picked by `select`."""
    settings = flow_settings(config)
    prepare_eval_split_task(str(settings.duckdb_path), pool, settings.loop.eval_fraction, settings.train.seed)
    run_id = pipeline.open_run_task(settings, "label", {"pool": pool, "select": select})
    summary = label_stage(settings, pool, None, run_id, select=select)
    pipeline.close_run_task(settings, run_id)
    if (judge_failed := judge_down(summary)) is not None:  # the flow run fails, so the command exits non-zero
        raise judge_failed
    return summary


@flow(name="train", log_prints=True)
def train_flow(pool: str, config: dict[str, Any] | None = None) -> dict[str, Any]:
    """Train on the pool's judge labels, evaluate on its held-out split, register and gate."""
    settings = flow_settings(config)
    prepare_eval_split_task(str(settings.duckdb_path), pool, settings.loop.eval_fraction, settings.train.seed)
    model_dir, _ = starting_model_stage(settings)
    run_id = pipeline.open_run_task(settings, "train", {"pool": pool})
    trained = train_stage(settings, pool, init_from=model_dir, round=None, mlflow_run_id=run_id)
    result: dict[str, Any] = {"run_id": run_id, "model_version": None,
                              "train_trajectories": trained["train_trajectories"], "metrics": trained["metrics"]}
    if trained["skipped"]:
        result["skipped"] = trained["reason"]
    else:
        evaluation = evaluate_stage(settings, pool, trained["model_dir"], run_id)
        registered = register_stage(settings, trained["model_dir"], evaluation, run_id)
        result.update(model_version=registered["version"], promotion=registered["decision"],
                      metrics={**trained["metrics"], "f1": evaluation["f1"]})
    pipeline.close_run_task(settings, run_id)
    return result
