"""Selection and rounds: ranking a pool for the judge, and what each active-learning round selected and did."""

from __future__ import annotations

from actprm.store.connection import Connection, same_family


class RoundQueries(Connection):
    """Acquisition ranking, each round's selection and its outcome."""

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
             "AND " + same_family("j.prompt_version", "$prompt") + " AND j.status = 'labeled')) "
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
