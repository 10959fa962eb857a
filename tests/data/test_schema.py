"""The DuckDB file across versions of the schema (`actprm.store.MIGRATIONS`)."""

from __future__ import annotations

from actprm.store import Store


def test_a_duckdb_file_made_before_rounds_recorded_their_stop_reason_is_upgraded_on_open(tmp_path):
    """Users keep their DuckDB file across upgrades: a version-1 file (no `rounds.stopped_because`) opens, gains
    the column and keeps its rounds."""
    import duckdb

    from actprm.store import SCHEMA_VERSION

    path = tmp_path / "old.duckdb"
    with Store(path) as store:
        store.sql("ALTER TABLE rounds DROP COLUMN stopped_because")
        store.sql("INSERT INTO rounds (run_id, round, pool, f1, model_version) VALUES ('r', 1, 'p', 0.4, '1')")
        store.sql("UPDATE meta SET value = '1' WHERE key = 'schema_version'")
    with Store(path, read_only=True) as store:  # a reader cannot upgrade it, and still reads its rounds
        assert [(r["round"], r["stopped_because"]) for r in store.rounds("r")] == [(1, None)]
    with Store(path) as store:
        store.record_round("r", 2, "p", labels_bought=5, train_trajectories=5, f1=0.5, model_version="2",
                           promoted=True, mlflow_run_id="m", stopped_because="plateau")
        assert [(r["round"], r["stopped_because"]) for r in store.rounds("r")] == [(2, "plateau"), (1, None)]
    con = duckdb.connect(str(path), read_only=True)
    assert con.execute("SELECT value FROM meta WHERE key = 'schema_version'").fetchone()[0] == str(SCHEMA_VERSION)
    con.close()
