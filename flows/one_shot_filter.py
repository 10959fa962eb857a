"""The paper's large-scale setting (Duan et al., 2025, Sec. 5): score a whole pool once with a
trained PRM, keep the uncertain share (the paper kept about 60% of 1M+ trajectories), label it,
and train a new PRM on it."""

from __future__ import annotations

from typing import Any

from prefect import flow

from actprm.config import flow_settings
from tasks import pipeline
from tasks.evaluate import evaluate_stage
from tasks.label import label_stage
from tasks.register import register_stage, starting_model_stage
from tasks.score import score_stage
from tasks.select import prepare_eval_split_task, select_task
from tasks.train import train_stage


@flow(name="one-shot-filter", log_prints=True)
def one_shot_filter(
    pool: str,
    keep_fraction: float = 0.6,
    judge: str | None = None,
    preset: str | None = None,
    model: str | None = None,
    config: dict[str, Any] | None = None,
) -> dict[str, Any]:
    """Filter a pool by uncertainty once, label what is kept, train a new PRM.

    Args:
        pool: Name of an ingested pool.
        keep_fraction: Upper bound on the share of the pool sent to the judge (uncertain ones first).
        judge: Judge backend: verifier, oracle, openai or vllm.
        preset: Model preset used when no trained model exists yet.
        model: Scoring model (a models:/ URI or folder); default the champion.
        config: Any other settings, as nested overrides.
    """
    settings = flow_settings(config, model={"preset": preset}, judge={"backend": judge})
    db = str(settings.duckdb_path)
    prepare_eval_split_task(db, pool, settings.loop.eval_fraction, settings.train.seed)
    parent = pipeline.open_run_task(settings, "one_shot_filter", {"pool": pool, "keep_fraction": keep_fraction})
    model_dir, model_version = starting_model_stage(settings, model)
    scored = score_stage(settings, pool, model_dir, model_version, parent, split="train")
    cap = int(keep_fraction * (scored["scored"] + scored["skipped_already_scored"]))
    ids = select_task(db, pool, model_version, cap, "actprm", *pipeline.judge_identity(settings),
                      run_id=parent, round=1)
    labeled = label_stage(settings, pool, ids, parent, round=1)
    trained = train_stage(settings, pool, init_from=model_dir, round=1, mlflow_run_id=parent)
    evaluation = registered = None
    if not trained["skipped"]:
        evaluation = evaluate_stage(settings, pool, trained["model_dir"], parent)
        registered = register_stage(settings, trained["model_dir"], evaluation, parent)
    record = pipeline.round_record(1, scored, labeled, trained, evaluation, registered)
    if evaluation is not None:
        pipeline.record_round_task(settings, parent, parent, pool, record, parent)  # one round, keyed by its run
    summary = pipeline.finish_task(settings, None, parent, pool, [record], labeled["stopped_because"])
    summary["kept"] = len(ids)
    summary["kept_fraction"] = len(ids) / max(1, scored["scored"] + scored["skipped_already_scored"])
    return summary
