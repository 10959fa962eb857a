"""`actprm status`: pools, rounds, budget left and the champion, read from DuckDB and MLflow."""

from __future__ import annotations

import json
import time
from typing import Any

from actprm.config import Settings
from actprm.judges.budget import BudgetLimits, budget_left, ledger_snapshot_path
from actprm.store import Store, StoreLockedError
from actprm.store.ledger import left_under


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
    if settings.tracking_uri.startswith("sqlite:///") and not (settings.home / "mlflow.db").exists():
        return None
    from actprm.tracking import configure_mlflow
    from tasks.champion import champion_version

    configure_mlflow(settings.tracking_uri, settings.experiment, settings.artifact_root)
    return champion_version(settings.registry.model_name)


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
