"""Shared test setup: offline, no analytics, and a fresh ACTPRM_HOME per test that asks for one."""

from __future__ import annotations

import os

# Before anything imports Prefect, MLflow or transformers.
os.environ.setdefault("HF_HUB_OFFLINE", "1")
os.environ.setdefault("TRANSFORMERS_OFFLINE", "1")
os.environ.setdefault("PREFECT_SERVER_ANALYTICS_ENABLED", "false")
os.environ.setdefault("DO_NOT_TRACK", "1")
os.environ.setdefault("TOKENIZERS_PARALLELISM", "false")
os.environ.setdefault("PREFECT_SERVER_EPHEMERAL_STARTUP_TIMEOUT_SECONDS", "180")
os.environ.setdefault("GIT_PYTHON_REFRESH", "quiet")
os.environ.setdefault("MLFLOW_DISABLE_TELEMETRY", "true")
# Keep MLflow/Prefect from writing into the user's home or the repo.
os.environ.pop("MLFLOW_TRACKING_URI", None)

import pytest  # noqa: E402


@pytest.fixture
def actprm_home(tmp_path, monkeypatch):
    """An isolated work dir (DuckDB file, MLflow SQLite store, reports) for one test."""
    home = tmp_path / "actprm-home"
    monkeypatch.setenv("ACTPRM_HOME", str(home))
    monkeypatch.delenv("MLFLOW_TRACKING_URI", raising=False)
    monkeypatch.delenv("ACTPRM_CONFIG", raising=False)
    return home


@pytest.fixture(scope="session")
def prefect_harness():
    """A real, temporary Prefect server and database for tests that run flows."""
    from prefect.testing.utilities import prefect_test_harness

    with prefect_test_harness(server_startup_timeout=180):
        yield


@pytest.fixture(autouse=True)
def _no_mlflow_run_left_open():
    """A test that fails inside `mlflow.start_run()` must not leave its run active for the next test."""
    yield
    import sys

    mlflow = sys.modules.get("mlflow")
    if mlflow is not None:
        while mlflow.active_run() is not None:
            mlflow.end_run()
