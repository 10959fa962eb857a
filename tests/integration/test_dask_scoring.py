"""Scale-out of scoring: shards scored on a local Dask cluster of 2 worker processes, through prefect-dask's
DaskTaskRunner, give the very scores the in-process scorer (`tasks.score.score_pool`) writes, and DuckDB is
written only by the flow's own process (DuckDB allows one writer process per file).

The shard task here wraps the production `score_trajectories`; see the report to the lead for moving it
into tasks/score.py.
"""

from __future__ import annotations

import os
import sys

import cloudpickle
import pyarrow as pa
import pytest
from prefect import flow, task

from actprm.store import Store
from actprm.synth import write_pool
from models import EnsemblePRM, StepBatcher, build_prm
from tasks.ingest import ingest
from tasks.score import SCORE_SCHEMA, score_pool, score_trajectories

pytestmark = [pytest.mark.integration, pytest.mark.slow, pytest.mark.timeout(600)]

# Dask worker processes cannot import a test module by name: ship this module's functions by value.
cloudpickle.register_pickle_by_value(sys.modules[__name__])


@task(name="score-shard")
def score_shard(model_dir: str, trajectories: list[dict], model_version: str, max_length: int = 512) -> dict:
    """Score one shard in a Dask worker; returns the rows and the pid that computed them."""
    model, tokenizer = EnsemblePRM.from_pretrained(model_dir, with_tokenizer=True)
    rows, _, _ = score_trajectories(model, StepBatcher(tokenizer, max_length=max_length), trajectories,
                                    model_version, batch_size=8)
    return {"rows": rows, "pid": os.getpid()}


def sharded_scoring(duckdb_path: str, pool: str, model_dir: str, model_version: str, shard_size: int) -> dict:
    """Read shards in this process, score them on the task runner's workers, write each shard back here."""
    with Store(duckdb_path) as store:
        todo = store.unscored_ids(pool, model_version)
        shards = [store.trajectories(todo[lo: lo + shard_size]) for lo in range(0, len(todo), shard_size)]
    futures = [score_shard.submit(model_dir, shard, model_version) for shard in shards]
    pids = set()
    with Store(duckdb_path) as store:
        for future in futures:
            result = future.result()
            pids.add(result["pid"])
            store.write_score_shard(pool, model_version, pa.Table.from_pylist(result["rows"], schema=SCORE_SCHEMA))
    return {"shards": len(shards), "worker_pids": sorted(pids), "flow_pid": os.getpid()}


def test_dask_sharded_scoring_matches_in_process_scoring(prefect_harness, tmp_path):
    from prefect_dask import DaskTaskRunner

    db = str(tmp_path / "actprm.duckdb")
    ingest(db, [write_pool(tmp_path / "pool.jsonl", n=48, seed=3)["path"]], "dask-pool", emit=False)
    model, tokenizer = build_prm("tiny", num_heads=4, seed=0)
    model_dir = str(model.save_pretrained(tmp_path / "model", tokenizer=tokenizer))

    with Store(db) as store:
        score_pool(store, "dask-pool", model, tokenizer, "in-process", batch_size=8, shard_size=16, progress=False)

    runner = DaskTaskRunner(cluster_kwargs={"n_workers": 2, "threads_per_worker": 1, "processes": True,
                                            "dashboard_address": None})
    summary = flow(name="score-sharded", task_runner=runner)(sharded_scoring)(db, "dask-pool", model_dir, "dask", 16)

    assert summary["shards"] == 3
    # The shards were scored in other processes than the one that writes DuckDB.
    assert summary["flow_pid"] not in summary["worker_pids"]
    with Store(db) as store:
        reference = {r["trajectory_id"]: r for r in store.scores_for("dask-pool", "in-process")}
        sharded = {r["trajectory_id"]: r for r in store.scores_for("dask-pool", "dask")}
        assert len(store.score_shards("dask-pool", "dask")) == 3
    assert set(sharded) == set(reference) and len(reference) == 48
    for tid, ref in reference.items():
        got = sharded[tid]
        assert got["uncertain"] == ref["uncertain"]
        assert got["predicted_first_error"] == ref["predicted_first_error"]
        assert got["mu"] == pytest.approx(ref["mu"], abs=1e-5)
        assert got["sigma"] == pytest.approx(ref["sigma"], abs=1e-5)
