"""`actprm status` while another process holds the DuckDB file (DuckDB admits one process per file): it reports
what the labeling run last wrote of its spending instead of failing after a minute (#41)."""

from __future__ import annotations

import json
import os
import subprocess
import sys
import textwrap
import time
from pathlib import Path

import pytest

ACTPRM = str(Path(sys.executable).parent / "actprm")

HOLDER = textwrap.dedent("""
    import sys, time
    from actprm.judges import build_judge
    from actprm.store import Store
    from actprm.testing.pools import synth_pool
    from tasks.label import label_pool

    with Store(sys.argv[1]) as store:
        synth_pool(store, "p", 20)
        label_pool(store, "p", build_judge("verifier"), select="all", max_requests=7, progress=False)
        print("labeled", flush=True)
        time.sleep(60)  # still holding the file, as a long labeling run does
""")


def _status(home: Path) -> dict:
    env = {**os.environ, "ACTPRM_HOME": str(home)}
    env.pop("MLFLOW_TRACKING_URI", None)
    proc = subprocess.run([ACTPRM, "status", "--json"], env=env, capture_output=True, text=True, timeout=120)
    assert proc.returncode == 0, proc.stderr[-2000:]
    return json.loads(proc.stdout.strip().splitlines()[-1])


@pytest.mark.slow
def test_status_reports_spending_while_a_labeling_run_holds_the_store(tmp_path):
    home = tmp_path / "home"
    home.mkdir()
    holder = subprocess.Popen([sys.executable, "-c", HOLDER, str(home / "actprm.duckdb")], stdout=subprocess.PIPE,
                              text=True)
    try:
        assert holder.stdout.readline().strip() == "labeled"
        t0 = time.monotonic()
        locked = _status(home)
        assert time.monotonic() - t0 < 60  # not the minute-long wait for the lock
        assert locked["live"] is False and "held by another process" in locked["note"]
        assert locked["budget_left"]["global"]["spent"]["labels"] == 7
        assert locked["running_pool"]["pool"] == "p"
    finally:
        holder.kill()
        holder.wait()
    live = _status(home)
    assert "live" not in live and live["budget_left"]["global"]["spent"]["labels"] == 7
