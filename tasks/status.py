"""`actprm status`: pools, rounds, budget left and the champion, read from DuckDB and MLflow."""

from __future__ import annotations

from typing import Any

from actprm.config import Settings
from actprm.judges.budget import BudgetLimits, budget_left
from actprm.store import Store


def pipeline_status(settings: Settings) -> dict[str, Any]:
    limits = BudgetLimits.from_settings(settings.budget)
    with Store(settings.duckdb_path) as store:
        pools = store.pools()
        for p in pools:
            p["budget_left"] = budget_left(store, p["name"], limits)
        rounds = store.rounds(limit=10)
        overall = budget_left(store, None, limits)
        requests = store.ledger_summary()
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
