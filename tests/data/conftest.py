"""Helpers for the ingest tests: tiny pools written to tmp_path, a fresh DuckDB store per test."""

from __future__ import annotations

import json
import os
from pathlib import Path

import pytest

os.environ.setdefault("HF_HUB_OFFLINE", "1")
os.environ.setdefault("PREFECT_SERVER_ANALYTICS_ENABLED", "false")
os.environ.setdefault("GX_ANALYTICS_ENABLED", "False")


def actprm_record(i: int, n_steps: int = 3, first_error: int = -1, **extra) -> dict:
    steps = [f"Step {k + 1} of trajectory {i}: {i} + {k} = {i + k}." for k in range(n_steps)]
    labels = [1] * n_steps if first_error < 0 else [1] * first_error + [0]
    rec = {"id": f"t{i}", "question": f"What is {i} plus a few numbers?", "steps": steps, "hard_labels": labels,
           "first_error": first_error, "error_kind": None if first_error < 0 else "arithmetic_slip"}
    rec.update(extra)
    return rec


def write_lines(path: Path, lines: list) -> Path:
    """Writes records (dicts are JSON-encoded, strings are written as they are) one per line."""
    path.parent.mkdir(parents=True, exist_ok=True)
    with open(path, "w", encoding="utf-8") as f:
        for line in lines:
            f.write((json.dumps(line, ensure_ascii=False) if not isinstance(line, str) else line) + "\n")
    return path


@pytest.fixture
def db(tmp_path) -> Path:
    return tmp_path / "home" / "actprm.duckdb"
