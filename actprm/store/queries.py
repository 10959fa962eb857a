"""`Store`: a short-lived handle on the project's DuckDB file, with the queries of every stage.

DuckDB allows one read-write *process* per file, so connections here are short-lived: a stage
opens the store, does its work, and closes it, and a second process waits for the lock (bounded)
and then fails with a clear message instead of crashing or corrupting the file.

The methods are grouped by the stage that owns them (pools, training, labels & budget ledger, ingest,
selection & rounds, scores).
"""

from __future__ import annotations

import contextlib
import json
import math
import time
import uuid
from collections.abc import Iterator
from pathlib import Path

import duckdb

from actprm.errors import ActPRMError, UnknownPool
from actprm.names import check_pool_name
from actprm.store.parsing import quote_ident, quote_literal, reader_sql, staging_select
from actprm.store.schema import MIGRATIONS, SCHEMA, SCHEMA_VERSION, TRAJECTORY_ID_SQL


class StoreLockedError(RuntimeError):
    """Another process holds the DuckDB file for writing."""


def _same_family(column: str, param: str) -> str:
    """SQL: the prompt version in `column` is of the same family as `param` (the name before '-vN')."""
    return f"regexp_replace({column}, '-v[0-9]+$', '') = regexp_replace({param}, '-v[0-9]+$', '')"


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
            row = self.con.execute("SELECT value FROM meta WHERE key = 'schema_version'").fetchone()
            for version in range(int(row[0]) + 1 if row else SCHEMA_VERSION + 1, SCHEMA_VERSION + 1):
                self.con.execute(MIGRATIONS[version])
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
        """A pool that may be scored, labeled, trained or studied: ingested to the end and passed by its data
        contract. An ingest that was killed leaves its pool `ingesting`, possibly with part of its lines."""
        check_pool_name(pool)  # a name from the UI or an event payload, before any stage puts it in a path
        status = self.pool_status(pool)
        if status is None:
            known = ", ".join(p["name"] for p in self.pools()) or "none"
            raise UnknownPool(f"unknown pool {pool!r} (known pools: {known}); ingest it first with `actprm ingest`")
        if status == "ingesting":
            raise ActPRMError(f"pool {pool!r} is incomplete: its last ingest stopped before the end; run the same "
                              "`actprm ingest` again (lines already stored are not added twice)")
        if status == "rejected":
            raise ActPRMError(f"pool {pool!r} was rejected by its data contract; see its report "
                              "(`actprm status`), fix the input and ingest it again")

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

    # -- training ----------------------------------------------------------------------------
    def training_examples(self, pool: str, *, split: str | None = "train", judge_model: str | None = None,
                          prompt_version: str | None = None) -> list[dict]:
        """The pool's judge-labeled trajectories, as train_prm examples {id, question, steps, first_error}.

        A label belongs to the trajectory (its content hash), not to the pool that bought it, so a label
        bought through another pool counts too. When a trajectory has several labels (other judge models or
        prompt versions) the newest wins, unless `judge_model`/`prompt_version` pin one. Labels that point
        past the last step are dropped rather than guessed at. Ordered by the pool's line order.
        """
        q = (
            "SELECT t.id, t.question, t.steps, j.first_error FROM pool_members pm "
            "JOIN trajectories t ON t.id = pm.trajectory_id "
            "JOIN (SELECT trajectory_id, first_error FROM judge_labels "
            "      WHERE status = 'labeled' AND first_error IS NOT NULL"
            "        AND (? IS NULL OR judge_model = ?) AND (? IS NULL OR " + _same_family("prompt_version", "?") + ") "
            "      QUALIFY row_number() OVER (PARTITION BY trajectory_id "
            "                                 ORDER BY created_at DESC, judge_model, prompt_version) = 1"
            ") j ON j.trajectory_id = pm.trajectory_id "
            "WHERE pm.pool = ? AND (? IS NULL OR pm.split = ?) AND j.first_error BETWEEN -1 AND t.num_steps - 1 "
            "ORDER BY pm.line_no, t.id"
        )
        rows = self.sql(q, [judge_model, judge_model, prompt_version, prompt_version, pool, split, split]).fetchall()
        return [{"id": r[0], "question": r[1], "steps": list(r[2]), "first_error": int(r[3])} for r in rows]

    # -- labels & budget ledger ---------------------------------------------------------------
    # Ledger row states: reserved (sent, answer not committed) -> settled (actual usage, committed
    # with its label in one transaction) | released (surely unbilled: refused or never sent) |
    # maybe_billed (sent, no answer: kept at its worst case). Spent budget counts reserved, settled,
    # maybe_billed and orphaned rows: an orphan is a reservation left by a crashed run, and we may have
    # been billed for it.
    def ledger_orphan_stale(self) -> int:
        """Mark reservations of a crashed run as orphaned (still counted as spent); call at run start."""
        n = self.sql("SELECT count(*) FROM budget_ledger WHERE state = 'reserved'").fetchone()[0]
        if n:
            self.sql("UPDATE budget_ledger SET state = 'orphaned', settled_at = current_timestamp "
                     "WHERE state = 'reserved'")
        return int(n)

    def budget_spent(self, pool: str | None = None) -> dict:
        """Labels, tokens and cost spent (reservations at their worst case), globally or for one pool."""
        row = self.sql(
            "SELECT coalesce(sum(labels), 0), coalesce(sum(tokens), 0), coalesce(sum(cost), 0) FROM budget_ledger "
            "WHERE state IN ('reserved', 'settled', 'maybe_billed', 'orphaned') AND (?::VARCHAR IS NULL OR pool = ?)",
            [pool, pool],
        ).fetchone()
        return {"labels": int(row[0]), "tokens": int(row[1]), "cost": float(row[2])}

    def ledger_reprice_nonfinite(self, price_per_1k_tokens: float) -> int:
        """Re-price the ledger and label rows whose cost is NaN or infinite from their tokens; returns the
        number of ledger rows repaired."""
        with self.transaction() as con:
            n = con.execute("SELECT count(*) FROM budget_ledger WHERE NOT isfinite(cost)").fetchone()[0]
            con.execute("UPDATE budget_ledger SET cost = tokens / 1000.0 * ? WHERE NOT isfinite(cost)",
                        [price_per_1k_tokens])
            con.execute("UPDATE judge_labels SET cost = (coalesce(prompt_tokens, 0) + coalesce(completion_tokens, 0)) "
                        "/ 1000.0 * ? WHERE NOT isfinite(cost)", [price_per_1k_tokens])
        return int(n)

    def budget_left(self, pool: str | None, limits) -> dict:
        """For `actprm status`: spent and left under each cap of `limits` (a BudgetLimits)."""
        from actprm.judges.budget import budget_left

        return budget_left(self, pool, limits)

    _JUDGE_LABEL_COLS = {"trajectory_id": "VARCHAR", "judge_model": "VARCHAR", "prompt_version": "VARCHAR",
                         "pool": "VARCHAR", "status": "VARCHAR", "first_error": "INTEGER", "reason": "VARCHAR",
                         "raw_answer": "VARCHAR", "prompt_tokens": "BIGINT", "completion_tokens": "BIGINT",
                         "cost": "DOUBLE", "attempts": "INTEGER", "latency_s": "DOUBLE", "request_id": "VARCHAR"}

    def ledger_write(self, reserve: list[tuple] = (), settle: list[tuple] = (), labels: list[dict] = ()) -> None:
        """One transaction (group commit) of ledger and label changes:
        reserve: (request_id, pool, trajectory_id, tokens, cost) rows sent next, at their worst case;
        settle: (request_id, state, labels, tokens, cost) with state settled (actual usage), released
        (bought nothing) or maybe_billed (its worst case); labels: judge_labels rows (a request's label
        commits with its settlement).
        Multi-row statements: DuckDB's per-statement overhead (~1-3 ms) would otherwise cap throughput."""
        # The ledger never stores an amount no cap can be checked against (NaN, inf) or one that refunds.
        amounts = [a for r in reserve for a in r[3:5]] + [a for r in settle for a in r[2:5]]
        if not all(isinstance(a, (int, float)) and math.isfinite(a) and a >= 0 for a in amounts):
            raise ValueError(f"refusing a non-finite or negative ledger amount: {amounts}")
        with self.transaction() as con:
            if reserve:
                cols = list(zip(*reserve))
                con.execute("INSERT INTO budget_ledger (request_id, pool, trajectory_id, state, labels, tokens, cost) "
                            "SELECT unnest(?::VARCHAR[]), unnest(?::VARCHAR[]), unnest(?::VARCHAR[]), 'reserved', 1, "
                            "unnest(?::BIGINT[]), unnest(?::DOUBLE[])", [list(c) for c in cols])
            if settle:
                cols = list(zip(*settle))
                con.execute("UPDATE budget_ledger SET state = v.state, labels = v.labels, tokens = v.tokens, "
                            "cost = v.cost, settled_at = current_timestamp FROM (SELECT unnest(?::VARCHAR[]) AS rid, "
                            "unnest(?::VARCHAR[]) AS state, unnest(?::INTEGER[]) AS labels, unnest(?::BIGINT[]) AS tokens, "
                            "unnest(?::DOUBLE[]) AS cost) v WHERE budget_ledger.request_id = v.rid",
                            [list(c) for c in cols])
            names = list(self._JUDGE_LABEL_COLS)
            select = ", ".join(f"unnest(?::{t}[])" for t in self._JUDGE_LABEL_COLS.values())
            # A failed row is replaced by a later answer (rows flagged `replaces`); a labeled row is never
            # re-requested (the cache). Plain INSERT for the rest: it costs half of INSERT OR REPLACE.
            for verb, rows in (("INSERT OR REPLACE", [r for r in labels if r.get("replaces")]),
                               ("INSERT", [r for r in labels if not r.get("replaces")])):
                if rows:
                    con.execute(f"{verb} INTO judge_labels ({', '.join(names)}, created_at) "
                                f"SELECT {select}, current_timestamp", [[row.get(c) for row in rows] for c in names])

    def judge_label_status(self, ids: list[str], judge_model: str, prompt_version: str) -> dict[str, str]:
        """Status (labeled | failed) of the rows `ids` already have for this (judge model, prompt version):
        labeled ones are the label cache; failed ones are asked again and their row replaced."""
        if not ids:
            return {}
        # Any version of the prompt's family counts (processbench-v1 labels serve processbench-v2): a template
        # revision must not buy every label again. A labeled row under any of them wins over a failed one.
        rows = self.sql("SELECT trajectory_id, CASE WHEN bool_or(status = 'labeled') THEN 'labeled' ELSE 'failed' END "
                        "FROM judge_labels WHERE judge_model = ? AND " + _same_family("prompt_version", "?")
                        + " AND trajectory_id IN (SELECT unnest(?::VARCHAR[])) GROUP BY trajectory_id",
                        [judge_model, prompt_version, ids]).fetchall()
        return dict(rows)

    def judge_label_truncations(self, ids: list[str], judge_model: str, prompt_version: str) -> dict[str, int]:
        """Completion tokens of the rows `ids` that failed as truncated under this (judge model, prompt version):
        the label task re-asks them only under a larger completion limit."""
        if not ids:
            return {}
        rows = self.sql("SELECT trajectory_id, completion_tokens FROM judge_labels WHERE judge_model = ? "
                        "AND prompt_version = ? AND status = 'failed' AND reason = 'truncated' "
                        "AND trajectory_id IN (SELECT unnest(?::VARCHAR[]))", [judge_model, prompt_version, ids]).fetchall()
        return {t: int(c or 0) for t, c in rows}

    def latest_scored_model_version(self, pool: str) -> str | None:
        row = self.sql("SELECT s.model_version FROM scores s JOIN pool_members pm ON pm.trajectory_id = s.trajectory_id "
                       "WHERE pm.pool = ? GROUP BY s.model_version ORDER BY max(s.scored_at) DESC LIMIT 1",
                       [pool]).fetchone()
        return row[0] if row else None

    def judge_label_quality(self, pool: str, judge_model: str, prompt_version: str) -> dict | None:
        """Judge first-error accuracy against the pool's gold labels, overall and per error_kind, and the
        parse-failure rate; None when the pool has no gold labels for the judged trajectories."""
        rows = self.sql(
            "SELECT coalesce(g.error_kind, CASE WHEN g.first_error = -1 THEN 'correct' ELSE 'unknown' END), "
            "count(*) FILTER (WHERE j.status = 'labeled'), "
            "count(*) FILTER (WHERE j.status = 'labeled' AND j.first_error = g.first_error), "
            "count(*) FILTER (WHERE j.status = 'failed') "
            "FROM judge_labels j JOIN pool_members pm ON pm.trajectory_id = j.trajectory_id AND pm.pool = ? "
            "JOIN gold_labels g ON g.trajectory_id = j.trajectory_id "
            "WHERE j.judge_model = ? AND j.prompt_version = ? GROUP BY 1 ORDER BY 1",
            [pool, judge_model, prompt_version]).fetchall()
        if not rows:
            return None
        labeled = sum(r[1] for r in rows)
        correct = sum(r[2] for r in rows)
        failed = sum(r[3] for r in rows)
        return {"n_labeled": labeled, "accuracy": correct / labeled if labeled else None,
                "per_error_kind": {r[0]: {"n": r[1], "accuracy": r[2] / r[1] if r[1] else None} for r in rows},
                "parse_failure_rate": failed / (labeled + failed) if labeled + failed else 0.0}

    def ledger_summary(self) -> dict[str, dict]:
        """Judge requests per ledger state, with their tokens and cost: what to hold against an invoice
        (maybe_billed and orphaned rows are counted at their worst case)."""
        rows = self.sql("SELECT state, count(*), coalesce(sum(tokens), 0), coalesce(sum(cost), 0) "
                        "FROM budget_ledger GROUP BY state ORDER BY state").fetchall()
        return {state: {"requests": int(n), "tokens": int(tokens), "cost": float(cost)} for state, n, tokens, cost in rows}

    def ledger_consistency(self) -> dict:
        """Counts that must be zero after any crash: settled label-buying requests without their label
        row, and labeled rows without their settled request."""
        missing_label = self.sql(
            "SELECT count(*) FROM budget_ledger b WHERE b.state = 'settled' AND b.labels = 1 AND NOT EXISTS "
            "(SELECT 1 FROM judge_labels j WHERE j.request_id = b.request_id AND j.status = 'labeled')").fetchone()[0]
        missing_request = self.sql(
            "SELECT count(*) FROM judge_labels j WHERE j.status = 'labeled' AND NOT EXISTS "
            "(SELECT 1 FROM budget_ledger b WHERE b.request_id = j.request_id AND b.state = 'settled' "
            "AND b.labels = 1)").fetchone()[0]
        states = dict(self.sql("SELECT state, count(*) FROM budget_ledger GROUP BY state").fetchall())
        return {"settled_without_label": int(missing_label), "label_without_settled": int(missing_request),
                "states": {k: int(v) for k, v in states.items()}}

    # -- ingest ------------------------------------------------------------------------------
    # `actprm.store.parsing` writes the SELECT that parses and checks one input file's lines for a format; the
    # methods below run it into a stage table, move the bad lines to quarantine and store the new trajectories.
    _q = staticmethod(quote_ident)
    _lit = staticmethod(quote_literal)

    def create_ingest_stage(self, stage: str, *, temporary: bool = False, memory_limit: str = "3GB") -> None:
        """A stage table; `temporary` when the same connection stages and inserts (no disk write), else a
        real table that survives between the flow's tasks (each opens its own short-lived store)."""
        # bounded memory for 1M-line inputs: DuckDB spills to disk past this (the default is 80% of RAM)
        self.sql(f"SET memory_limit = {self._lit(memory_limit)}")
        self.sql(f"DROP TABLE IF EXISTS {self._q(stage)}")
        self.sql(
            f"CREATE {'TEMP ' if temporary else ''}TABLE {self._q(stage)} (file_idx INTEGER, source VARCHAR, line_no BIGINT, view_no INTEGER, "
            "reason VARCHAR, raw VARCHAR, id VARCHAR, question VARCHAR, steps VARCHAR[], num_steps INTEGER, "
            "first_error INTEGER, step_labels TINYINT[], error_kind VARCHAR, source_id VARCHAR)")

    def stage_file(self, stage: str, fmt, file_idx: int, path: str, kind: str, limits: dict,
                   unreadable: dict[int, str] | None = None, source: str | None = None, *, fast: bool = False) -> None:
        """Parses and checks every line of one file into the stage table (one row per view of a good
        line, one row per bad line). `unreadable`: line_no -> reason for lines the reader could not take.
        `fast`: with DuckDB's JSON reader (`parsing.fields_sql`: well-formed files only, see there)."""
        q = self._q
        sql = f"INSERT INTO {q(stage)} " + staging_select(fmt, kind, limits, TRAJECTORY_ID_SQL, fast=fast)
        # every stage row carries its own line_no: no need to keep the reader's order while inserting
        self.sql("SET preserve_insertion_order = false")
        try:
            self.sql(sql, [path, file_idx, source or path])
        finally:
            self.sql("RESET preserve_insertion_order")
        for line_no, why in (unreadable or {}).items():
            self.sql(f"UPDATE {q(stage)} SET reason = ? WHERE file_idx = ? AND line_no = ?", [why, file_idx, line_no])
    def stage_file_lines(self, stage: str, file_idx: int) -> int:
        """Distinct lines one file put in the stage (checked against the stream's own count)."""
        return int(self.sql(f"SELECT count(DISTINCT line_no) FROM {self._q(stage)} WHERE file_idx = ?",
                            [file_idx]).fetchone()[0])

    def stage_file_bad_lines(self, stage: str, file_idx: int) -> int:
        """Lines of one file the stage holds a reason for."""
        return int(self.sql(f"SELECT count(*) FROM {self._q(stage)} WHERE file_idx = ? AND reason IS NOT NULL",
                            [file_idx]).fetchone()[0])

    def drop_stage_file(self, stage: str, file_idx: int) -> None:
        """Forgets what one file staged (before it is staged again from a sanitized copy)."""
        self.sql(f"DELETE FROM {self._q(stage)} WHERE file_idx = ?", [file_idx])

    def stage_counts(self, stage: str) -> dict:
        """Lines seen in the stage: good ones, bad ones (by reason) — before deduplication."""
        q = self._q(stage)
        lines, bad = self.sql(
            f"SELECT count(DISTINCT (file_idx, line_no)), count(DISTINCT (file_idx, line_no)) FILTER (WHERE reason IS NOT NULL) "
            f"FROM {q}").fetchone()
        return {"lines_read": int(lines), "quarantined": int(bad)}

    def quarantine_stage(self, stage: str, pool: str) -> int:
        """Moves the stage's bad lines into quarantine, replacing what an earlier ingest of the same
        source files left there (re-ingesting a file never grows the quarantine)."""
        q = self._q(stage)
        with self.transaction():
            self.sql(f"DELETE FROM quarantine WHERE pool = ? AND source IN (SELECT DISTINCT source FROM {q})", [pool])
            self.sql(f"INSERT INTO quarantine (pool, source, line_no, raw, reason) "
                     f"SELECT ?, source, line_no, raw, reason FROM {q} WHERE reason IS NOT NULL "
                     "ORDER BY file_idx, line_no", [pool])
        return int(self.sql(f"SELECT count(*) FROM {q} WHERE reason IS NOT NULL").fetchone()[0])

    def insert_stage(self, stage: str, pool: str, source_format: str, *, content_hash: str | None = None,
                     compress_text: bool = True) -> dict:
        """Deduplicates the stage's good rows (within the input, then against the pool) and stores the
        new ones: a trajectory once across pools, its pool membership, its gold labels if any.
        A line counts as accepted when at least one of its trajectories is new to the pool.

        With `content_hash` (the input's), the counts include what an earlier ingest of the same input stored
        before it was killed, short of registering the pool (`ingest_receipts`).

        `compress_text=False` stores the new trajectories' text uncompressed: DuckDB's string compression
        (DICT_FSST) is most of the cost of this insert (1M synthetic trajectories: 9.8 s compressed vs
        2.5 s plain, bench/bench_ingest.py) but the table takes ~2.3x the disk.

        This anti-join dedupe is what keeps trajectories.id, pool_members (pool, trajectory_id) and
        gold_labels.trajectory_id unique (the tables have no PRIMARY KEY, see SCHEMA); the caller holds
        the store's single-writer lock, so no other process inserts in between."""
        q = self._q(stage)
        # A row's position in the input; unique per stage row, so the inserts below semi-join on one BIGINT.
        pos = "((file_idx::BIGINT << 40) + (line_no << 4) + view_no)"
        # Rows land in tables nobody reads in insertion order (readers ORDER BY line_no): let DuckDB
        # write in parallel and skip the order-keeping buffers.
        self.sql("SET preserve_insertion_order = false")
        try:
            with self.transaction():
                # The first occurrence of each id in the input (narrow keys only), unless the pool has it
                # already; `known`/`gold`: another pool already stored the trajectory / its gold label.
                self.sql("CREATE OR REPLACE TEMP TABLE ingest_keep AS "
                         "SELECT k.pos, EXISTS (SELECT 1 FROM trajectories t WHERE t.id = k.id) AS known, "
                         "EXISTS (SELECT 1 FROM gold_labels g WHERE g.trajectory_id = k.id) AS gold "
                         f"FROM (SELECT id, min({pos}) AS pos FROM {q} s WHERE reason IS NULL "
                         "      AND NOT EXISTS (SELECT 1 FROM pool_members m WHERE m.pool = ? AND m.trajectory_id = s.id) "
                         "      GROUP BY id) k", [pool])
                if not compress_text:
                    self.sql("SET force_compression = 'uncompressed'")
                try:
                    self.sql("INSERT INTO trajectories (id, question, steps, num_steps) "
                             f"SELECT id, question, steps, num_steps FROM {q} "
                             f"WHERE {pos} IN (SELECT pos FROM ingest_keep WHERE NOT known)")
                finally:
                    if not compress_text:
                        self.sql("RESET force_compression")
                self.sql("INSERT INTO pool_members (pool, trajectory_id, line_no, source_id) "
                         f"SELECT ?, id, line_no, source_id FROM {q} WHERE {pos} IN (SELECT pos FROM ingest_keep)",
                         [pool])
                # the first source to label a trajectory keeps its gold label
                self.sql("INSERT INTO gold_labels (trajectory_id, first_error, step_labels, error_kind, source_format) "
                         f"SELECT id, first_error, step_labels, error_kind, ? FROM {q} WHERE first_error IS NOT NULL "
                         f"AND {pos} IN (SELECT pos FROM ingest_keep WHERE NOT gold)", [source_format])
                accepted, new_traj = self.sql(
                    "SELECT count(DISTINCT pos >> 4), count(*) FROM ingest_keep").fetchone()
                good = self.sql(f"SELECT count(DISTINCT {pos} >> 4) FROM {q} WHERE reason IS NULL").fetchone()[0]
                self.sql("DROP TABLE ingest_keep")
                if content_hash is not None:
                    receipt = self.sql(
                        "INSERT INTO ingest_receipts VALUES (?, ?, ?, ?) ON CONFLICT (pool, content_hash) DO UPDATE "
                        "SET accepted = accepted + excluded.accepted, "
                        "trajectories_added = trajectories_added + excluded.trajectories_added "
                        "RETURNING accepted, trajectories_added", [pool, content_hash, accepted, new_traj]).fetchone()
                    # Never more accepted lines than good ones (a receipt of the same bytes read with other limits
                    # may hold lines this run quarantines): they stay in the pool, counted as far as they can be.
                    accepted, new_traj = min(receipt[0], good), receipt[1]
        finally:
            self.sql("RESET preserve_insertion_order")
        return {"accepted": int(accepted), "duplicates": int(good - accepted), "trajectories_added": int(new_traj)}

    def drop_stage(self, stage: str) -> None:
        self.sql(f"DROP TABLE IF EXISTS {self._q(stage)}")

    def stage_tables(self, prefix: str) -> list[str]:
        """Names of the real (not temporary) tables starting with `prefix`, e.g. stages an ingest left behind."""
        return [r[0] for r in self.sql("SELECT table_name FROM duckdb_tables() WHERE NOT temporary "
                                       "AND starts_with(table_name, ?) ORDER BY table_name", [prefix]).fetchall()]

    def upsert_pool(self, name: str, *, source: str, format: str, content_hash: str, status: str) -> None:
        self.sql("INSERT INTO pools (name, source, format, content_hash, status) VALUES (?, ?, ?, ?, ?) "
                 "ON CONFLICT (name) DO UPDATE SET source = excluded.source, format = excluded.format, "
                 "content_hash = excluded.content_hash, status = excluded.status, updated_at = now()::TIMESTAMP",
                 [name, source, format, content_hash, status])

    def finish_pool(self, name: str, *, status: str, counts: dict, report: str | None) -> None:
        """Records the latest ingest's line counts, the pool's labeled fraction, status and report."""
        labeled = self.pool_label_stats(name)["labeled_fraction"]
        with self.transaction():
            self.sql("UPDATE pools SET status = ?, lines_read = ?, accepted = ?, quarantined = ?, duplicates = ?, "
                     "labeled_fraction = ?, report = ?, updated_at = current_timestamp WHERE name = ?",
                     [status, counts["lines_read"], counts["accepted"], counts["quarantined"], counts["duplicates"],
                      labeled, report, name])
            self.sql("DELETE FROM ingest_receipts WHERE pool = ?", [name])

    def unfinished_ingests(self, pool: str, but: str) -> list[tuple[str, int]]:
        """(content hash, lines accepted) of ingests into `pool` of inputs other than `but` that stored lines and
        were killed before the pool was registered: their lines are in the pool, counted by no report."""
        return [(h, int(n)) for h, n in self.sql(
            "SELECT content_hash, accepted FROM ingest_receipts WHERE pool = ? AND content_hash <> ? AND accepted > 0 "
            "ORDER BY content_hash", [pool, but]).fetchall()]

    def set_pool_status(self, name: str, status: str) -> None:
        self.sql("UPDATE pools SET status = ?, updated_at = current_timestamp WHERE name = ?", [status, name])

    def pool_status(self, name: str) -> str | None:
        row = self.sql("SELECT status FROM pools WHERE name = ?", [name]).fetchone()
        return row[0] if row else None

    def pool_label_stats(self, pool: str) -> dict:
        """Size, mean step count, labeled fraction and gold error rate of a pool (for drift checks)."""
        n, mean_steps, labeled, erroneous = self.sql(
            "SELECT count(*), avg(t.num_steps), count(g.trajectory_id), count(*) FILTER (WHERE g.first_error >= 0) "
            "FROM pool_members m JOIN trajectories t ON t.id = m.trajectory_id "
            "LEFT JOIN gold_labels g ON g.trajectory_id = m.trajectory_id WHERE m.pool = ?", [pool]).fetchone()
        return {"trajectories": int(n), "mean_steps": float(mean_steps) if mean_steps is not None else None,
                "labeled_fraction": labeled / n if n else 0.0, "error_rate": erroneous / labeled if labeled else None}

    def registered_pools(self, exclude: str | None = None) -> list[str]:
        return [r[0] for r in self.sql("SELECT name FROM pools WHERE status = 'registered' AND name IS DISTINCT FROM ? "
                                       "ORDER BY created_at", [exclude]).fetchall()]

    def pool_validation_facts(self, pool: str, shards: int) -> str:
        """Materializes a pool's per-trajectory facts (the columns the data contract checks, never the
        full text) once, each row tagged with its shard (by id hash, so equal ids share a shard), into a
        temp table; returns its name. Read shards with `validation_shard`, then `drop_stage` it. One scan
        of the pool instead of one per shard."""
        name = f"validation_facts_{uuid.uuid4().hex[:12]}"
        self.sql(
            f"CREATE TEMP TABLE {self._q(name)} AS SELECT (hash(m.trajectory_id) % ?)::INTEGER AS shard, "
            "t.id, t.question IS NULL AS question_null, length(t.question) AS question_chars, "
            "t.num_steps, len(t.steps) AS steps_len, list_max(list_transform(t.steps, lambda s: length(s))) AS max_step_chars, "
            "list_min(list_transform(t.steps, lambda s: length(s))) AS min_step_chars, "
            "list_bool_or(list_transform(t.steps, lambda s: s IS NULL)) AS has_null_step, "
            "g.first_error, len(g.step_labels) AS step_labels_len, g.error_kind, "
            "(g.trajectory_id IS NOT NULL)::INTEGER AS labeled, (g.first_error >= 0)::DOUBLE AS is_error "
            "FROM pool_members m JOIN trajectories t ON t.id = m.trajectory_id "
            "LEFT JOIN gold_labels g ON g.trajectory_id = m.trajectory_id "
            "WHERE m.pool = ? ORDER BY shard", [shards, pool])
        return name

    def validation_shard(self, facts: str, shard: int):
        """One shard of a `pool_validation_facts` table as a pandas frame (without the shard column)."""
        return self.sql(f"SELECT * EXCLUDE (shard) FROM {self._q(facts)} WHERE shard = ?", [shard]).df()

    def quarantine_reasons(self, pool: str, limit: int = 10) -> list[tuple[str, int]]:
        return [(r[0], int(r[1])) for r in self.sql(
            "SELECT reason, count(*) AS n FROM quarantine WHERE pool = ? GROUP BY reason ORDER BY n DESC, reason LIMIT ?",
            [pool, limit]).fetchall()]

    def quarantine_sample(self, pool: str, limit: int = 20) -> list[dict]:
        rows = self.sql("SELECT source, line_no, reason, raw FROM quarantine WHERE pool = ? "
                        "ORDER BY source, line_no LIMIT ?", [pool, limit]).fetchall()
        return [{"source": r[0], "line_no": r[1], "reason": r[2], "raw": r[3]} for r in rows]

    def quarantine_count(self, pool: str) -> int:
        return int(self.sql("SELECT count(*) FROM quarantine WHERE pool = ?", [pool]).fetchone()[0])

    # -- predict -----------------------------------------------------------------------------
    def staged_trajectories(self, stage: str) -> list[dict]:
        """Every row of an ingest stage in input order: one per view of a good line (question, steps, source id,
        content id), one per bad line (its reason), for scoring a file without storing it as a pool."""
        rows = self.sql(f"SELECT file_idx, source, line_no, view_no, reason, id, question, steps, source_id "
                        f"FROM {self._q(stage)} ORDER BY file_idx, line_no, view_no").fetchall()
        keys = ("file_idx", "source", "line_no", "view_no", "reason", "id", "question", "steps", "source_id")
        return [dict(zip(keys, r)) | {"steps": list(r[7]) if r[7] is not None else None} for r in rows]

    def record_field(self, path: str, kind: str, key: str) -> dict[int, str | None]:
        """line_no -> the value of top-level `key` (as text) of every JSON line or Parquet row of one input file."""
        rows = self.sql(f"SELECT line_no, CASE WHEN json_valid(raw) THEN json_extract_string(raw, ?) END "
                        f"FROM ({reader_sql(kind)})", ["$." + json.dumps(key), path]).fetchall()
        return {int(n): v for n, v in rows}

    # -- selection & rounds --------------------------------------------------------------------
    def has_gold_labels(self, pool: str) -> bool:
        return bool(self.sql(
            "SELECT count(*) FROM pool_members m JOIN gold_labels g ON g.trajectory_id = m.trajectory_id "
            "WHERE m.pool = ?", [pool]).fetchone()[0])

    def split_counts(self, pool: str) -> dict[str, int]:
        rows = self.sql("SELECT split, count(*) FROM pool_members WHERE pool = ? GROUP BY split", [pool]).fetchall()
        return {r[0]: int(r[1]) for r in rows}

    def assign_eval_split(self, pool: str, fraction: float, seed: int, view_suffixes: tuple[str, ...] = ()) -> None:
        """Hold out a deterministic share of a pool's gold-labeled *problems* for evaluation.

        Trajectories of one problem go to the same split, so the eval split measures problems the PRM never
        trained on: a problem is the source record a view was made from (its source id without one of
        `view_suffixes`; PRMBench's idx names the PRM800K problem its 8 error categories modified) or else the
        question. Held out by trajectory instead, 92% of PRMBench's eval trajectories had their question in
        train. The share is decided by a hash of (seed, the problem's first trajectory id), so a problem with
        one trajectory is split as that trajectory alone would be; it is stable across reruns and does not
        depend on ingestion order. Trajectories without gold labels always stay in `train`.
        """
        threshold = int(fraction * 10_000)
        problem = "t.question"
        for suffix in sorted(set(view_suffixes) - {""}):
            problem = (f"CASE WHEN ends_with(pm.source_id, {self._lit(suffix)}) "
                       f"THEN 'record:' || left(pm.source_id, length(pm.source_id) - {len(suffix)}) ELSE {problem} END")
        self.sql(
            "UPDATE pool_members SET split = 'eval' WHERE pool = ? AND split = 'train' AND trajectory_id IN ("
            "  SELECT trajectory_id FROM ("
            "    SELECT pm.trajectory_id, min(pm.trajectory_id) OVER (PARTITION BY " + problem + ") AS first_id "
            "    FROM pool_members pm JOIN trajectories t ON t.id = pm.trajectory_id "
            "    WHERE pm.pool = ? AND pm.trajectory_id IN (SELECT trajectory_id FROM gold_labels)) "
            "  WHERE hash(? || first_id) % 10000 < ?)",
            [pool, pool, str(seed), threshold],
        )

    def rank_for_labeling(self, pool: str, model_version: str, *, only_uncertain: bool = True,
                          split: str | None = "train", labeled_by: tuple[str, str] | None = None,
                          limit: int | None = None) -> list[str]:
        """Scored trajectories of the pool, highest acquisition first (ties by id, so runs agree).

        only_uncertain: just those the ActPRM rule flagged (selection by any other strategy ranks all);
        split: one split (None: all); labeled_by: a (judge_model, prompt_version) cache key whose
        labeled trajectories are left out (None: keep them; the label task counts them as cached).
        """
        judge_model, prompt_version = labeled_by or (None, None)
        q = ("SELECT s.trajectory_id FROM pool_members pm JOIN scores s "
             "ON s.trajectory_id = pm.trajectory_id AND s.model_version = $version "
             "WHERE pm.pool = $pool AND ($split IS NULL OR pm.split = $split) "
             + ("AND s.uncertain " if only_uncertain else "")
             + "AND ($judge::VARCHAR IS NULL OR NOT EXISTS (SELECT 1 FROM judge_labels j "
             "WHERE j.trajectory_id = s.trajectory_id AND j.judge_model = $judge "
             "AND " + _same_family("j.prompt_version", "$prompt") + " AND j.status = 'labeled')) "
             "ORDER BY s.acquisition DESC, s.trajectory_id")
        params: dict = {"version": model_version, "pool": pool, "split": split, "judge": judge_model,
                        "prompt": prompt_version}
        if limit is not None:
            q += " LIMIT $limit"
            params["limit"] = int(limit)
        return [r[0] for r in self.sql(q, params).fetchall()]

    def record_round(self, run_id: str, round: int, pool: str, *, labels_bought: int, train_trajectories: int,
                     f1: float | None, model_version: str | None, promoted: bool | None,
                     mlflow_run_id: str | None, stopped_because: str | None = None) -> None:
        self.sql(
            "INSERT OR REPLACE INTO rounds (run_id, round, pool, labels_bought, train_trajectories, f1, "
            "model_version, promoted, mlflow_run_id, stopped_because) VALUES (?, ?, ?, ?, ?, ?, ?, ?, ?, ?)",
            [run_id, round, pool, labels_bought, train_trajectories, f1, model_version, promoted, mlflow_run_id,
             stopped_because],
        )

    def round_selection(self, run_id: str, round: int) -> list[str] | None:
        """The trajectories a round selected, best first; None when it has not selected yet."""
        rows = self.sql("SELECT trajectory_id FROM round_selections WHERE run_id = ? AND round = ? ORDER BY rank",
                        [run_id, round]).fetchall()
        return [r[0] for r in rows] if rows else None

    def keep_round_selection(self, run_id: str, round: int, trajectory_ids: list[str]) -> None:
        with self.transaction():
            self.sql("DELETE FROM round_selections WHERE run_id = ? AND round = ?", [run_id, round])
            if trajectory_ids:
                self.con.executemany("INSERT INTO round_selections VALUES (?, ?, ?, ?)",
                                     [(run_id, round, i, t) for i, t in enumerate(trajectory_ids)])

    def rounds(self, run_id: str | None = None, limit: int = 50) -> list[dict]:
        # A read-only handle on a file older than schema version 2 cannot add the column (`MIGRATIONS`).
        reason = "stopped_because" if self.sql(
            "SELECT count(*) FROM duckdb_columns() WHERE table_name = 'rounds' AND column_name = 'stopped_because'"
        ).fetchone()[0] else "NULL"
        q = ("SELECT run_id, round, pool, labels_bought, train_trajectories, f1, model_version, promoted, "
             f"mlflow_run_id, finished_at::VARCHAR, {reason} FROM rounds")
        params: list = []
        if run_id:
            q += " WHERE run_id = ?"
            params.append(run_id)
        q += " ORDER BY finished_at DESC, round DESC LIMIT ?"
        params.append(limit)
        cols = ["run_id", "round", "pool", "labels_bought", "train_trajectories", "f1", "model_version",
                "promoted", "mlflow_run_id", "finished_at", "stopped_because"]
        return [dict(zip(cols, r)) for r in self.sql(q, params).fetchall()]

    # -- loops ------------------------------------------------------------------------------
    _LOOP_COLUMNS = ("loop_id", "pool", "loop_key", "status", "shaping", "start_model_dir", "start_model_version",
                     "owner", "created_at", "updated_at")

    def _loop_rows(self, where: str, params: list) -> list[dict]:
        q = f"SELECT {', '.join(self._LOOP_COLUMNS)} FROM loops WHERE {where} ORDER BY created_at DESC, loop_id"
        return [dict(zip(self._LOOP_COLUMNS, r)) for r in self.sql(q, params).fetchall()]

    def open_loops(self, pool: str) -> list[dict]:
        """The pool's unfinished loops, newest first."""
        return self._loop_rows("pool = ? AND status = 'open'", [pool])

    def loop(self, loop_id: str) -> dict | None:
        rows = self._loop_rows("loop_id = ?", [loop_id])
        return rows[0] if rows else None

    def create_loop(self, loop_id: str, pool: str, loop_key: str, shaping: str, owner: str) -> None:
        self.sql("INSERT INTO loops (loop_id, pool, loop_key, status, shaping, owner) VALUES (?, ?, ?, 'open', ?, ?)",
                 [loop_id, pool, loop_key, shaping, owner])

    def claim_loop(self, loop_id: str, owner: str) -> None:
        self.sql("UPDATE loops SET owner = ?, updated_at = current_timestamp WHERE loop_id = ?", [owner, loop_id])

    def set_loop_start(self, loop_id: str, model_dir: str, model_version: str) -> None:
        self.sql("UPDATE loops SET start_model_dir = ?, start_model_version = ?, updated_at = current_timestamp "
                 "WHERE loop_id = ?", [model_dir, model_version, loop_id])

    def set_loop_status(self, loop_id: str, status: str) -> None:
        self.sql("UPDATE loops SET status = ?, updated_at = current_timestamp WHERE loop_id = ?", [status, loop_id])

    # -- scores ------------------------------------------------------------------------------
    def unscored_ids(self, pool: str, model_version: str, split: str | None = None) -> list[str]:
        """The pool's trajectory ids (pool order) that this model version has not scored yet."""
        q = ("SELECT pm.trajectory_id FROM pool_members pm WHERE pm.pool = ? AND (? IS NULL OR pm.split = ?) "
             "AND NOT EXISTS (SELECT 1 FROM scores s WHERE s.trajectory_id = pm.trajectory_id "
             "AND s.model_version = ?) ORDER BY pm.line_no, pm.trajectory_id")
        return [r[0] for r in self.sql(q, [pool, split, split, model_version]).fetchall()]

    def write_score_shard(self, pool: str, model_version: str, rows) -> int:
        """Insert one shard of scores (a pyarrow Table with the `scores` columns) and its `score_shards`
        row in ONE transaction, so a crash loses at most the shard in flight. Returns the shard number."""
        assert self.con is not None
        with self.transaction() as con:
            shard = int(con.execute("SELECT coalesce(max(shard) + 1, 0) FROM score_shards "
                                    "WHERE pool = ? AND model_version = ?", [pool, model_version]).fetchall()[0][0])
            con.register("score_rows", rows)
            try:
                # Anti-join instead of INSERT OR REPLACE: a trajectory shared with another pool may already
                # carry this version's score, and scores are a pure function of (trajectory, model).
                con.execute(
                    "INSERT INTO scores (trajectory_id, model_version, mu, sigma, scored_steps, truncated_steps, "
                    "predicted_first_error, uncertain, acquisition) "
                    "SELECT r.trajectory_id, r.model_version, r.mu, r.sigma, r.scored_steps, r.truncated_steps, "
                    "r.predicted_first_error, r.uncertain, r.acquisition FROM score_rows r "
                    "WHERE NOT EXISTS (SELECT 1 FROM scores s WHERE s.trajectory_id = r.trajectory_id "
                    "AND s.model_version = r.model_version)")
            finally:
                con.unregister("score_rows")
            con.execute("INSERT INTO score_shards (pool, model_version, shard, scored) VALUES (?, ?, ?, ?)",
                        [pool, model_version, shard, rows.num_rows])
        return shard

    def score_shards(self, pool: str, model_version: str) -> list[dict]:
        rows = self.sql("SELECT shard, scored, finished_at::VARCHAR FROM score_shards WHERE pool = ? "
                        "AND model_version = ? ORDER BY shard", [pool, model_version]).fetchall()
        return [{"shard": r[0], "scored": r[1], "finished_at": r[2]} for r in rows]

    def scores_for(self, pool: str, model_version: str, split: str | None = None) -> list[dict]:
        """Scores of the pool's trajectories under one model version, in pool order."""
        cols = ["trajectory_id", "mu", "sigma", "scored_steps", "truncated_steps", "predicted_first_error",
                "uncertain", "acquisition"]
        rows = self.sql(
            "SELECT " + ", ".join(f"s.{c}" for c in cols) + " FROM pool_members pm JOIN scores s "
            "ON s.trajectory_id = pm.trajectory_id AND s.model_version = ? "
            "WHERE pm.pool = ? AND (? IS NULL OR pm.split = ?) ORDER BY pm.line_no, pm.trajectory_id",
            [model_version, pool, split, split]).fetchall()
        return [dict(zip(cols, r)) for r in rows]

    def score_summary(self, pool: str, model_version: str, split: str | None = None) -> dict:
        r = self.sql(
            "SELECT count(s.trajectory_id), count(*) FILTER (s.uncertain), count(*) FILTER (s.truncated_steps > 0), "
            "avg(s.scored_steps), count(*) FROM pool_members pm LEFT JOIN scores s "
            "ON s.trajectory_id = pm.trajectory_id AND s.model_version = ? "
            "WHERE pm.pool = ? AND (? IS NULL OR pm.split = ?)", [model_version, pool, split, split]).fetchone()
        scored, uncertain = int(r[0]), int(r[1])
        return {"pool": pool, "model_version": model_version, "pool_size": int(r[4]), "scored": scored,
                "uncertain": uncertain, "uncertain_fraction": uncertain / scored if scored else None,
                "truncated": int(r[2]), "mean_scored_steps": float(r[3]) if r[3] is not None else None}

    def score_distributions(self, pool: str, model_version: str) -> tuple[list[float], list[float]]:
        """Every scored step's (mu, sigma) of the pool, flattened: for histograms."""
        rows = self.sql(
            "SELECT unnest(s.mu), unnest(s.sigma) FROM pool_members pm JOIN scores s "
            "ON s.trajectory_id = pm.trajectory_id AND s.model_version = ? WHERE pm.pool = ?",
            [model_version, pool]).fetchall()
        return [r[0] for r in rows], [r[1] for r in rows]

    def export_scores_parquet(self, pool: str, model_version: str, path: str | Path) -> int:
        """Write one Parquet row per scored trajectory of the pool; returns the row count."""
        select = (
            "SELECT pm.trajectory_id AS id, s.mu, s.sigma, s.uncertain, s.predicted_first_error, s.acquisition, "
            "s.scored_steps, s.truncated_steps, pm.split, g.first_error AS gold_first_error, "
            "s.model_version FROM pool_members pm JOIN scores s "
            "ON s.trajectory_id = pm.trajectory_id AND s.model_version = $version "
            "LEFT JOIN gold_labels g ON g.trajectory_id = pm.trajectory_id "
            "WHERE pm.pool = $pool ORDER BY pm.line_no, pm.trajectory_id")
        # COPY takes no parameter for its target: quote the path as a SQL literal.
        target = str(path).replace("'", "''")
        self.sql(f"COPY ({select}) TO '{target}' (FORMAT parquet)", {"version": model_version, "pool": pool})
        return int(self.sql("SELECT count(*) FROM pool_members pm JOIN scores s ON s.trajectory_id = pm.trajectory_id "
                            "AND s.model_version = ? WHERE pm.pool = ?", [model_version, pool]).fetchone()[0])
