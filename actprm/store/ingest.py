"""Ingest: stage an input file's lines, quarantine the bad ones, deduplicate and store the new trajectories.

`actprm.store.parsing` writes the SELECT that parses and checks one input file's lines for a format; the
methods here run it into a stage table, move the bad lines to quarantine and store the new trajectories.
"""

from __future__ import annotations

import json

from actprm.store.connection import Connection
from actprm.store.parsing import reader_sql, staging_select
from actprm.store.schema import TRAJECTORY_ID_SQL


class IngestQueries(Connection):
    """Ingest stage tables, quarantine and the insert of new trajectories (also `actprm predict`'s staging)."""

    # A stage row's position in the input; unique per stage row, so the inserts semi-join on one BIGINT.
    STAGE_POS = "((file_idx::BIGINT << 40) + (line_no << 4) + view_no)"

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
        params = [path, file_idx, source or path]
        if kind == "parquet" or not self._stage_in_order(stage, fmt, kind, limits, params, fast=fast):
            sql = f"INSERT INTO {q(stage)} " + staging_select(fmt, kind, limits, TRAJECTORY_ID_SQL, fast=fast)
            # every stage row carries its own line_no: no need to keep the reader's order while inserting
            self.sql("SET preserve_insertion_order = false")
            try:
                self.sql(sql, params)
            finally:
                self.sql("RESET preserve_insertion_order")
        for line_no, why in (unreadable or {}).items():
            self.sql(f"UPDATE {q(stage)} SET reason = ? WHERE file_idx = ? AND line_no = ?", [why, file_idx, line_no])

    def _stage_in_order(self, stage: str, fmt, kind: str, limits: dict, params: list, *, fast: bool) -> bool:
        """Stages a JSONL file read on every thread, rows kept in the reader's order, then numbered from that
        order: a stage row's rowid is its place in the file. (Numbering lines while reading, WITH ORDINALITY,
        makes DuckDB read on one thread: 2x the staging time on 2 cores.) Only when DuckDB plans the insert as
        a BATCH_INSERT, its order-keeping parallel insert; an operator that may reorder rows (a hash join, which
        is how it plans `x IN (<constants>)`) makes it plan an INSERT, and this returns False for the caller to
        number lines while reading."""
        if fmt.views[-1].only_if is not None:  # see _number_lines
            return False
        sql = f"INSERT INTO {self._q(stage)} " + staging_select(fmt, kind, limits, TRAJECTORY_ID_SQL, fast=fast,
                                                                  numbered=False)
        self.sql("SET preserve_insertion_order = true")
        try:
            plan = json.loads(self.sql("EXPLAIN (FORMAT JSON) " + sql, params).fetchall()[0][1])
            if plan[0]["name"] != "BATCH_INSERT":
                return False
            with self.transaction():
                self.sql(sql, params)
                self._number_lines(stage, params[1])
        finally:
            self.sql("RESET preserve_insertion_order")
        return True

    def _number_lines(self, stage: str, file_idx: int) -> None:
        """line_no of one file's rows from their order. A line is one row when it is bad, else one per view, views
        in order (view_no 1, 2, ...): a row starts a line unless it continues the views of the row before. Exact
        when every good line has the format's last view (no `only_if` on it); a line numbered wrong could only
        merge into the one before, which the caller's line count check catches."""
        q = self._q(stage)
        first, rows, last = self.sql(f"SELECT min(rowid), count(*), max(rowid) FROM {q} WHERE file_idx = ?",
                                     [file_idx]).fetchone()
        if not rows:
            return
        if last - first + 1 != rows:  # pragma: no cover - DuckDB appends one insert's rows together
            raise RuntimeError(f"stage {stage}: the rows of file {file_idx} are not contiguous")
        self.sql(f"UPDATE {q} SET line_no = n.line_no FROM ("
                 "SELECT r, sum(starts::INTEGER) OVER (ORDER BY r) AS line_no FROM ("
                 "  SELECT rowid AS r, coalesce(NOT (view_no > lag(view_no) OVER (ORDER BY rowid)), true) AS starts "
                 f"  FROM {q} WHERE file_idx = ?)) n WHERE {q}.rowid = n.r", [file_idx])

    def stage_file_lines(self, stage: str, file_idx: int) -> int:
        """Distinct lines one file put in the stage (checked against the stream's own count)."""
        return int(self.sql(f"SELECT count(DISTINCT line_no) FROM {self._q(stage)} WHERE file_idx = ?",
                            [file_idx]).fetchone()[0])

    def stage_file_bad_lines(self, stage: str, file_idx: int) -> list[int]:
        """Numbers of the lines of one file the stage holds a reason for, in order."""
        return [int(r[0]) for r in self.sql(f"SELECT line_no FROM {self._q(stage)} WHERE file_idx = ? "
                                            "AND reason IS NOT NULL ORDER BY line_no", [file_idx]).fetchall()]

    def restage_lines(self, stage: str, fmt, file_idx: int, path: str, line_numbers: list[int], limits: dict,
                      unreadable: dict[int, str] | None = None, source: str | None = None) -> None:
        """Replaces what the stage holds for some lines of file `file_idx` with those lines read again from `path`,
        a file of just them (its line k is line `line_numbers[k - 1]` of the input), line by line: the fast
        stage's bad lines get the line reader's reason and raw text without the whole file being read again."""
        scratch = f"{stage}_lines"
        self.create_ingest_stage(scratch, temporary=True)
        try:
            self.stage_file(scratch, fmt, file_idx, path, "jsonl", limits, unreadable, source)
            with self.transaction():
                self.sql(f"DELETE FROM {self._q(stage)} WHERE file_idx = ? AND line_no IN (SELECT unnest(?::BIGINT[]))",
                         [file_idx, line_numbers])
                self.sql(f"INSERT INTO {self._q(stage)} SELECT * REPLACE ((?::BIGINT[])[line_no] AS line_no) "
                         f"FROM {self._q(scratch)}", [line_numbers])
        finally:
            self.drop_stage(scratch)

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
        pos = self.STAGE_POS
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
                # Usually every good row is new (no id twice in the input, none in the pool or the store): then the
                # inserts take the good rows as they are, without a semi-join of a million positions each.
                kept, known, gold = self.sql("SELECT count(*), count(*) FILTER (WHERE known), "
                                             "count(*) FILTER (WHERE gold) FROM ingest_keep").fetchone()
                every_row = kept == self.sql(f"SELECT count(*) FROM {q} WHERE reason IS NULL").fetchone()[0]

                def keep(unless: str | None) -> str:
                    """The stage rows ingest_keep keeps, less those where its column `unless` holds."""
                    if every_row and unless is None:
                        return "reason IS NULL"
                    return f"{pos} IN (SELECT pos FROM ingest_keep{f' WHERE NOT {unless}' if unless else ''})"
                if not compress_text:
                    self.sql("SET force_compression = 'uncompressed'")
                try:
                    self.sql("INSERT INTO trajectories (id, question, steps, num_steps) "
                             f"SELECT id, question, steps, num_steps FROM {q} WHERE {keep('known' if known else None)}")
                finally:
                    if not compress_text:
                        self.sql("RESET force_compression")
                self.sql("INSERT INTO pool_members (pool, trajectory_id, line_no, source_id) "
                         f"SELECT ?, id, line_no, source_id FROM {q} WHERE {keep(None)}", [pool])
                # the first source to label a trajectory keeps its gold label
                self.sql("INSERT INTO gold_labels (trajectory_id, first_error, step_labels, error_kind, source_format) "
                         f"SELECT id, first_error, step_labels, error_kind, ? FROM {q} WHERE first_error IS NOT NULL "
                         f"AND {keep('gold' if gold else None)}", [source_format])
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

    def unfinished_ingests(self, pool: str, but: str) -> list[tuple[str, int]]:
        """(content hash, lines accepted) of ingests into `pool` of inputs other than `but` that stored lines and
        were killed before the pool was registered: their lines are in the pool, counted by no report."""
        return [(h, int(n)) for h, n in self.sql(
            "SELECT content_hash, accepted FROM ingest_receipts WHERE pool = ? AND content_hash <> ? AND accepted > 0 "
            "ORDER BY content_hash", [pool, but]).fetchall()]

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
