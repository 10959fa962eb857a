"""The stages one after another: `run_round`, the round body the active-learning loop and the one-shot filter share,
and the single-stage flows behind `actprm score | label | train`, which run the same tasks one at a time.

Only wiring: every call is a Prefect task of flows/prefect_tasks.py (looked up on that module when called, so a test
or a crash drill can replace one) and every value is a stage's dataclass; the CLI's JSON comes from `as_dict()`.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

from prefect import flow

from actprm.config import Settings, flow_settings
from flows import prefect_tasks as pt
from flows import scoring
from tasks import pipeline
from tasks.evaluate import Evaluation
from tasks.label import LabelSummary, judge_down
from tasks.register import Registration
from tasks.score import ScoreSummary
from tasks.train import TrainResult


@dataclass
class Round:
    """What one round did, stage by stage, and its `record` (tasks.pipeline.round_record) for the history."""
    record: dict[str, Any]
    scored: ScoreSummary
    budget: int
    selected: list[str]
    labeled: LabelSummary
    trained: TrainResult
    evaluation: Evaluation | None = None  # None when training was skipped
    registered: Registration | None = None


def run_round(settings: Settings, pool: str, k: int, model_dir: str, model_version: str, run_id: str, *,
              budget: int | Callable[[ScoreSummary], int], strategy: str, loop_id: str | None = None,
              selection_key: str | None = None, train_on_selection: bool = True) -> Round:
    """One round of ActPRM (Duan et al., 2025, Alg. 1): score the pool's train split with the current model, select
    up to `budget` (uncertain first, ranked by `strategy`), buy their labels, train (from `model_dir`; on the
    selection only with `train_on_selection`), evaluate on the held-out split, register and gate. `budget` may be a
    function of what scoring found (the one-shot filter keeps a share of the pool).

    `selection_key` keeps the selection under (key, k) so a retry gets it back. In a loop (`loop_id`), a round an
    earlier invocation registered is not trained again, and the round's checkpoints go once it is registered."""
    scored = scoring.score(settings, pool, model_dir, model_version, run_id, split="train")
    budget = budget(scored) if callable(budget) else budget
    ids = pt.select_task(settings, pool, model_version, budget, strategy, run_id=selection_key, round=k)
    labeled = pt.label_task(settings, pool, ids, run_id, round=k)
    trained = (pt.registered_round_task(settings, loop_id, pool, k) if loop_id else None) or pt.train_task(
        settings, pool, init_from=model_dir, round=k, mlflow_run_id=run_id, loop=loop_id,
        only_ids=ids if train_on_selection else None)
    done = Round({}, scored, budget, ids, labeled, trained)
    if not trained.skipped:
        done.evaluation = pt.evaluate_task(settings, pool, trained.model_dir, run_id)
        done.registered = pt.register_task(settings, trained.model_dir, done.evaluation, trained.mlflow_run_id)
        if loop_id:
            pt.drop_checkpoints_task(settings, pool, k, loop_id)
    done.record = pipeline.round_record(k, scored, labeled, trained, done.evaluation, done.registered)
    return done


@flow(name="score", log_prints=True)
def score_flow(pool: str, model: str | None = None, export: str | None = None,
               config: dict[str, Any] | None = None) -> dict[str, Any]:
    """Score a pool's uncertainty with the ensemble PRM (champion by default; resumable)."""
    settings = flow_settings(config)
    pt.eval_split_task(settings, pool)
    model_dir, model_version = pt.starting_model_task(settings, model)
    run_id = pt.open_run_task(settings, "score", {"pool": pool})
    summary = scoring.score(settings, pool, model_dir, model_version, run_id).as_dict()
    if export:
        summary["export"] = pt.export_scores_task(settings, pool, model_version, export)
    pt.close_run_task(settings, run_id)
    return summary


@flow(name="label", log_prints=True)
def label_flow(pool: str, select: str = "uncertain", config: dict[str, Any] | None = None) -> dict[str, Any]:
    """Buy judge labels for the pool's not-yet-labeled trajectories picked by `select`."""
    settings = flow_settings(config)
    pt.eval_split_task(settings, pool)
    run_id = pt.open_run_task(settings, "label", {"pool": pool, "select": select})
    summary = pt.label_task(settings, pool, None, run_id, select=select)
    pt.close_run_task(settings, run_id)
    if (judge_failed := judge_down(summary)) is not None:  # the flow run fails, so the command exits non-zero
        raise judge_failed
    return summary.as_dict()


@flow(name="train", log_prints=True)
def train_flow(pool: str, config: dict[str, Any] | None = None) -> dict[str, Any]:
    """Train on the pool's judge labels, evaluate on its held-out split, register and gate."""
    settings = flow_settings(config)
    pt.eval_split_task(settings, pool)
    model_dir, _ = pt.starting_model_task(settings)
    run_id = pt.open_run_task(settings, "train", {"pool": pool})
    trained = pt.train_task(settings, pool, init_from=model_dir, round=None, mlflow_run_id=run_id)
    result: dict[str, Any] = {"run_id": run_id, "model_version": None,
                              "train_trajectories": trained.train_trajectories, "metrics": trained.metrics}
    if trained.skipped:
        result["skipped"] = trained.reason
    else:
        evaluation = pt.evaluate_task(settings, pool, trained.model_dir, run_id)
        registered = pt.register_task(settings, trained.model_dir, evaluation, run_id)
        result.update(model_version=registered.version, promotion=registered.decision,
                      metrics={**trained.metrics, "f1": evaluation.f1})
    pt.close_run_task(settings, run_id)
    return result
