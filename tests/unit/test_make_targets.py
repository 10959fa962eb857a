"""The Makefile's promises: `make test` (and so .ci/run) runs the whole suite and never lints; `make test-fast`
runs the unit and data tests; `make lint` runs ruff and the import-linter contracts."""

from __future__ import annotations

import os
import shutil
import subprocess
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[2]

pytestmark = pytest.mark.skipif(shutil.which("make") is None, reason="no make here")


def _commands(target: str) -> list[str]:
    """What `make TARGET` would run, without running it or rebuilding the venv (-o: take it as up to date)."""
    # Under `make test` itself this make is a sub-make: without --no-print-directory it adds "Entering directory".
    env = {k: v for k, v in os.environ.items() if k not in ("MAKEFLAGS", "MFLAGS", "MAKELEVEL")}
    out = subprocess.run(["make", "--no-print-directory", "-n", "-o", ".venv/.installed", target], cwd=ROOT,
                         capture_output=True, text=True, timeout=60, check=True, env=env)
    return out.stdout.splitlines()


def test_make_test_runs_the_whole_suite_and_never_lints():
    commands = _commands("test")
    assert commands == [".venv/bin/python -m pytest"]  # no path: pyproject's testpaths, every test directory
    assert "make test" in (ROOT / ".ci" / "run").read_text()


def test_make_test_fast_runs_the_unit_and_data_tests():
    assert _commands("test-fast") == [".venv/bin/python -m pytest tests/unit tests/data"]


def test_make_lint_runs_ruff_and_the_import_contracts_with_the_projects_configuration():
    assert _commands("lint") == [".venv/bin/python -m ruff check .", "PYTHONPATH=. .venv/bin/lint-imports --no-cache"]
    pyproject = (ROOT / "pyproject.toml").read_text()
    assert "[tool.ruff.lint]" in pyproject and "[tool.importlinter]" in pyproject
