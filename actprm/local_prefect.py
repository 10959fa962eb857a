"""The temporary Prefect API a command uses when no server is configured.

Left to itself, Prefect starts an ephemeral API server in a subprocess at the first flow call and stops it
at exit; a `kill -9` of the command leaves that server running for good (#41), and the command waits for
its start-up (about 8 s of every small command, #38). Instead the CLI starts the same server itself:
- tied to the command's process (PR_SET_PDEATHSIG), so it dies with it even on `kill -9`;
- at once, in the background, so its start-up overlaps the import of the flow's modules (torch and
  transformers take seconds), and the command only waits for whatever is left.
A configured server (`PREFECT_API_URL`, e.g. from `make serve`) is always used as it is.
"""

from __future__ import annotations

import atexit
import ctypes
import importlib
import os
import signal
import subprocess
import sys
import tomllib
from pathlib import Path


PR_SET_PDEATHSIG = 1  # linux/prctl.h
_server: subprocess.Popen | None = None


def _die_with_parent() -> None:  # pragma: no cover - runs in the child between fork and exec
    # The signal is sent when the thread that forked dies: start() runs on the main thread, which lives as
    # long as the command does.
    ctypes.CDLL(None, use_errno=True).prctl(PR_SET_PDEATHSIG, signal.SIGKILL)


def api_configured() -> bool:
    """Whether a Prefect API (a running server or Cloud) is configured, by env or the active profile, read
    without importing Prefect (seconds): PREFECT_API_URL in the environment or in PREFECT_HOME's profile."""
    if os.environ.get("PREFECT_API_URL"):
        return True
    home = Path(os.environ.get("PREFECT_HOME", "~/.prefect")).expanduser()
    try:
        profiles = tomllib.loads((home / "profiles.toml").read_text())
    except (OSError, tomllib.TOMLDecodeError):
        return False
    active = os.environ.get("PREFECT_PROFILE") or profiles.get("active", "ephemeral")
    return bool(profiles.get("profiles", {}).get(active, {}).get("PREFECT_API_URL"))


def start() -> str | None:
    """Start the temporary API unless one is configured; returns its URL (None: a configured one is used)."""
    global _server
    if _server is not None or api_configured():
        return None
    from actprm.servers import free_port  # here: importing it (httpx) at CLI start-up costs every command

    port = free_port()
    env = {**os.environ, "PREFECT_UI_ENABLED": "0", "PREFECT__SERVER_EPHEMERAL": "1", "PREFECT__SERVER_FINAL": "1"}
    # The same app and options Prefect's own ephemeral server runs (prefect.server.api.server.SubprocessASGIServer).
    _server = subprocess.Popen(
        [sys.executable, "-m", "uvicorn", "--factory", "prefect.server.api.server:create_app", "--host", "127.0.0.1",
         "--port", str(port), "--log-level", "error", "--lifespan", "on"],
        env=env, stdin=subprocess.DEVNULL, preexec_fn=_die_with_parent if sys.platform == "linux" else None)
    atexit.register(stop)
    url = f"http://127.0.0.1:{port}/api"
    os.environ["PREFECT_API_URL"] = url  # read by Prefect's settings when it is first imported
    return url


def ready(preload: str | None = None, timeout_s: float | None = None) -> None:
    """Import `preload` (the flow's module) while the temporary API starts, then wait until it answers."""
    if preload:
        importlib.import_module(preload)
    if _server is None:
        return
    from actprm.servers import wait_http

    timeout_s = timeout_s or float(os.environ.get("PREFECT_SERVER_EPHEMERAL_STARTUP_TIMEOUT_SECONDS", 180))
    wait_http(os.environ["PREFECT_API_URL"] + "/health", timeout=timeout_s, pid=_server.pid,
              what="the temporary Prefect server", interval=0.1)


def stop() -> None:
    global _server
    if _server is None:
        return
    _server.terminate()
    try:
        _server.wait(timeout=5)
    except subprocess.TimeoutExpired:
        _server.kill()
        _server.wait()
    _server = None
