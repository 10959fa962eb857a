"""Scoring on a Dask cluster (`uncertainty.dask_address`): the shards go to the cluster's workers through
prefect-dask's task runner, one `score-shard` task run each, and come back to this flow's process, the only
one that writes DuckDB. Without an address the loop scores in its own process (the `score` task)."""

from __future__ import annotations

from prefect import flow

from actprm.config import Settings
from actprm.errors import ActPRMError
from flows import prefect_tasks as pt
from tasks.score import ScoreSummary, sharded_score_stage


def dask_runner(address: str):
    """'local:N' -> a LocalCluster of N single-threaded worker processes; anything else: a scheduler address."""
    from prefect_dask import DaskTaskRunner

    if address.startswith("local:"):
        try:
            n = int(address.split(":", 1)[1])
        except ValueError:
            n = 0
        if n < 1:
            raise ActPRMError(f"uncertainty.dask_address {address!r}: give local:N with N >= 1 worker processes")
        return DaskTaskRunner(cluster_kwargs={"n_workers": n, "threads_per_worker": 1, "processes": True,
                                              "dashboard_address": None})
    return DaskTaskRunner(address=address)


@flow(name="score-on-dask", log_prints=True)
def score_on_dask(settings: Settings, pool: str, model_dir: str, model_version: str, run_id: str | None = None,
                  split: str | None = None) -> ScoreSummary:
    return sharded_score_stage(settings, pool, model_dir, model_version, pt.score_shard_task.submit, run_id, split)


def score(settings: Settings, pool: str, model_dir: str, model_version: str, run_id: str | None = None,
          split: str | None = None) -> ScoreSummary:
    """The score stage, in process or on the configured Dask cluster."""
    address = settings.uncertainty.dask_address
    if not address:
        return pt.score_task(settings, pool, model_dir, model_version, run_id, split=split)
    return score_on_dask.with_options(task_runner=dask_runner(address))(
        settings, pool, str(model_dir), str(model_version), run_id, split)
