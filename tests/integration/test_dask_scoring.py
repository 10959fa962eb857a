"""Scale-out of scoring through the production flow: `actprm score` (flows.stages.score_flow) with
`uncertainty.dask_address=local:2` scores the pool's shards on a real 2-worker Dask LocalCluster through
prefect-dask, gives the very scores in-process scoring writes, and DuckDB is written only by the flow's process
(DuckDB allows one writer process per file)."""

from __future__ import annotations

import asyncio
import shutil

import pytest

from actprm.store import Store
from actprm.synth import write_pool
from models import build_prm
from tasks.ingest import ingest

pytestmark = [pytest.mark.integration, pytest.mark.slow, pytest.mark.timeout(600)]


def test_score_flow_on_a_2_worker_dask_cluster_matches_in_process_scoring(prefect_harness, tmp_path, monkeypatch):
    from flows.stages import score_flow

    home = tmp_path / "home"
    monkeypatch.setenv("ACTPRM_HOME", str(home))
    monkeypatch.delenv("ACTPRM_CONFIG", raising=False)
    monkeypatch.delenv("MLFLOW_TRACKING_URI", raising=False)
    db = home / "actprm.duckdb"
    home.mkdir()
    ingest(str(db), [write_pool(tmp_path / "pool.jsonl", n=48, seed=3)["path"]], "dask-pool", emit=False)
    model, tokenizer = build_prm("tiny", num_heads=4, seed=0)
    model_dir = str(model.save_pretrained(tmp_path / "model", tokenizer=tokenizer))

    # The same model in two folders (a folder is its own model version): scored in the flow's process, then
    # on the cluster.
    local = shutil.copytree(model_dir, tmp_path / "model-local")
    common = {"model": {"preset": "tiny"}, "uncertainty": {"shard_size": 16, "batch_size": 8}}
    in_process = score_flow("dask-pool", model=str(local), config=common)
    on_dask = score_flow("dask-pool", model=model_dir,
                         config={**common, "uncertainty": {**common["uncertainty"], "dask_address": "local:2"}})

    assert on_dask["scored"] == in_process["scored"] == 48 and on_dask["shards"] == 3
    # Each shard was a task run of the Dask task runner (in-process scoring makes none).
    shard_runs = asyncio.run(_task_runs("score-shard"))
    assert len(shard_runs) == 3 and all(r.state.is_completed() for r in shard_runs)
    assert on_dask["uncertain"] == in_process["uncertain"]
    with Store(db) as store:
        versions = [v for (v,) in store.sql("SELECT DISTINCT model_version FROM scores").fetchall()]
        assert len(versions) == 2, versions
        reference = {r["trajectory_id"]: r for r in store.scores_for("dask-pool", in_process["model_version"])}
        sharded = {r["trajectory_id"]: r for r in store.scores_for("dask-pool", on_dask["model_version"])}
    assert set(sharded) == set(reference) and len(reference) == 48
    for tid, ref in reference.items():
        got = sharded[tid]
        assert got["uncertain"] == ref["uncertain"]
        assert got["predicted_first_error"] == ref["predicted_first_error"]
        assert got["mu"] == pytest.approx(ref["mu"], abs=1e-5)
        assert got["sigma"] == pytest.approx(ref["sigma"], abs=1e-5)


async def _task_runs(name: str) -> list:
    from prefect.client.orchestration import get_client
    from prefect.client.schemas.filters import TaskRunFilter, TaskRunFilterName
    from prefect.client.schemas.sorting import TaskRunSort

    async with get_client() as client:
        return await client.read_task_runs(task_run_filter=TaskRunFilter(name=TaskRunFilterName(like_=name)),
                                           sort=TaskRunSort.EXPECTED_START_TIME_DESC, limit=100)
