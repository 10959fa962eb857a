"""Scores: one row per (trajectory, model version), written in shards so a killed scoring run resumes."""

from __future__ import annotations

from pathlib import Path

from actprm.store.connection import Connection


class ScoreQueries(Connection):
    """Ensemble scores of trajectories per model version, their shards and exports."""

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

    def latest_scored_model_version(self, pool: str) -> str | None:
        row = self.sql("SELECT s.model_version FROM scores s JOIN pool_members pm ON pm.trajectory_id = s.trajectory_id "
                       "WHERE pm.pool = ? GROUP BY s.model_version ORDER BY max(s.scored_at) DESC LIMIT 1",
                       [pool]).fetchone()
        return row[0] if row else None
