"""Loops: an active-learning run over a pool, kept open until it finishes so a rerun continues it."""

from __future__ import annotations

from actprm.store.connection import Connection


class LoopQueries(Connection):
    """Active-learning loops and who owns them."""

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
