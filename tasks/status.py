"""`actprm status`: pools, rounds, budget left and the champion, read from DuckDB and MLflow."""

from __future__ import annotations

import contextlib
import json
import sqlite3
import time
from pathlib import Path
from typing import Any

from actprm.config import Settings
from actprm.judges.budget import BudgetLimits, budget_left, ledger_snapshot_path
from actprm.store import Store, StoreLockedError
from actprm.store.ledger import left_under
from tasks.aliases import CHAMPION


def pipeline_status(settings: Settings) -> dict[str, Any]:
    limits = BudgetLimits.from_settings(settings.budget)
    if not settings.duckdb_path.exists():
        with Store(settings.duckdb_path):  # a new home: create the empty store, as every command does
            pass
    # Read-only: works from a read-only home, and never takes the writer's place.
    store = Store(settings.duckdb_path, read_only=True, lock_timeout_s=3.0)
    try:
        store.open()
    except StoreLockedError:
        return _status_while_locked(settings, limits)
    try:
        pools = store.pools()
        for p in pools:
            p["budget_left"] = budget_left(store, p["name"], limits)
        rounds = store.rounds(limit=10)
        overall = budget_left(store, None, limits)
        requests = store.ledger_summary()
    finally:
        store.close()
    return {
        "champion": _champion(settings),
        "pools": pools,
        "budget_left": overall,
        "judge_requests": requests,
        "rounds": rounds,
        "duckdb": str(settings.duckdb_path.resolve()),
        "mlflow_tracking_uri": settings.tracking_uri,
    }


def _champion(settings: Settings) -> int | None:
    # Reading the registry must not create an empty MLflow store as a side effect of `status`.
    if settings.tracking_uri.startswith("sqlite:///"):
        db = Path(settings.tracking_uri.removeprefix("sqlite:///"))
        if not db.exists():
            return None
        try:
            return _sqlite_alias(db, settings.registry.model_name, CHAMPION)
        except sqlite3.Error:
            pass  # a schema this reader doesn't know: ask MLflow itself
    from actprm.tracking import configure_mlflow
    from tasks.champion import champion_version

    configure_mlflow(settings.tracking_uri, settings.experiment, settings.artifact_root)
    return champion_version(settings.registry.model_name)


def _sqlite_alias(db: Path, model: str, alias: str) -> int | None:
    """An alias's version read straight from MLflow's SQLite store, read-only.

    Importing MLflow and opening its store (schema checks) takes ~3 s, most of `status`'s wall time; this is one
    query on the registry table MLflow >= 2.3 keeps aliases in.
    """
    with contextlib.closing(sqlite3.connect(f"file:{db}?mode=ro", uri=True, timeout=3.0)) as conn:
        row = conn.execute("SELECT version FROM registered_model_aliases "
                           "WHERE workspace = 'default' AND name = ? AND alias = ?", (model, alias)).fetchone()
    return int(row[0]) if row else None


def _status_while_locked(settings: Settings, limits: BudgetLimits) -> dict[str, Any]:
    """Another process holds the DuckDB file (a labeling run, say): what it last wrote of its spending."""
    path = ledger_snapshot_path(settings.duckdb_path)
    try:
        snap = json.loads(path.read_text())
    except (OSError, ValueError):
        raise StoreLockedError(f"DuckDB file {settings.duckdb_path} is in use by another process and no spending "
                               "snapshot exists yet; try again when it finishes") from None
    spent = snap["spent_global"]
    return {
        "live": False,
        "note": f"DuckDB is held by another process (pid {snap['pid']}); spending as it wrote it "
                f"{time.time() - snap['written_at']:.0f} s ago, reservations in flight counted at their worst case",
        "budget_left": {"global": {"spent": spent, "left": left_under(limits.caps("global"), spent)}},
        "running_pool": {"pool": snap["pool"], "spent": snap["spent_pool"]},
        "duckdb": str(settings.duckdb_path.resolve()),
        "mlflow_tracking_uri": settings.tracking_uri,
    }
