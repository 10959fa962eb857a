"""The data contract rejects broken pools; a registered pool emits its Prefect event; the flow wires it all."""

from __future__ import annotations

import pytest

from actprm.errors import ActPRMError
from actprm.store import Store
from tasks.ingest import IngestSummary, emit_pool_registered, ingest
from tests.data.conftest import actprm_record, write_lines


def test_all_bad_input_rejects_the_pool(tmp_path, db):
    path = write_lines(tmp_path / "bad.jsonl", ["nope", "{}", ""])
    with pytest.raises(ActPRMError, match="rejected by its data contract") as err:
        ingest(db, [str(path)], "empty", format="actprm", emit=False)
    s = err.value.summary
    assert (s.status, s.lines_read, s.quarantined) == ("rejected", 3, 3)
    with Store(db, read_only=True) as store:
        assert store.pool_status("empty") == "rejected"


def test_tightened_limits_reject_rows_already_in_the_pool(tmp_path, db):
    """A pool ingested under looser limits breaks the contract once the limits are tightened."""
    ingest(db, [str(write_lines(tmp_path / "a.jsonl", [actprm_record(1, n_steps=6)]))], "p", emit=False)
    more = write_lines(tmp_path / "b.jsonl", [actprm_record(2, n_steps=2)])
    with pytest.raises(ActPRMError, match="num_steps"):
        ingest(db, [str(more)], "p", emit=False, max_steps=4)
    with Store(db, read_only=True) as store:
        assert store.pool_status("p") == "rejected"


def test_a_valid_pool_validated_in_many_shards_is_registered_and_an_empty_step_is_caught(tmp_path, db):
    """Rows go to shards by id hash, so a shard of a small pool may be empty: that is no reason to reject a valid
    pool. A row with an empty step (stored by another path than ingest, which quarantines it) breaks the contract."""
    path = write_lines(tmp_path / "a.jsonl", [actprm_record(i) for i in range(4)])
    s = ingest(db, [str(path)], "p", emit=False, validate_shard_rows=1)
    assert s.status == "registered" and not s.failures
    with Store(db) as store:
        store.sql("UPDATE trajectories SET steps = list_append(steps, '') WHERE id = (SELECT min(id) FROM trajectories)")
        store.sql("UPDATE trajectories SET num_steps = len(steps)")
    with pytest.raises(ActPRMError, match="min_step_chars"):
        ingest(db, [str(path)], "p", emit=False)


def test_drift_against_earlier_pools_is_a_warning(tmp_path, db):
    ingest(db, [str(write_lines(tmp_path / "a.jsonl", [actprm_record(i, n_steps=3, first_error=i % 2 - 1)
                                                       for i in range(10)]))], "base", emit=False)
    s = ingest(db, [str(write_lines(tmp_path / "b.jsonl", [actprm_record(i, n_steps=12, first_error=i % 2 - 1)
                                                           for i in range(10, 20)]))], "long", emit=False)
    assert s.status == "registered"
    assert any("num_steps" in w for w in s.warnings)


def test_registered_event_and_flow(tmp_path, monkeypatch):
    from prefect.testing.utilities import prefect_test_harness

    from flows.ingest_pool import ingest_pool

    monkeypatch.delenv("ACTPRM_CONFIG", raising=False)
    home = tmp_path / "home"
    path = write_lines(tmp_path / "in.jsonl", [actprm_record(i, first_error=i % 3 - 1) for i in range(6)] + ["x"])
    with prefect_test_harness(server_startup_timeout=120):
        event = emit_pool_registered(IngestSummary(pool="demo", status="registered", pool_trajectories=6,
                                                   labeled_fraction=1.0))
        assert event is not None and event.event == "actprm.pool.registered"
        assert event.resource.id == "actprm.pool.demo"
        assert event.payload["pool"] == "demo" and event.payload["rows"] == 6

        out = ingest_pool([str(path)], "flowpool", home=str(home))
        assert (out["status"], out["accepted"], out["quarantined"]) == ("registered", 6, 1)
        assert out["report"].endswith("index.html") and (home / "reports" / "flowpool").is_dir()
        # the flow (run under a Prefect server) reports the same phases as the server-less command
        from tasks.ingest import PHASES

        assert set(out["seconds"]) == set(PHASES) and out["validated_rows"] == out["pool_trajectories"] == 6

        with pytest.raises(ActPRMError, match="rejected"):
            ingest_pool([str(write_lines(tmp_path / "bad.jsonl", ["{}"]))], "badpool", format="actprm", home=str(home))
    with Store(home / "actprm.duckdb", read_only=True) as store:
        assert store.pool_status("flowpool") == "registered" and store.pool_status("badpool") == "rejected"
        assert store.sql("SELECT count(*) FROM duckdb_tables() WHERE table_name LIKE 'ingest_stage_%'").fetchone()[0] == 0


def test_mlflow_run_gets_counts_sample_and_data_docs(tmp_path, db):
    import mlflow

    # no mlflow.set_experiment: it is process-global and would leak into later tests' runs
    previous_uri = mlflow.get_tracking_uri()
    mlflow.set_tracking_uri(f"sqlite:///{tmp_path / 'mlflow.db'}")
    try:
        experiment = mlflow.MlflowClient().create_experiment("ingest-test")
        path = write_lines(tmp_path / "in.jsonl", [actprm_record(i) for i in range(4)] + ["broken"])
        with mlflow.start_run(experiment_id=experiment) as run:
            s = ingest(db, [str(path)], "logged", emit=False, reports_dir=tmp_path / "reports")
        _check_logged(s, run)
    finally:
        mlflow.set_tracking_uri(previous_uri)


def _check_logged(s, run):
    import mlflow

    assert s.report and s.report.endswith("index.html")
    client = mlflow.MlflowClient()
    metrics = client.get_run(run.info.run_id).data.metrics
    assert metrics["ingest.accepted"] == 4 and metrics["ingest.quarantined"] == 1
    logged = {a.path for a in client.list_artifacts(run.info.run_id, "ingest/logged")}
    assert {"ingest/logged/summary.json", "ingest/logged/quarantine_sample.json", "ingest/logged/data_docs"} <= logged


def test_a_first_error_out_of_range_is_caught_beside_unlabeled_rows(tmp_path, db):
    """first_error is null for the unlabeled trajectories of a pool (a column with nulls, checked vectorised as
    floats): the range check still sees every labeled row."""
    from tasks.ingest import IngestLimits
    from tasks.validate import validate_pool

    ingest(db, [str(write_lines(tmp_path / "a.jsonl", [actprm_record(i, first_error=1) for i in range(3)]))], "p",
           emit=False)
    ingest(db, [str(write_lines(tmp_path / "u.jsonl", [{"question": f"q{i}", "steps": ["a", "b"]} for i in range(3)]))],
           "p", format="unlabeled", emit=False)
    with Store(db) as store:
        assert validate_pool(store, "p", limits=IngestLimits()).failures == []
        store.sql("UPDATE gold_labels SET first_error = 500 WHERE trajectory_id = (SELECT min(trajectory_id) FROM gold_labels)")
        failures = validate_pool(store, "p", limits=IngestLimits()).failures
    assert any(f.startswith("shard 0: expect_column_values_to_be_between(column=first_error") for f in failures), failures
