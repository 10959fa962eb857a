"""study/scripts/: the study's command-line tools start, and refuse a bad variant before anything starts."""

from __future__ import annotations

import py_compile
import subprocess
import sys
from pathlib import Path

SCRIPTS = Path(__file__).resolve().parents[2] / "study" / "scripts"


def test_every_study_script_compiles():
    """A script no test imports can break unseen (bench/al_study.py, now study/scripts/run.py, once shipped an
    IndentationError)."""
    scripts = sorted(SCRIPTS.glob("*.py"))
    assert {p.name for p in scripts} >= {"run.py", "kinds.py", "portable.py", "signals.py", "scoreboard.py"}
    for script in scripts:
        py_compile.compile(str(script), doraise=True)


def test_the_study_script_refuses_a_bad_variant_in_one_line_before_anything_starts(tmp_path):
    out = subprocess.run([sys.executable, str(SCRIPTS / "run.py"), "--home", str(tmp_path),
                          "--set", "no_such_field=1"], capture_output=True, text=True, timeout=300)
    assert out.returncode == 2
    assert "cannot set study preset field 'no_such_field'" in out.stderr.strip().splitlines()[-1]
    assert not (tmp_path / "actprm.duckdb").exists()


def test_the_scoreboard_script_runs_from_any_directory(tmp_path):
    """Run as a file, not imported: it finds the `study` package from its own location."""
    out = subprocess.run([sys.executable, str(SCRIPTS / "scoreboard.py"), "--results", str(tmp_path)],
                         capture_output=True, text=True, timeout=300, cwd=tmp_path)
    assert out.returncode == 2 and out.stderr.strip() == f"no al_study.json under {tmp_path}"
