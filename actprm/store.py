"""The one owner of the DuckDB schema and its queries.

DuckDB allows one read-write *process* per file, so connections here are short-lived: a stage
opens the store, does its work, and closes it, and a second process waits for the lock (bounded)
and then fails with a clear message instead of crashing or corrupting the file.

Other modules never write SQL strings of their own; they call the methods below.
"""

from __future__ import annotations

import contextlib
import hashlib
import json
import time
from collections.abc import Iterator
from pathlib import Path

import duckdb

SCHEMA_VERSION = 1

# Trajectories are keyed by a content hash of (question, steps) so the same trajectory is stored
# once across pools. The SQL expression below and `trajectory_id` in Python must agree.
TRAJECTORY_ID_SQL = "substr(sha256(to_json({'q': {q}, 's': {s}})::VARCHAR), 1, 32)"

SCHEMA = """
CREATE TABLE IF NOT EXISTS meta (key VARCHAR PRIMARY KEY, value VARCHAR);

CREATE TABLE IF NOT EXISTS pools (
    name VARCHAR PRIMARY KEY,
    source VARCHAR,            -- paths/globs as given
    format VARCHAR,
    content_hash VARCHAR,      -- hash of the input bytes (sizes + mtimes for very large inputs)
    lines_read BIGINT DEFAULT 0,
    accepted BIGINT DEFAULT 0,
    quarantined BIGINT DEFAULT 0,
    duplicates BIGINT DEFAULT 0,
    labeled_fraction DOUBLE DEFAULT 0,
    status VARCHAR,            -- ingesting | registered | rejected
    report VARCHAR,            -- path to Data Docs index.html
    created_at TIMESTAMP DEFAULT current_timestamp,
    updated_at TIMESTAMP DEFAULT current_timestamp
);

CREATE TABLE IF NOT EXISTS trajectories (
    id VARCHAR PRIMARY KEY,    -- content hash of (question, steps)
    question VARCHAR NOT NULL,
    steps VARCHAR[] NOT NULL,
    num_steps INTEGER NOT NULL
);

CREATE TABLE IF NOT EXISTS pool_members (
    pool VARCHAR NOT NULL,
    trajectory_id VARCHAR NOT NULL,
    line_no BIGINT,            -- first line of the pool's input where it appeared
    source_id VARCHAR,         -- the source's own id (e.g. PRMBench idx + ':original'/':modified')
    split VARCHAR DEFAULT 'train',  -- train | eval (held out for evaluation)
    PRIMARY KEY (pool, trajectory_id)
);

-- Gold labels from the source (ProcessBench label, PRMBench error_steps, ...), kept apart from
-- labels bought from a judge. first_error: 0-based index of the first wrong step, -1 = all correct.
CREATE TABLE IF NOT EXISTS gold_labels (
    trajectory_id VARCHAR PRIMARY KEY,
    first_error INTEGER NOT NULL,
    step_labels TINYINT[],     -- 1 correct / 0 wrong per step where the source has them
    error_kind VARCHAR,        -- e.g. PRMBench classification or synth error kind
    source_format VARCHAR
);

CREATE TABLE IF NOT EXISTS quarantine (
    pool VARCHAR NOT NULL,
    source VARCHAR,            -- file the line came from
    line_no BIGINT,
    raw VARCHAR,               -- safely truncated raw text
    reason VARCHAR NOT NULL,
    created_at TIMESTAMP DEFAULT current_timestamp
);

-- Per-(trajectory, model version) scores. mu/sigma are over the ensemble heads, per step;
-- steps cut by max_length have no entry (len(mu) = scored_steps).
CREATE TABLE IF NOT EXISTS scores (
    trajectory_id VARCHAR NOT NULL,
    model_version VARCHAR NOT NULL,
    mu FLOAT[] NOT NULL,
    sigma FLOAT[] NOT NULL,
    scored_steps INTEGER NOT NULL,
    truncated_steps INTEGER NOT NULL,
    predicted_first_error INTEGER NOT NULL,
    uncertain BOOLEAN NOT NULL,
    acquisition DOUBLE NOT NULL,   -- ranking score of the configured strategy (higher = ask first)
    scored_at TIMESTAMP DEFAULT current_timestamp,
    PRIMARY KEY (trajectory_id, model_version)
);

CREATE TABLE IF NOT EXISTS score_shards (
    pool VARCHAR NOT NULL,
    model_version VARCHAR NOT NULL,
    shard INTEGER NOT NULL,
    scored INTEGER NOT NULL,
    finished_at TIMESTAMP DEFAULT current_timestamp,
    PRIMARY KEY (pool, model_version, shard)
);

-- Labels bought from a judge. The key is the cache key: a rerun never pays twice for the same
-- (trajectory, judge model, prompt version).
CREATE TABLE IF NOT EXISTS judge_labels (
    trajectory_id VARCHAR NOT NULL,
    judge_model VARCHAR NOT NULL,
    prompt_version VARCHAR NOT NULL,
    pool VARCHAR,
    status VARCHAR NOT NULL,       -- labeled | failed
    first_error INTEGER,           -- -1 = all correct; NULL when failed
    reason VARCHAR,                -- failure reason
    raw_answer VARCHAR,            -- truncated judge output, for audit
    prompt_tokens BIGINT DEFAULT 0,
    completion_tokens BIGINT DEFAULT 0,
    cost DOUBLE DEFAULT 0,
    attempts INTEGER DEFAULT 1,
    latency_s DOUBLE,
    request_id VARCHAR,
    created_at TIMESTAMP DEFAULT current_timestamp,
    PRIMARY KEY (trajectory_id, judge_model, prompt_version)
);

-- The budget ledger: one row per judge request. A request is `reserved` before it is sent (so
-- concurrent requests can never overspend) and `settled` with actual usage when its answer is
-- committed (in the same transaction as its label). A reservation left by a crash stays counted
-- as spent until reconciled: we may have been billed for it.
CREATE TABLE IF NOT EXISTS budget_ledger (
    request_id VARCHAR PRIMARY KEY,
    pool VARCHAR,
    trajectory_id VARCHAR,
    state VARCHAR NOT NULL,        -- reserved | settled | released | orphaned
    labels INTEGER DEFAULT 0,      -- 1 when the request bought a label
    tokens BIGINT DEFAULT 0,       -- reserved, then actual
    cost DOUBLE DEFAULT 0,         -- reserved, then actual
    created_at TIMESTAMP DEFAULT current_timestamp,
    settled_at TIMESTAMP
);

-- One row per active-learning round, for `actprm status` and resumable flows.
CREATE TABLE IF NOT EXISTS rounds (
    run_id VARCHAR NOT NULL,       -- the flow run (or CLI invocation) id
    round INTEGER NOT NULL,
    pool VARCHAR NOT NULL,
    labels_bought INTEGER,
    train_trajectories INTEGER,
    f1 DOUBLE,
    model_version VARCHAR,
    promoted BOOLEAN,
    mlflow_run_id VARCHAR,
    finished_at TIMESTAMP DEFAULT current_timestamp,
    PRIMARY KEY (run_id, round)
);
"""


class StoreLockedError(RuntimeError):
    """Another process holds the DuckDB file for writing."""


def trajectory_id(question: str, steps: list[str]) -> str:
    """Python twin of TRAJECTORY_ID_SQL (DuckDB's to_json has no spaces after separators)."""
    payload = json.dumps({"q": question, "s": list(steps)}, ensure_ascii=False, separators=(",", ":"))
    return hashlib.sha256(payload.encode()).hexdigest()[:32]


class Store:
    """A short-lived handle on the project's DuckDB file. Use as a context manager."""

    def __init__(self, path: str | Path, *, read_only: bool = False, lock_timeout_s: float = 60.0):
        self.path = Path(path)
        self.read_only = read_only
        self.lock_timeout_s = lock_timeout_s
        self.con: duckdb.DuckDBPyConnection | None = None

    # -- lifecycle -------------------------------------------------------------------------
    def open(self) -> Store:
        self.path.parent.mkdir(parents=True, exist_ok=True)
        deadline = time.monotonic() + self.lock_timeout_s
        delay = 0.05
        while True:
            try:
                if self.read_only and not self.path.exists():
                    self.con = duckdb.connect(str(self.path))  # create, then serve reads
                else:
                    self.con = duckdb.connect(str(self.path), read_only=self.read_only)
                break
            except duckdb.IOException as exc:
                if "lock" not in str(exc).lower():
                    raise
                if time.monotonic() >= deadline:
                    raise StoreLockedError(
                        f"DuckDB file {self.path} is in use by another process (waited {self.lock_timeout_s:.0f}s); "
                        "only one writer may hold it: wait for the other run or use another ACTPRM_HOME"
                    ) from None
                time.sleep(delay)
                delay = min(delay * 2, 1.0)
        if not self.read_only:
            self.con.execute(SCHEMA)
            self.con.execute(
                "INSERT OR REPLACE INTO meta VALUES ('schema_version', ?)", [str(SCHEMA_VERSION)]
            )
        return self

    def close(self) -> None:
        if self.con is not None:
            self.con.close()
            self.con = None

    def __enter__(self) -> Store:
        return self.open()

    def __exit__(self, *exc) -> None:
        self.close()

    @contextlib.contextmanager
    def transaction(self) -> Iterator[duckdb.DuckDBPyConnection]:
        assert self.con is not None
        self.con.execute("BEGIN TRANSACTION")
        try:
            yield self.con
        except BaseException:
            self.con.execute("ROLLBACK")
            raise
        else:
            self.con.execute("COMMIT")

    def sql(self, query: str, params: list | None = None):
        """Run a query owned by this module; returns a DuckDB relation/result."""
        assert self.con is not None, "store is not open"
        return self.con.execute(query, params or [])

    # -- pools -----------------------------------------------------------------------------
    def pools(self) -> list[dict]:
        rows = self.sql(
            "SELECT name, format, status, lines_read, accepted, quarantined, duplicates, labeled_fraction, "
            "report, created_at::VARCHAR FROM pools ORDER BY created_at"
        ).fetchall()
        cols = ["name", "format", "status", "lines_read", "accepted", "quarantined", "duplicates",
                "labeled_fraction", "report", "created_at"]
        out = [dict(zip(cols, r)) for r in rows]
        for p in out:
            p["trajectories"] = self.pool_size(p["name"])
        return out

    def pool_exists(self, pool: str) -> bool:
        return bool(self.sql("SELECT count(*) FROM pools WHERE name = ?", [pool]).fetchone()[0])

    def pool_size(self, pool: str, split: str | None = None) -> int:
        q = "SELECT count(*) FROM pool_members WHERE pool = ?"
        params: list = [pool]
        if split:
            q += " AND split = ?"
            params.append(split)
        return int(self.sql(q, params).fetchone()[0])

    def require_pool(self, pool: str) -> None:
        if not self.pool_exists(pool):
            known = ", ".join(p["name"] for p in self.pools()) or "none"
            raise KeyError(f"unknown pool {pool!r} (known pools: {known}); ingest it first with `actprm ingest`")

    # -- reading trajectories ---------------------------------------------------------------
    def trajectories(self, ids: list[str]) -> list[dict]:
        """Trajectories by id, in the order asked, with gold labels when present."""
        if not ids:
            return []
        rows = self.sql(
            "SELECT t.id, t.question, t.steps, g.first_error, g.error_kind "
            "FROM trajectories t LEFT JOIN gold_labels g ON g.trajectory_id = t.id "
            "WHERE t.id IN (SELECT unnest(?::VARCHAR[]))",
            [ids],
        ).fetchall()
        by_id = {r[0]: {"id": r[0], "question": r[1], "steps": list(r[2]), "gold_first_error": r[3],
                        "error_kind": r[4]} for r in rows}
        return [by_id[i] for i in ids if i in by_id]

    def pool_trajectory_ids(self, pool: str, split: str | None = None) -> list[str]:
        q = "SELECT trajectory_id FROM pool_members WHERE pool = ?"
        params: list = [pool]
        if split:
            q += " AND split = ?"
            params.append(split)
        return [r[0] for r in self.sql(q + " ORDER BY line_no, trajectory_id", params).fetchall()]

    # -- sections owned by each stage follow; keep each stage's queries together -----------------
