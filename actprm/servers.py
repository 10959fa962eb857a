"""Start, check and stop the local orchestration stack: Prefect server, MLflow server, work pool, worker.

`make serve` (scripts/serve.sh) and `make stop` (scripts/stop.sh) call `up` and `down` here, and the
integration test (tests/integration/test_servers.py) drives the very same functions on random free ports,
so what the test proves is what `make serve` does.

Every process is started in its own session (process group) with a pid file and a log under
`<ACTPRM_HOME>/servers/`; `down` ends exactly those process groups and nothing else.
"""

from __future__ import annotations

import argparse
import contextlib
import json
import os
import signal
import socket
import subprocess
import sys
import time
from dataclasses import dataclass, field
from pathlib import Path

import httpx

from actprm.errors import ActPRMError
from actprm.processes import Proc, descendants, members, pid_alive, start_time

# The work pool every deployment in prefect.yaml targets (the docker worker and the static test check it).
WORK_POOL = "actprm-process"
# One flow run at a time on the pool: every flow opens the same DuckDB file read-write, and DuckDB allows one
# writer process per file. The pool limit also orders an event-triggered run after the run that emitted the event.
WORK_POOL_CONCURRENCY = 1
REPO_ROOT = Path(__file__).resolve().parent.parent
# Stop order: the worker first (it holds flow runs), then the servers it talks to.
SERVICES = ("worker", "mlflow", "prefect")


@dataclass(frozen=True)
class Stack:
    """Where the stack lives and listens. `home` is ACTPRM_HOME; all state (DBs, logs, pids) goes under it."""

    home: Path
    prefect_port: int = 4200
    mlflow_port: int = 5000
    host: str = "127.0.0.1"
    repo: Path = REPO_ROOT
    extra_env: dict[str, str] = field(default_factory=dict)

    @property
    def servers_dir(self) -> Path:
        return self.home / "servers"

    @property
    def prefect_ui_url(self) -> str:
        return f"http://{self.host}:{self.prefect_port}"

    @property
    def prefect_api_url(self) -> str:
        return f"{self.prefect_ui_url}/api"

    @property
    def mlflow_url(self) -> str:
        return f"http://{self.host}:{self.mlflow_port}"

    def environment(self) -> dict[str, str]:
        """Environment of every process of the stack and of `prefect deploy`; flow runs inherit the worker's."""
        env = dict(os.environ)
        env.update(
            {
                "HF_HUB_OFFLINE": "1",
                "TRANSFORMERS_OFFLINE": "1",
                "HF_DATASETS_OFFLINE": "1",
                "TOKENIZERS_PARALLELISM": "false",
                "DO_NOT_TRACK": "1",
                "PREFECT_SERVER_ANALYTICS_ENABLED": "false",
                "MLFLOW_DISABLE_TELEMETRY": "true",
                # MLflow 3's server otherwise forks ~7 huey job consumers (GenAI jobs this pipeline never uses).
                "MLFLOW_SERVER_ENABLE_JOB_EXECUTION": "false",
                "GIT_PYTHON_REFRESH": "quiet",
                "PYTHONUNBUFFERED": "1",
                # Prefect's SQLite DB and UI build live under ACTPRM_HOME, so `make clean` resets everything.
                "PREFECT_HOME": str(self.home / "prefect"),
                "PREFECT_API_URL": self.prefect_api_url,
                "PREFECT_UI_API_URL": self.prefect_api_url,
                # Flow runs log to MLflow through the server, which stores artifacts under ACTPRM_HOME.
                "MLFLOW_TRACKING_URI": self.mlflow_url,
                "ACTPRM_MLFLOW_TRACKING_URI": self.mlflow_url,
                "ACTPRM_HOME": str(self.home),
                # prefect.yaml's pull step `set_working_directory: {{ $ACTPRM_REPO }}` reads this.
                "ACTPRM_REPO": str(self.repo),
            }
        )
        env.update(self.extra_env)
        return env


def free_port(host: str = "127.0.0.1") -> int:
    """A port nobody listens on right now (the OS picks it)."""
    with socket.socket() as s:
        s.bind((host, 0))
        return s.getsockname()[1]


def _port_taken(host: str, port: int) -> bool:
    with socket.socket() as s:
        return s.connect_ex((host, port)) == 0


def _pid_file(stack: Stack, name: str) -> Path:
    return stack.servers_dir / f"{name}.pid"


def start_service(stack: Stack, name: str, argv: list[str], env: dict[str, str]) -> int:
    """Start `argv` in the background in its own process group; pid to `servers/<name>.pid`, output to `<name>.log`."""
    stack.servers_dir.mkdir(parents=True, exist_ok=True)
    pid_file = _pid_file(stack, name)
    running = _service_pid(pid_file, name)
    if running is not None:
        raise ActPRMError(f"{name} already runs (pid {running}); run `make stop` first")
    log = open(stack.servers_dir / f"{name}.log", "ab")
    proc = subprocess.Popen(
        argv, cwd=stack.repo, env=env, stdout=log, stderr=subprocess.STDOUT, stdin=subprocess.DEVNULL,
        start_new_session=True,
    )
    log.close()
    # With its start time: a pid the system gives out again after a crash or reboot is then never taken for it.
    pid_file.write_text(f"{proc.pid} {start_time(proc.pid) or ''}".strip())
    return proc.pid


def _bin(name: str) -> str:
    # Executables of the interpreter running us (the project's .venv), never whatever is first on PATH.
    return str(Path(sys.executable).parent / name)


def start_prefect_server(stack: Stack, *, ui: bool = True, scheduler: bool = True) -> int:
    argv = [_bin("prefect"), "server", "start", "--host", stack.host, "--port", str(stack.prefect_port),
            "--analytics-off", "--ui" if ui else "--no-ui", "--scheduler" if scheduler else "--no-scheduler"]
    return start_service(stack, "prefect", argv, stack.environment())


def start_mlflow_server(stack: Stack, *, workers: int = 1) -> int:
    # Same SQLite file as the CLI's default tracking URI (Settings.tracking_uri), so runs logged with or
    # without the server land in one registry; --serve-artifacts proxies uploads into ACTPRM_HOME/mlartifacts.
    argv = [_bin("mlflow"), "server", "--host", stack.host, "--port", str(stack.mlflow_port),
            "--backend-store-uri", f"sqlite:///{(stack.home / 'mlflow.db').resolve()}",
            "--artifacts-destination", str((stack.home / "mlartifacts").resolve()),
            "--serve-artifacts", "--workers", str(workers)]
    return start_service(stack, "mlflow", argv, stack.environment())


def start_worker(stack: Stack, *, pool: str = WORK_POOL, name: str = "actprm-worker") -> int:
    argv = [_bin("prefect"), "worker", "start", "--pool", pool, "--type", "process", "--name", name,
            "--no-create-pool-if-not-found"]
    return start_service(stack, "worker", argv, stack.environment())


def wait_http(url: str, *, timeout: float, pid: int | None = None, what: str = "server", log: Path | None = None,
              interval: float = 0.5) -> None:
    """Poll `url` every `interval` seconds until it answers 200; fail early when the process behind it died."""
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if pid is not None and not pid_alive(pid):
            raise ActPRMError(f"{what} exited during startup; see {log or 'its log'}")
        try:
            if httpx.get(url, timeout=5).status_code == 200:
                return
        except httpx.HTTPError:
            pass
        time.sleep(interval)
    raise ActPRMError(f"{what} did not answer {url} within {timeout:.0f}s; see {log or 'its log'}")


def ensure_work_pool(api_url: str, *, pool: str = WORK_POOL, concurrency_limit: int | None = WORK_POOL_CONCURRENCY) -> None:
    """Create the `process` work pool (or reset its concurrency limit when it exists)."""
    from prefect.workers.process import ProcessWorker

    body = {"name": pool, "type": "process", "concurrency_limit": concurrency_limit,
            "base_job_template": ProcessWorker.get_default_base_job_template()}
    r = httpx.post(f"{api_url}/work_pools/", json=body, timeout=30)
    if r.status_code == 409:
        r = httpx.patch(f"{api_url}/work_pools/{pool}", json={"concurrency_limit": concurrency_limit}, timeout=30)
    if r.status_code >= 400:
        raise ActPRMError(f"could not create work pool {pool!r}: HTTP {r.status_code} {r.text[:200]}")


def prefect_cli(argv: list[str]) -> int:
    """Run the `prefect` CLI in this process, with the client fix below; returns its exit code."""
    _fix_worker_filter_request()
    from prefect.cli import app

    sys.argv = ["prefect", *argv]  # the prefect entry point reads its arguments from sys.argv
    try:
        app()
    except SystemExit as e:
        return int(e.code or 0)
    return 0


def _fix_worker_filter_request() -> None:
    # prefect 3.8.8's client posts `"limit": null, "offset": null` to /work_pools/<pool>/workers/filter and
    # FastAPI 0.154 (pinned) answers 422 to an explicit null for an `int` body field. `prefect deploy` makes
    # that call after the FIRST deployment only to print a "start a worker" hint, so plain `prefect deploy
    # --all` stops after one deployment. Sending the server's own defaults instead fixes it.
    from prefect.client.orchestration import PrefectClient

    original = PrefectClient.read_workers_for_work_pool
    if getattr(original, "_actprm_fixed", False):
        return

    async def read_workers_for_work_pool(self, work_pool_name, worker_filter=None, offset=None, limit=None):
        return await original(self, work_pool_name, worker_filter=worker_filter, offset=offset or 0,
                              limit=limit if limit is not None else 200)

    read_workers_for_work_pool._actprm_fixed = True
    PrefectClient.read_workers_for_work_pool = read_workers_for_work_pool


def deploy_all(stack: Stack, *, timeout: float = 600) -> str:
    """`prefect deploy --all` (prefect.yaml) from the repo root against the stack's server; returns its output."""
    proc = subprocess.run(
        [sys.executable, "-m", "actprm.servers", "prefect", "--no-prompt", "deploy", "--all"],
        cwd=stack.repo, env=stack.environment(),
        capture_output=True, text=True, timeout=timeout,
    )
    out = proc.stdout + proc.stderr
    (stack.servers_dir / "deploy.log").write_text(out)
    if proc.returncode != 0:
        tail = " | ".join(out.strip().splitlines()[-3:])
        raise ActPRMError(f"prefect deploy --all failed (see {stack.servers_dir / 'deploy.log'}): {tail}")
    return out


def wait_worker_online(stack: Stack, *, pool: str = WORK_POOL, timeout: float, pid: int | None = None) -> None:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if pid is not None and not pid_alive(pid):
            raise ActPRMError(f"worker exited during startup; see {stack.servers_dir / 'worker.log'}")
        r = httpx.post(f"{stack.prefect_api_url}/work_pools/{pool}/workers/filter", json={}, timeout=10)
        if r.status_code == 200 and any(w.get("status") == "ONLINE" for w in r.json()):
            return
        time.sleep(1)
    raise ActPRMError(f"no worker came online on pool {pool!r} within {timeout:.0f}s")


# States a flow run holds only while a worker (or the flow-run process it started) is alive to move it on.
LIVE_STATES = ("PENDING", "RUNNING", "CANCELLING")


def _orphaned_flow_runs(api_url: str, pool: str) -> list[dict]:
    """Flow runs left live on `pool`, and (recursively) their live subflow runs, which have no work pool."""
    live = {"state": {"type": {"any_": list(LIVE_STATES)}}}
    r = httpx.post(f"{api_url}/flow_runs/filter", json={"flow_runs": live, "work_pools": {"name": {"any_": [pool]}}},
                   timeout=30)
    r.raise_for_status()
    found, parents = list(r.json()), [run["id"] for run in r.json()]
    while parents:
        r = httpx.post(f"{api_url}/flow_runs/filter",
                       json={"flow_runs": {**live, "parent_flow_run_id": {"any_": parents}}}, timeout=30)
        r.raise_for_status()
        new = [run for run in r.json() if run["id"] not in {f["id"] for f in found}]
        found += new
        parents = [run["id"] for run in new]
    return found


def recover_orphaned_runs(stack: Stack, *, pool: str = WORK_POOL) -> list[str]:
    """After the stack died mid-run (`make stop`, kill -9, a reboot) its flow runs stay RUNNING: they hold the work
    pool's only slot and their deployment's, so every later run waits `Late`. Called by `up` before the worker starts,
    when no worker of this stack can own a live run: each live run on `pool` (and its subflow runs) is set Crashed,
    which releases its concurrency slots, and the MLflow runs it opened that are still RUNNING are set FAILED. A
    retry of a crashed run resumes from durable state (docs/OPERATIONS.md, "Retrying a failed flow run").
    Returns the ids of the flow runs it set Crashed."""
    orphans = _orphaned_flow_runs(stack.prefect_api_url, pool)
    message = "the stack stopped while this run was live; marked Crashed by the next `make serve`"
    for run in orphans:
        # force: the server would otherwise refuse some transitions (e.g. PENDING -> CRASHED); the minimal policy
        # it then applies still releases the deployment's concurrency slot.
        r = httpx.post(f"{stack.prefect_api_url}/flow_runs/{run['id']}/set_state",
                       json={"state": {"type": "CRASHED", "name": "Crashed", "message": message}, "force": True},
                       timeout=30)
        if r.status_code >= 400:
            raise ActPRMError(f"could not mark orphaned flow run {run['name']} Crashed: HTTP {r.status_code} "
                              f"{r.text[:200]}")
    if orphans:
        _fail_mlflow_runs(stack.mlflow_url, [run["id"] for run in orphans])
    return [run["id"] for run in orphans]


def _fail_mlflow_runs(tracking_uri: str, flow_run_ids: list[str]) -> None:
    """MLflow runs still RUNNING that these flow runs opened (tagged `prefect.flow_run_id`, actprm.tracking) -> FAILED."""
    from mlflow import MlflowClient

    client = MlflowClient(tracking_uri=tracking_uri)
    experiments = [e.experiment_id for e in client.search_experiments()]
    if not experiments:
        return
    for flow_run_id in flow_run_ids:
        for run in client.search_runs(experiments, filter_string=f"tags.`prefect.flow_run_id` = '{flow_run_id}' "
                                                                 "and attributes.status = 'RUNNING'"):
            client.set_terminated(run.info.run_id, status="FAILED")


def up(stack: Stack, *, ui: bool = True, scheduler: bool = True, deploy: bool = True, worker: bool = True,
       mlflow_workers: int = 1, timeout: float = 240) -> dict:
    """Start everything and wait until healthy. On failure, stops what it started and raises ActPRMError.

    `scheduler=False` keeps the schedules on the deployments but creates no scheduled runs. Flow runs a dead stack
    left live are set Crashed before the worker starts (`recover_orphaned_runs`).
    """
    # Refused before anything starts, so the clean-up below only ever stops what this call started (a second
    # `make serve` on other ports used to fail half-way and take the running stack down with it).
    running = sorted(name for name, pid in status(stack.home).items() if pid is not None)
    if running:
        raise ActPRMError(f"the stack under {stack.home} already runs ({', '.join(running)}); "
                          "run `make stop` first")
    for port, what in ((stack.prefect_port, "Prefect"), (stack.mlflow_port, "MLflow")):
        if _port_taken(stack.host, port):
            raise ActPRMError(f"port {port} for the {what} server is in use; stop it or pick another port")
    stack.home.mkdir(parents=True, exist_ok=True)
    log = stack.servers_dir
    try:
        prefect_pid = start_prefect_server(stack, ui=ui, scheduler=scheduler)
        mlflow_pid = start_mlflow_server(stack, workers=mlflow_workers)
        wait_http(f"{stack.prefect_api_url}/health", timeout=timeout, pid=prefect_pid, what="Prefect server",
                  log=log / "prefect.log")
        wait_http(f"{stack.mlflow_url}/health", timeout=timeout, pid=mlflow_pid, what="MLflow server",
                  log=log / "mlflow.log")
        ensure_work_pool(stack.prefect_api_url)
        recovered = recover_orphaned_runs(stack)
        if deploy:
            deploy_all(stack, timeout=timeout * 2)
        if worker:
            worker_pid = start_worker(stack)
            wait_worker_online(stack, timeout=timeout, pid=worker_pid)
    except BaseException:
        down(stack.home)
        raise
    return {"prefect_ui": stack.prefect_ui_url, "prefect_api": stack.prefect_api_url, "mlflow_ui": stack.mlflow_url,
            "work_pool": WORK_POOL, "logs": str(log), "crashed": recovered}


def down(home: Path, *, grace_s: float = 15) -> list[str]:
    """Stop the services whose pid files are under `home/servers` (their whole process groups)."""
    servers = Path(home) / "servers"
    stopped: list[str] = []
    for name in SERVICES:
        pid_file = servers / f"{name}.pid"
        pid = _service_pid(pid_file, name)
        if pid is not None:
            below = descendants(pid)  # before the service dies and its children are re-parented
            _stop_group(pid, grace_s, below)
            _stop_left_behind(pid, below, grace_s)
            stopped.append(name)
        elif (pid := _leaderless_group(pid_file)) is not None:
            _stop_group(pid, grace_s, [])
            stopped.append(name)
        pid_file.unlink(missing_ok=True)
    return stopped


# What each service's command line holds: a pid file left by a crash may name a pid the system has since given to
# another program, which must not be signalled.
_COMMAND = {"prefect": "prefect", "mlflow": "mlflow", "worker": "prefect"}


def _read_pid_file(pid_file: Path) -> tuple[int, int | None] | None:
    """(pid, start time) from a pid file; files written before they held a start time give (pid, None)."""
    try:
        fields = pid_file.read_text().split()
        return int(fields[0]), (int(fields[1]) if len(fields) > 1 else None)
    except (OSError, IndexError, ValueError):
        return None


def _service_pid(pid_file: Path, name: str) -> int | None:
    """The pid in `pid_file` when that process is still the service `name` (None when it is not, or no file)."""
    pid, started = _read_pid_file(pid_file) or (None, None)
    if pid is None:
        return None
    if started is not None and start_time(pid) != started:
        return None  # gone, or the pid now names a process started later (older pid files hold no start time)
    with contextlib.suppress(OSError):
        if os.getsid(pid) != pid:
            return None  # every service leads its own session (start_service); whatever got its pid may not
    return pid if _serving(pid, name) else None


def _leaderless_group(pid_file: Path) -> int | None:
    """The service's process group when the service itself is gone but processes of its group live on (the mlflow
    CLI killed, its uvicorn serving on): they would hold the port with no pid file left to stop them. Only for pid
    files with a start time, which prove the group was the service's; a group id is not given out again while the
    group has a member."""
    pid, started = _read_pid_file(pid_file) or (None, None)
    if started is None or start_time(pid) is not None or not members({pid}, set()):
        return None
    return pid


def _serving(pid: int, name: str) -> bool:
    """Whether `pid` is alive and is the service `name`."""
    if not pid_alive(pid):
        return False
    try:
        argv = Path(f"/proc/{pid}/cmdline").read_bytes().decode(errors="replace").split("\0")
    except OSError:
        return True  # no /proc (not Linux): trust the pid file
    # An argument that is the program itself (`.venv/bin/prefect`, run by its interpreter), not a substring of the
    # whole command line: any process of a checkout under a folder named `*prefect*` or `*mlflow*` would match that.
    return any(Path(arg).name == _COMMAND.get(name, name) for arg in argv)


def _stop_group(pid: int, grace_s: float, below: list[Proc]) -> None:
    # Each service is a session leader (start_new_session), so its pgid is its pid: this reaches the children
    # it spawned (uvicorn workers, flow-run processes) and nothing else.
    try:
        os.killpg(pid, signal.SIGTERM)
    except (ProcessLookupError, PermissionError):  # gone, or not ours to stop
        return
    deadline = time.monotonic() + grace_s
    while time.monotonic() < deadline and (pid_alive(pid) or members({pid}, set())):
        try:
            os.waitpid(pid, os.WNOHANG)  # reap it when it is our child (tests); harmless otherwise
        except ChildProcessError:
            pass
        time.sleep(0.2)
    if pid_alive(pid):  # what it started during the grace, seen before SIGKILL hands it to init
        below.extend(descendants(pid))
    if members({pid}, set()):  # only a group that still has members: an empty one's id may be given out again
        with contextlib.suppress(ProcessLookupError, PermissionError):
            os.killpg(pid, signal.SIGKILL)  # stragglers in the group, or a leader that ignored SIGTERM


def _stop_left_behind(service: int, below: list[Proc], grace_s: float) -> None:
    """Stops what a service had started outside its process group and left running: the worker's flow runs sit in
    sessions of their own, so the group signal misses them. The groups and sessions they lead get SIGTERM (so a
    flow run's data-loader workers go too), then, looked up again, SIGKILL after `grace_s`: a process one of them
    started during the grace is in them too.

    Only groups and sessions a process below the service leads, never the caller's: and once one is found empty
    it is dropped, since its id may then be given to a new process."""
    leaders = {p.pid for p in below}
    ids = ({p.group for p in below} | {p.session for p in below}) & leaders
    ids -= {service, os.getpgrp(), os.getsid(0)}
    known = {(p.pid, p.started) for p in below}

    def look() -> list[Proc]:
        # An id is kept while a process already seen in it is there: one found without any may have been given out
        # again (it emptied while the service was being stopped), and is dropped for good.
        left = members(ids, ids)
        ids.intersection_update({i for p in left if (p.pid, p.started) in known for i in (p.group, p.session)})
        left = [p for p in left if p.group in ids or p.session in ids]
        known.update((p.pid, p.started) for p in left)
        return left

    def signal_all(sig: int) -> bool:
        left = look()
        for p in left:
            with contextlib.suppress(ProcessLookupError, PermissionError):
                os.kill(p.pid, sig)
        return bool(left)

    deadline = time.monotonic() + grace_s
    if signal_all(signal.SIGTERM):
        while time.monotonic() < deadline:
            for p in below:
                with contextlib.suppress(ChildProcessError):
                    os.waitpid(p.pid, os.WNOHANG)
            if not look():
                return
            time.sleep(0.2)
        signal_all(signal.SIGKILL)


def status(home: Path) -> dict[str, int | None]:
    """pid of each running service (None when not running)."""
    out: dict[str, int | None] = {}
    for name in SERVICES:
        out[name] = _service_pid(Path(home) / "servers" / f"{name}.pid", name)
    return out


def main(argv: list[str] | None = None) -> int:
    argv = sys.argv[1:] if argv is None else argv
    if argv[:1] == ["prefect"]:  # `python -m actprm.servers prefect deploy --all`: the prefect CLI, fixed
        return prefect_cli(argv[1:])
    parser = argparse.ArgumentParser(prog="python -m actprm.servers", description=__doc__.splitlines()[0])
    parser.add_argument("command", choices=["up", "down", "status", "deploy"],
                        help="deploy: create the work pool and `prefect deploy --all` against PREFECT_API_URL; "
                             "or `prefect ...`: the prefect CLI")
    parser.add_argument("--home", default=os.environ.get("ACTPRM_HOME", ".actprm"), help="ACTPRM_HOME")
    parser.add_argument("--prefect-port", type=int, default=int(os.environ.get("PREFECT_SERVER_API_PORT", 4200)))
    parser.add_argument("--mlflow-port", type=int, default=int(os.environ.get("MLFLOW_PORT", 5000)))
    parser.add_argument("--no-deploy", action="store_true", help="skip `prefect deploy --all`")
    parser.add_argument("--no-worker", action="store_true", help="do not start a worker")
    parser.add_argument("--timeout", type=float, default=240, help="seconds to wait for each service")
    args = parser.parse_args(argv)
    home = Path(args.home).resolve()
    try:
        if args.command == "down":
            stopped = down(home)
            print(f"stopped: {', '.join(stopped) or 'nothing was running'}")
        elif args.command == "status":
            print(json.dumps(status(home), indent=2))
        elif args.command == "deploy":
            # Against an already running server (docker compose's `deploy` service, or after editing prefect.yaml).
            from prefect.settings import PREFECT_API_URL

            api_url = PREFECT_API_URL.value()
            if not api_url:
                raise ActPRMError("PREFECT_API_URL is not set; point it at the Prefect server's /api")
            ensure_work_pool(api_url)
            os.chdir(os.environ.get("ACTPRM_REPO") or REPO_ROOT)
            return prefect_cli(["--no-prompt", "deploy", "--all"])
        else:
            stack = Stack(home=home, prefect_port=args.prefect_port, mlflow_port=args.mlflow_port)
            urls = up(stack, deploy=not args.no_deploy, worker=not args.no_worker, mlflow_workers=2,
                      timeout=args.timeout)
            print(f"Prefect UI:   {urls['prefect_ui']}")
            print(f"Prefect API:  {urls['prefect_api']}   (export PREFECT_API_URL={urls['prefect_api']})")
            print(f"MLflow UI:    {urls['mlflow_ui']}   (export MLFLOW_TRACKING_URI={urls['mlflow_ui']})")
            print(f"Work pool:    {urls['work_pool']}  (one worker, concurrency 1)")
            print(f"Logs, pids:   {urls['logs']}")
            if urls["crashed"]:
                print(f"Recovered:    {len(urls['crashed'])} flow run(s) left running by the last stop, now Crashed "
                      "(retry them from the UI to resume)")
            print("Stop with:    make stop")
    except ActPRMError as e:
        print(f"error: {e}", file=sys.stderr)
        return 1
    except (httpx.HTTPError, subprocess.TimeoutExpired) as e:  # a server down or too slow to answer
        print(f"error: {type(e).__name__}: {str(e).splitlines()[0] if str(e) else ''}", file=sys.stderr)
        return 1
    return 0


if __name__ == "__main__":
    sys.exit(main())
