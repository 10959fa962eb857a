"""The active-learning loop (ActPRM, Duan et al., 2025, Alg. 1), one round after another:

    score -> select (uncertain, ranked, capped by the round's budget) -> label -> train
          -> evaluate -> register -> promote

until the judge budget, the round limit, or a plateau (no F1 gain for K rounds) stops it.
This module only wires stages; each stage lives in `tasks/`.
"""

from __future__ import annotations

from typing import Any

from prefect import flow

from actprm.config import flow_settings
from actprm.judges import judge_identity
from actprm.names import check_pool_name
from flows import scoring
from flows.ingest_pool import ingest_pool
from flows.prefect_tasks import evaluate_stage, label_stage, register_stage
from tasks import pipeline
from tasks.label import JUDGE_DOWN_STOPS
from tasks.select import prepare_eval_split_task, select_task
from tasks.train import drop_round_checkpoints_task, train_stage


@flow(name="active-learning", log_prints=True)
def active_learning(
    pool: str = "sample",
    rounds: int | None = None,
    labels_per_round: int | None = None,
    judge: str | None = None,
    preset: str | None = None,
    strategy: str | None = None,
    dask_address: str | None = None,
    config: dict[str, Any] | None = None,
    fresh: bool = False,
) -> dict[str, Any]:
    """Run active-learning rounds on a pool, continuing its unfinished loop of the same settings if it has one.

    Args:
        pool: Name of an ingested pool ("sample" is created from the built-in generator if missing).
        rounds: Maximum number of rounds (default from config: loop.rounds).
        labels_per_round: Judge labels bought per round, the round's budget (loop.labels_per_round).
        judge: Judge backend: verifier, oracle, openai or vllm (judge.backend).
        preset: Model preset: tiny, cpu or qwen2.5-math-7b (model.preset).
        strategy: Acquisition strategy: actprm, random, entropy or bald (uncertainty.strategy).
        dask_address: Score on a Dask cluster: local:N or tcp://scheduler:8786 (uncertainty.dask_address).
        config: Any other settings, as nested overrides (e.g. {"budget": {"max_cost": 20}}).
        fresh: Start a new loop even when the pool has an unfinished one of these settings (abandoned).
    """
    check_pool_name(pool)  # from the UI or the pool-registered event's payload: refused before any path uses it
    settings = flow_settings(
        config,
        model={"preset": preset}, judge={"backend": judge},
        uncertainty={"strategy": strategy, "dask_address": dask_address},
        loop={"rounds": rounds, "labels_per_round": labels_per_round},
    )
    sample = pipeline.sample_pool_task(settings, pool)
    if sample is not None:
        ingest_pool(paths=[sample], pool=pool, home=str(settings.home))
    prepare_eval_split_task(str(settings.duckdb_path), pool, settings.loop.eval_fraction, settings.train.seed)
    # The loop's durable state (DuckDB) decides where this run starts, whoever started it (CLI, deployment, a Prefect
    # retry): a kill -9 and a rerun go on with the rounds, selections, labels and checkpoints the dead run left.
    loop = pipeline.open_loop_task(settings, pool, fresh)
    loop_id = loop["loop_id"]
    parent = pipeline.open_run_task(settings, "active_learning", {"pool": pool, "loop": loop_id})

    history, resume = pipeline.finished_rounds_task(settings, loop_id, pool)
    model_dir, model_version = resume or pipeline.loop_start_task(settings, loop)
    # A run that had stopped (budget, plateau, nothing uncertain) and died before closing the loop must not score
    # the pool again and buy one more round.
    stopped_because = pipeline.stopped_before(history, settings.loop.plateau_rounds) or "rounds"
    next_rounds = range(len(history) + 1, settings.loop.rounds + 1) if stopped_because == "rounds" else ()
    for k in next_rounds:
        run_id = pipeline.open_run_task(settings, f"round-{k}", {"pool": pool, "round": k, "loop": loop_id},
                                        parent=parent)
        scored = scoring.score(settings, pool, model_dir, model_version, run_id, split="train")
        ids = select_task(str(settings.duckdb_path), pool, model_version, settings.loop.labels_per_round,
                          settings.uncertainty.strategy, *judge_identity(settings), run_id=loop_id, round=k)
        labeled = label_stage(settings, pool, ids, run_id, round=k)
        # A round a killed run registered is not trained or registered again, only gated again on its version.
        trained = pipeline.registered_round_task(settings, loop_id, pool, k) or train_stage(
            settings, pool, init_from=model_dir, round=k, mlflow_run_id=run_id, loop=loop_id,
            only_ids=ids if settings.loop.train_on == "round" and settings.loop.warm_start else None)
        if trained["skipped"]:
            pipeline.close_run_task(settings, run_id)
            stopped_because = "nothing_to_train" if not labeled["labeled"] else "training_skipped"
            if labeled["stopped_because"] in JUDGE_DOWN_STOPS:  # nothing to train because the judge is down
                stopped_because = labeled["stopped_because"]
            history.append(pipeline.round_record(k, scored, labeled, trained, None, None))
            break
        evaluation = evaluate_stage(settings, pool, trained["model_dir"], run_id)
        registered = register_stage(settings, trained["model_dir"], evaluation, trained["mlflow_run_id"])
        drop_round_checkpoints_task(settings, pool, k, loop_id)
        record = pipeline.round_record(k, scored, labeled, trained, evaluation, registered)
        history.append(record)
        # Decided before the round is recorded, and recorded with it, so a rerun stops where this run did.
        record["stopped_because"] = pipeline.stop_after_round(history, labeled, ids, settings.loop.plateau_rounds)
        pipeline.record_round_task(settings, loop_id, parent, pool, record, trained["mlflow_run_id"],
                                   settings.loop.rounds)
        pipeline.close_run_task(settings, run_id)
        model_dir, model_version = trained["model_dir"], registered["model_version_key"]
        if record["stopped_because"]:
            stopped_because = record["stopped_because"]
            break

    summary = pipeline.finish_task(settings, loop_id, parent, pool, history, stopped_because)
    return summary
