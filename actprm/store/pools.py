"""Pools: their registry row (status, line counts, report), their members and splits, and reading their
trajectories back, for every stage (ingest registers a pool, validate reads its facts, the rest require it)."""

from __future__ import annotations

import uuid

from actprm.errors import ActPRMError, UnknownPool
from actprm.names import check_pool_name
from actprm.store.connection import Connection


class PoolQueries(Connection):
    """Pool rows, pool members and their splits, and the trajectories a pool holds."""

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

    def pool_status(self, name: str) -> str | None:
        row = self.sql("SELECT status FROM pools WHERE name = ?", [name]).fetchone()
        return row[0] if row else None

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

    def upsert_pool(self, name: str, *, source: str, format: str, content_hash: str, status: str) -> None:
        self.sql("INSERT INTO pools (name, source, format, content_hash, status) VALUES (?, ?, ?, ?, ?) "
                 "ON CONFLICT (name) DO UPDATE SET source = excluded.source, format = excluded.format, "
                 "content_hash = excluded.content_hash, status = excluded.status, updated_at = now()::TIMESTAMP",
                 [name, source, format, content_hash, status])

    def set_pool_status(self, name: str, status: str) -> None:
        self.sql("UPDATE pools SET status = ?, updated_at = current_timestamp WHERE name = ?", [status, name])

    def finish_pool(self, name: str, *, status: str, counts: dict, report: str | None) -> None:
        """Records the latest ingest's line counts, the pool's labeled fraction, status and report."""
        labeled = self.pool_label_stats(name)["labeled_fraction"]
        with self.transaction():
            self.sql("UPDATE pools SET status = ?, lines_read = ?, accepted = ?, quarantined = ?, duplicates = ?, "
                     "labeled_fraction = ?, report = ?, updated_at = current_timestamp WHERE name = ?",
                     [status, counts["lines_read"], counts["accepted"], counts["quarantined"], counts["duplicates"],
                      labeled, report, name])
            self.sql("DELETE FROM ingest_receipts WHERE pool = ?", [name])

    def registered_pools(self, exclude: str | None = None) -> list[str]:
        return [r[0] for r in self.sql("SELECT name FROM pools WHERE status = 'registered' AND name IS DISTINCT FROM ? "
                                       "ORDER BY created_at", [exclude]).fetchall()]

    def pool_label_stats(self, pool: str) -> dict:
        """Size, mean step count, labeled fraction and gold error rate of a pool (for drift checks)."""
        n, mean_steps, labeled, erroneous = self.sql(
            "SELECT count(*), avg(t.num_steps), count(g.trajectory_id), count(*) FILTER (WHERE g.first_error >= 0) "
            "FROM pool_members m JOIN trajectories t ON t.id = m.trajectory_id "
            "LEFT JOIN gold_labels g ON g.trajectory_id = m.trajectory_id WHERE m.pool = ?", [pool]).fetchone()
        return {"trajectories": int(n), "mean_steps": float(mean_steps) if mean_steps is not None else None,
                "labeled_fraction": labeled / n if n else 0.0, "error_rate": erroneous / labeled if labeled else None}

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

    def pool_validation_facts(self, pool: str, shards: int, *, stage: str | None = None) -> str:
        """Materializes a pool's per-trajectory facts (the columns the data contract checks, never the
        full text) once, each row tagged with its shard (by id hash, so equal ids share a shard), into a
        temp table; returns its name. Read shards with `validation_shard`, then `drop_stage` it. One scan
        of the pool instead of one per shard.

        `stage`: the facts of the pool as `insert_stage(stage, pool)` will leave it, read before that insert
        (so the contract can run while it writes): the pool's members plus the first occurrence of each good
        staged id the pool lacks, with the stored text and gold label where a trajectory has them (the insert
        keeps those) and the staged ones otherwise."""
        members = ("SELECT t.id, t.question, t.steps, t.num_steps, g.trajectory_id IS NOT NULL AS labeled, "
                   "g.first_error, g.step_labels, g.error_kind "
                   "FROM pool_members m JOIN trajectories t ON t.id = m.trajectory_id "
                   "LEFT JOIN gold_labels g ON g.trajectory_id = m.trajectory_id WHERE m.pool = ?")
        params: list = [pool]
        if stage is not None:
            q = self._q(stage)
            pos = self.STAGE_POS  # the same first occurrence `insert_stage` keeps
            kept = lambda col: f"CASE WHEN t.id IS NULL THEN s.{col} ELSE t.{col} END AS {col}"  # noqa: E731
            gold = lambda col: f"CASE WHEN g.trajectory_id IS NULL THEN s.{col} ELSE g.{col} END AS {col}"  # noqa: E731
            members += (f" UNION ALL SELECT s.id, {kept('question')}, {kept('steps')}, {kept('num_steps')}, "
                        "g.trajectory_id IS NOT NULL OR s.first_error IS NOT NULL AS labeled, "
                        f"{gold('first_error')}, {gold('step_labels')}, {gold('error_kind')} "
                        f"FROM {q} s LEFT JOIN trajectories t ON t.id = s.id "
                        "LEFT JOIN gold_labels g ON g.trajectory_id = s.id "
                        f"WHERE {pos} IN (SELECT min({pos}) FROM {q} s WHERE reason IS NULL AND NOT EXISTS "
                        "(SELECT 1 FROM pool_members m WHERE m.pool = ? AND m.trajectory_id = s.id) GROUP BY id)")
            params.append(pool)
        name = f"validation_facts_{uuid.uuid4().hex[:12]}"
        self.sql(
            f"CREATE TEMP TABLE {self._q(name)} AS SELECT (hash(t.id) % ?)::INTEGER AS shard, "
            "t.id, t.question IS NULL AS question_null, length(t.question) AS question_chars, "
            "t.num_steps, len(t.steps) AS steps_len, list_max(list_transform(t.steps, lambda s: length(s))) AS max_step_chars, "
            "list_min(list_transform(t.steps, lambda s: length(s))) AS min_step_chars, "
            "list_bool_or(list_transform(t.steps, lambda s: s IS NULL)) AS has_null_step, "
            "t.first_error, len(t.step_labels) AS step_labels_len, t.error_kind, "
            "t.labeled::INTEGER AS labeled, (t.first_error >= 0)::DOUBLE AS is_error "
            f"FROM ({members}) t", [shards, *params])
        return name

    def pool_size_after_stage(self, pool: str, stage: str) -> int:
        """Trajectories `pool` will hold once `insert_stage(stage, pool)` has run."""
        q = self._q(stage)
        return int(self.sql(
            "SELECT (SELECT count(*) FROM pool_members m JOIN trajectories t ON t.id = m.trajectory_id "
            f"WHERE m.pool = ?) + (SELECT count(DISTINCT id) FROM {q} s WHERE reason IS NULL AND NOT EXISTS "
            "(SELECT 1 FROM pool_members m WHERE m.pool = ? AND m.trajectory_id = s.id))", [pool, pool]).fetchone()[0])

    def validation_shard(self, facts: str, shard: int):
        """One shard of a `pool_validation_facts` table as a pandas frame (without the shard column)."""
        return self.sql(f"SELECT * EXCLUDE (shard) FROM {self._q(facts)} WHERE shard = ?", [shard]).df()
