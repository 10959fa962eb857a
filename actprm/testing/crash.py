"""kill -9 of a real `actprm run` at a chosen point, then a plain rerun, and the facts a user cares about after it:
labels bought against the plan, versions registered per round, where the champion is, what resumed.

Used by tests/integration/test_run_resume.py and bench/resume_trials.py (repeated trials). The killed process
delivers SIGKILL to itself from inside the stage it is killed in (so the point is exact); its process group is
then killed too, as a shell's kill of the whole command would, so nothing it started outlives it.
"""

from __future__ import annotations

import json
import os
import shutil
import signal
import subprocess
import sys
import tempfile
from pathlib import Path
from typing import Any

# Where the killed run dies:
#   labels      - as round 1's training starts: its labels are bought and committed, nothing trained
#   training    - in round 1's training, after optimizer step KILL_STEP (checkpoints every step, so the latest is
#                 the one before it: on_metrics runs before that step's checkpoint is saved)
#   registered  - after round 1's model is registered and gated, before the round is recorded
KILL_POINTS = ("labels", "training", "registered")
KILL_STEP = 3
# The MLflow runs the killed run leaves RUNNING (which its rerun must end FAILED): its parent and round-1 runs, but
# after registration only the parent (logging the model ends the round's run FINISHED, tasks/register.py).
LEFT_RUNNING = {"labels": 2, "training": 2, "registered": 1}

_KILLED = """
import os, signal, sys
from pathlib import Path

from actprm.config import load_settings, runtime_environment

point = sys.argv[1]
sys.argv = ["actprm", *sys.argv[2:]]
settings = load_settings()
for key, value in runtime_environment(settings).items():  # as `actprm` sets it before importing Prefect
    os.environ.setdefault(key, value)
os.environ.setdefault("PREFECT_HOME", str((settings.home / "prefect").resolve()))


def die():
    os.kill(os.getpid(), signal.SIGKILL)


if point in ("labels", "training"):
    import tasks.train as train
    real = train.train_prm

    def train_prm(*args, **kwargs):
        if point == "labels":
            die()

        def on_metrics(step, metrics):
            if step == {kill_step}:
                die()
        return real(*args, on_metrics=on_metrics, **kwargs)
    train.train_prm = train_prm
elif point == "registered":
    import flows.prefect_tasks as prefect_tasks
    prefect_tasks.record_round_task = lambda *args, **kwargs: die()
else:
    raise SystemExit(f"unknown kill point {{point}}")

from actprm_cli.main import main
main()
""".replace("{kill_step}", str(KILL_STEP)).replace("{{", "{").replace("}}", "}")


def actprm_command() -> str:
    return shutil.which("actprm", path=str(Path(sys.executable).parent)) or "actprm"


def environment(home: Path, *, pool_size: int = 120, batch_size: int = 4) -> dict[str, str]:
    """A tiny, fast loop: the tiny preset, 4 heads, one epoch in micro-batches of `batch_size`, a checkpoint every
    optimizer step (checkpoint spacing does not shape the loop, so the rerun may differ there)."""
    env = {**os.environ, "ACTPRM_HOME": str(home), "ACTPRM_SYNTH__N": str(pool_size),
           "ACTPRM_MODEL__NUM_HEADS": "4", "ACTPRM_TRAIN__EPOCHS": "1",
           "ACTPRM_TRAIN__BATCH_SIZE": str(batch_size), "ACTPRM_TRAIN__CHECKPOINT_EVERY": "1"}
    for key in ("MLFLOW_TRACKING_URI", "ACTPRM_CONFIG", "PREFECT_HOME", "PREFECT_API_URL"):
        env.pop(key, None)
    return env


def run_args(rounds: int, labels_per_round: int) -> list[str]:
    return ["run", "--preset", "tiny", "--rounds", str(rounds), "--labels-per-round", str(labels_per_round), "--json"]


def killed_run(home: Path, point: str, rounds: int, labels_per_round: int, timeout: int = 900) -> int:
    """`actprm run` killed with SIGKILL at `point`; returns its exit status (-9 when it died there)."""
    home.mkdir(parents=True, exist_ok=True)
    # stderr to a file, not a pipe: a child the killed run started (its temporary Prefect server) would hold a pipe
    # open, and reading it to the end would wait for that child.
    with tempfile.TemporaryFile("w+") as err:
        proc = subprocess.Popen([sys.executable, "-c", _KILLED, point, *run_args(rounds, labels_per_round)],
                                env=environment(home), stdout=subprocess.DEVNULL, stderr=err, text=True,
                                start_new_session=True)
        try:
            proc.wait(timeout=timeout)
        finally:
            try:
                os.killpg(proc.pid, signal.SIGKILL)  # whatever it started, as a shell's kill of the job would
            except ProcessLookupError:
                pass
            proc.wait()
        if proc.returncode != -signal.SIGKILL:
            err.seek(0)
            raise RuntimeError(f"the run was to die at {point!r} but exited {proc.returncode}: {err.read()[-3000:]}")
    return proc.returncode


def rerun(home: Path, rounds: int, labels_per_round: int, *extra: str, timeout: int = 900) -> dict[str, Any]:
    """A plain `actprm run` with the same settings; its --json summary."""
    proc = subprocess.run([actprm_command(), *run_args(rounds, labels_per_round), *extra], env=environment(home),
                          capture_output=True, text=True, timeout=timeout, start_new_session=True)
    if proc.returncode != 0:
        raise RuntimeError(f"the rerun failed ({proc.returncode}): {proc.stderr[-3000:]}")
    lines = [line for line in proc.stdout.splitlines() if line.strip()]
    return json.loads(lines[-1])


def facts(home: Path, summary: dict[str, Any], model_name: str = "actprm-prm") -> dict[str, Any]:
    """What the home holds after the rerun."""
    import duckdb
    from mlflow.tracking import MlflowClient

    con = duckdb.connect(str(home / "actprm.duckdb"), read_only=True)
    try:
        labeled, distinct = con.execute("SELECT count(*), count(DISTINCT trajectory_id) FROM judge_labels "
                                        "WHERE status = 'labeled'").fetchone()
        paid = con.execute("SELECT count(*) FROM budget_ledger WHERE state = 'settled' AND labels = 1").fetchone()[0]
        loops = con.execute("SELECT loop_id, status FROM loops ORDER BY created_at").fetchall()
    finally:
        con.close()
    uri = summary["mlflow_tracking_uri"]
    client = MlflowClient(tracking_uri=uri, registry_uri=uri)
    versions = sorted(int(v.version) for v in client.search_model_versions(f"name='{model_name}'"))
    experiment = client.get_experiment_by_name("actprm")
    running = client.search_runs([experiment.experiment_id], "attributes.status = 'RUNNING'")
    failed = client.search_runs([experiment.experiment_id], "attributes.status = 'FAILED'")
    round_1 = home / "checkpoints" / "train" / summary["pool"] / summary["loop"] / "round-1"
    result = json.loads((round_1 / "train_result.json").read_text()) if (round_1 / "train_result.json").is_file() \
        else {}
    return {
        "labels_bought": int(labeled), "labels_distinct": int(distinct), "labels_paid": int(paid),
        "versions": versions, "round_versions": [r["model_version"] for r in summary["rounds"]],
        "rounds": [r["round"] for r in summary["rounds"]], "champion": summary["champion"],
        "loops": [list(row) for row in loops], "running_runs": len(running), "failed_runs": len(failed),
        "round_1_resumed_from_step": result.get("resumed_from_step"),
        "checkpoints_left": sorted(str(p.relative_to(home)) for p in (home / "checkpoints").rglob("checkpoints")),
    }


def trial(home: Path, point: str, rounds: int = 2, labels_per_round: int = 20) -> dict[str, Any]:
    """One kill at `point` and its rerun; the facts, and whether each promise held."""
    killed_run(home, point, rounds, labels_per_round)
    summary = rerun(home, rounds, labels_per_round)
    got = facts(home, summary)
    plan = rounds * labels_per_round
    got["checks"] = {
        "labels_within_plan": got["labels_bought"] <= plan,
        "no_label_paid_twice": got["labels_bought"] == got["labels_distinct"] == got["labels_paid"],
        "one_version_per_round": got["versions"] == sorted(got["round_versions"]) and len(got["versions"]) == rounds,
        "champion_is_a_round_version": got["champion"] in got["round_versions"],
        "one_loop_finished": [status for _, status in got["loops"]] == ["finished"],
        "no_run_left_running": got["running_runs"] == 0,
        "killed_runs_failed": got["failed_runs"] == LEFT_RUNNING[point],
        "checkpoints_removed": got["checkpoints_left"] == [],
    }
    if point == "training":
        got["checks"]["training_resumed"] = got["round_1_resumed_from_step"] == KILL_STEP - 1
    return got
