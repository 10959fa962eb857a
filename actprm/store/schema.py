"""The DuckDB schema: every table, the migrations of files made by older versions, and the trajectory id."""

from __future__ import annotations

import hashlib
import json

SCHEMA_VERSION = 2

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

-- trajectories, pool_members and gold_labels have NO primary key, on purpose: DuckDB maintains an ART
-- index per key on every insert and commit, which made ingest of a 1M-line pool 4x slower than reading
-- the file (bench/bench_ingest.py). Their keys (id; (pool, trajectory_id); trajectory_id) are still
-- unique: only ingest (`Store.insert_stage`) and `actprm.testing.pools` write these tables, both anti-join
-- against what is stored, and DuckDB's single-writer file lock serializes them. Lookups by id use hash
-- joins and zonemaps, which need no index. Do not use INSERT OR REPLACE / ON CONFLICT on them.
CREATE TABLE IF NOT EXISTS trajectories (
    id VARCHAR NOT NULL,       -- content hash of (question, steps); unique (see above)
    question VARCHAR NOT NULL,
    steps VARCHAR[] NOT NULL,
    num_steps INTEGER NOT NULL
);

CREATE TABLE IF NOT EXISTS pool_members (
    pool VARCHAR NOT NULL,
    trajectory_id VARCHAR NOT NULL,
    line_no BIGINT,            -- first line of the pool's input where it appeared
    source_id VARCHAR,         -- the source's own id (e.g. PRMBench idx + ':original'/':modified')
    split VARCHAR DEFAULT 'train'   -- train | eval (held out for evaluation)
    -- (pool, trajectory_id) is unique; no PRIMARY KEY (see trajectories)
);

-- Gold labels from the source (ProcessBench label, PRMBench error_steps, ...), kept apart from
-- labels bought from a judge. first_error: 0-based index of the first wrong step, -1 = all correct.
CREATE TABLE IF NOT EXISTS gold_labels (
    trajectory_id VARCHAR NOT NULL,  -- unique; no PRIMARY KEY (see trajectories)
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
-- committed (in the same transaction as its label). A request sent but never answered (timeout)
-- is `maybe_billed`, and a reservation left by a crash `orphaned`: both stay counted as spent at
-- their worst case, since we may have been billed for them.
CREATE TABLE IF NOT EXISTS budget_ledger (
    request_id VARCHAR PRIMARY KEY,
    pool VARCHAR,
    trajectory_id VARCHAR,
    state VARCHAR NOT NULL,        -- reserved | settled | released | maybe_billed | orphaned
    labels INTEGER DEFAULT 0,      -- 1 when the request bought a label
    tokens BIGINT DEFAULT 0,       -- reserved, then actual
    cost DOUBLE DEFAULT 0,         -- reserved, then actual
    created_at TIMESTAMP DEFAULT current_timestamp,
    settled_at TIMESTAMP
);

-- What a round of a loop selected for the judge, best first: a rerun of the loop labels and trains on the same
-- trajectories instead of selecting anew (the killed attempt may have bought them already).
CREATE TABLE IF NOT EXISTS round_selections (
    run_id VARCHAR NOT NULL,       -- the loop's id (loops.loop_id): kept across reruns and retries
    round INTEGER NOT NULL,
    rank INTEGER NOT NULL,
    trajectory_id VARCHAR NOT NULL,
    PRIMARY KEY (run_id, round, rank)
);

-- What an ingest stored, written in its insert's transaction and cleared when the pool is registered or rejected.
-- A rerun of the same input after a kill in between reports the lines the dead run stored as accepted (they are
-- this input's new lines), not as duplicates, and its event counts the trajectories it added.
CREATE TABLE IF NOT EXISTS ingest_receipts (
    pool VARCHAR NOT NULL,
    content_hash VARCHAR NOT NULL,  -- the input's pools.content_hash and its format (`tasks.ingest.receipt_key`)
    accepted BIGINT NOT NULL,
    trajectories_added BIGINT NOT NULL,
    PRIMARY KEY (pool, content_hash)
);

-- One row per active-learning loop: what a rerun of `actprm run` (or of the flow, whoever starts it) with the same
-- pool and settings continues instead of opening a new loop that would buy its rounds again (docs/OPERATIONS.md).
CREATE TABLE IF NOT EXISTS loops (
    loop_id VARCHAR PRIMARY KEY,   -- keys this loop's rounds, round_selections, checkpoints and MLflow runs
    pool VARCHAR NOT NULL,
    loop_key VARCHAR NOT NULL,     -- hash of the pool and the settings that shape the loop (tasks.pipeline.loop_key)
    status VARCHAR NOT NULL,       -- open | finished | abandoned (--fresh)
    shaping VARCHAR,               -- the settings hashed into loop_key, as JSON (for a reader)
    start_model_dir VARCHAR,       -- the model round 1 starts from, fixed when the loop opens: a resumed loop
    start_model_version VARCHAR,   --   must not start from a champion its own killed round 1 registered
    owner VARCHAR,                 -- host:pid of the process running it last
    created_at TIMESTAMP DEFAULT current_timestamp,
    updated_at TIMESTAMP DEFAULT current_timestamp
);

-- One row per active-learning round, for `actprm status` and resumable flows.
CREATE TABLE IF NOT EXISTS rounds (
    run_id VARCHAR NOT NULL,       -- the loop's id (loops.loop_id); older files: the flow's parent MLflow run
    round INTEGER NOT NULL,
    pool VARCHAR NOT NULL,
    labels_bought INTEGER,
    train_trajectories INTEGER,
    f1 DOUBLE,
    model_version VARCHAR,
    promoted BOOLEAN,
    mlflow_run_id VARCHAR,
    finished_at TIMESTAMP DEFAULT current_timestamp,
    stopped_because VARCHAR,       -- why the loop stopped after this round (budget, plateau, ...); NULL: it went on
    PRIMARY KEY (run_id, round)
);
"""

# What a file made by an older version lacks, by the version that added it (CREATE TABLE IF NOT EXISTS leaves an
# existing table as it was).
MIGRATIONS = {
    2: "ALTER TABLE rounds ADD COLUMN IF NOT EXISTS stopped_because VARCHAR",
}


def trajectory_id(question: str, steps: list[str]) -> str:
    """Python twin of TRAJECTORY_ID_SQL (DuckDB's to_json has no spaces after separators)."""
    payload = json.dumps({"q": question, "s": list(steps)}, ensure_ascii=False, separators=(",", ":"))
    return hashlib.sha256(payload.encode()).hexdigest()[:32]
