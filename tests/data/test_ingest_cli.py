"""`actprm ingest` as a user runs it: with no Prefect server configured it runs the stages without starting a
temporary one, and reports where the time went, in its JSON and in its MLflow run (#42)."""

from __future__ import annotations

import json
import os
import shutil
import subprocess
import sys
from pathlib import Path

from tasks.ingest import PHASES
from tests.data.conftest import actprm_record, write_lines

ACTPRM = shutil.which("actprm", path=str(Path(sys.executable).parent)) or "actprm"


def test_ingest_without_a_server_reports_every_phase_in_json_and_mlflow(tmp_path):
    path = write_lines(tmp_path / "in.jsonl", [actprm_record(i) for i in range(50)] + ["{oops", actprm_record(3)])
    home = tmp_path / "home"
    env = {k: v for k, v in os.environ.items() if not k.startswith(("PREFECT_", "MLFLOW_"))}
    env["ACTPRM_HOME"] = str(home)
    proc = subprocess.run([ACTPRM, "ingest", str(path), "--pool", "cli", "--json"], capture_output=True, text=True,
                          env=env, timeout=600)
    assert proc.returncode == 0, proc.stderr[-3000:]
    out = json.loads(proc.stdout)
    assert (out["status"], out["lines_read"], out["accepted"], out["quarantined"], out["duplicates"]) == \
        ("registered", 52, 50, 1, 1)
    seconds = out["seconds"]
    assert set(seconds) == set(PHASES) and all(v > 0 for v in seconds.values())
    assert seconds["total"] >= sum(v for k, v in seconds.items() if k != "total")
    assert not (home / "prefect" / "prefect.db").exists()  # no temporary Prefect server was started

    import mlflow

    client = mlflow.MlflowClient(f"sqlite:///{home / 'mlflow.db'}")
    (run,) = client.search_runs([client.get_experiment_by_name("actprm").experiment_id])
    assert run.info.run_name == "ingest-cli" and run.data.tags["actprm.ingest.status"] == "registered"
    assert run.data.metrics["ingest.lines_read"] == 52
    assert {k.removeprefix("ingest.seconds.") for k in run.data.metrics if k.startswith("ingest.seconds.")} == set(PHASES)
