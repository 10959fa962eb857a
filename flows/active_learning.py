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
from actprm.names import check_pool_name
from flows import prefect_tasks as pt
from flows.ingest_pool import ingest_pool
from flows.stages import run_round
from tasks import pipeline
from tasks.label import JUDGE_DOWN_STOPS


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
    sample = pt.sample_pool_task(settings, pool)
    if sample is not None:
        ingest_pool(paths=[sample], pool=pool, home=str(settings.home))
    pt.eval_split_task(settings, pool)
    # The loop's durable state (DuckDB) decides where this run starts, whoever started it (CLI, deployment, a Prefect
    # retry): a kill -9 and a rerun go on with the rounds, selections, labels and checkpoints the dead run left.
    loop = pt.open_loop_task(settings, pool, fresh)
    loop_id = loop["loop_id"]
    parent = pt.open_run_task(settings, "active_learning", {"pool": pool, "loop": loop_id})

    history, resume = pt.finished_rounds_task(settings, loop_id, pool)
    model_dir, model_version = resume or pt.loop_start_task(settings, loop)
    # A run that had stopped (budget, plateau, nothing uncertain) and died before closing the loop must not score
    # the pool again and buy one more round.
    stopped_because = pipeline.stopped_before(history, settings.loop.plateau_rounds) or "rounds"
    next_rounds = range(len(history) + 1, settings.loop.rounds + 1) if stopped_because == "rounds" else ()
    for k in next_rounds:
        run_id = pt.open_run_task(settings, f"round-{k}", {"pool": pool, "round": k, "loop": loop_id}, parent=parent)
        # ActPRM's online update (Alg. 1): a warm-started model learns from the batch it just selected and paid for.
        # A round a killed run registered is not trained or registered again, only gated again on its version.
        done = run_round(settings, pool, k, model_dir, model_version, run_id, budget=settings.loop.labels_per_round,
                         strategy=settings.uncertainty.strategy, loop_id=loop_id, selection_key=loop_id,
                         train_on_selection=settings.loop.train_on == "round" and settings.loop.warm_start)
        history.append(done.record)
        if done.trained.skipped:
            pt.close_run_task(settings, run_id)
            stopped_because = "nothing_to_train" if not done.labeled.labeled else "training_skipped"
            if done.labeled.stopped_because in JUDGE_DOWN_STOPS:  # nothing to train because the judge is down
                stopped_because = done.labeled.stopped_because
            break
        # Decided before the round is recorded, and recorded with it, so a rerun stops where this run did.
        done.record["stopped_because"] = pipeline.stop_after_round(history, done.labeled, done.selected,
                                                                   settings.loop.plateau_rounds)
        pt.record_round_task(settings, loop_id, parent, pool, done.record, done.trained.mlflow_run_id,
                             settings.loop.rounds)
        pt.close_run_task(settings, run_id)
        model_dir, model_version = done.trained.model_dir, done.registered.model_version_key
        if done.record["stopped_because"]:
            stopped_because = done.record["stopped_because"]
            break

    pt.run_plots_task(settings, loop_id, parent, pool)  # F1 against labels bought, calibration: MLflow `plots/`
    summary = pt.finish_task(settings, loop_id, parent, pool, history, stopped_because)
    return summary
