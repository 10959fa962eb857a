"""The temporary Prefect API a command starts when no server is configured dies with the command, even on
kill -9 (#41: Prefect's own ephemeral server outlived 3 of 3 killed commands). `actprm ingest` starts none."""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest

from actprm.processes import pid_alive

ACTPRM = str(Path(sys.executable).parent / "actprm")


def _children(pid: int) -> list[int]:
    try:
        return [int(c) for c in Path(f"/proc/{pid}/task/{pid}/children").read_text().split()]
    except OSError:
        return []


def _cmdline(pid: int) -> str:
    try:
        return Path(f"/proc/{pid}/cmdline").read_bytes().replace(b"\0", b" ").decode()
    except OSError:
        return ""


@pytest.mark.slow
@pytest.mark.skipif(sys.platform != "linux", reason="PR_SET_PDEATHSIG is Linux's")
def test_the_temporary_prefect_server_dies_with_a_killed_command_and_a_rerun_works(tmp_path):
    pool = tmp_path / "pool.jsonl"
    env = {k: v for k, v in os.environ.items() if k not in ("PREFECT_API_URL", "MLFLOW_TRACKING_URI")}
    env.update(ACTPRM_HOME=str(tmp_path / "home"))
    subprocess.run([ACTPRM, "synth", str(pool), "--n", "30"], env=env, check=True, capture_output=True)
    subprocess.run([ACTPRM, "ingest", str(pool), "--pool", "p"], env=env, check=True, capture_output=True)
    score = [ACTPRM, "score", "--pool", "p", "--preset", "tiny", "--json"]  # a command that runs a flow
    cmd = subprocess.Popen(score, env=env, stdout=subprocess.PIPE, stderr=subprocess.DEVNULL)
    server = None
    deadline = time.monotonic() + 120
    while server is None and time.monotonic() < deadline and cmd.poll() is None:
        server = next((c for c in _children(cmd.pid) if "prefect.server.api.server" in _cmdline(c)), None)
        time.sleep(0.05)
    assert server is not None, "the command started no temporary Prefect server"
    os.kill(cmd.pid, signal.SIGKILL)
    cmd.wait()
    deadline = time.monotonic() + 10
    while pid_alive(server) and time.monotonic() < deadline:
        time.sleep(0.1)
    assert not pid_alive(server), "the temporary Prefect server outlived its killed command"
    # A rerun in the same home gets its own server and finishes the ingest.
    rerun = subprocess.run(score, env=env, capture_output=True, text=True, timeout=600)
    assert rerun.returncode == 0, rerun.stderr[-2000:]
    out = json.loads(rerun.stdout.strip().splitlines()[-1])
    assert out["scored"] + out["skipped_already_scored"] == 30
