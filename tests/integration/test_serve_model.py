"""Serving the registered champion the MLflow way: a real `mlflow models serve` process on a free port answers an
HTTP request with the pipeline's step scores (docs/SERVING.md)."""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import time
import urllib.error
import urllib.request
from pathlib import Path

import pytest
import torch

from actprm.servers import free_port

MLFLOW = str(Path(sys.executable).parent / "mlflow")
REPO = Path(__file__).resolve().parents[2]


def _post(url: str, body: dict) -> dict:
    req = urllib.request.Request(url, data=json.dumps(body).encode(), headers={"Content-Type": "application/json"})
    with urllib.request.urlopen(req, timeout=60) as resp:
        return json.loads(resp.read())


def _wait_ready(proc: subprocess.Popen, url: str, log: Path, timeout: float = 420) -> None:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if proc.poll() is not None:
            pytest.fail(f"mlflow models serve exited with {proc.returncode}:\n{log.read_text()[-3000:]}")
        try:
            with urllib.request.urlopen(url, timeout=5) as resp:
                if resp.status == 200:
                    return
        except (urllib.error.URLError, ConnectionError, TimeoutError):
            time.sleep(2)
    pytest.fail(f"mlflow models serve not ready after {timeout:.0f}s:\n{log.read_text()[-3000:]}")


@pytest.mark.slow
def test_mlflow_models_serve_returns_the_champions_step_scores(tmp_path, actprm_home, monkeypatch):
    from mlflow.tracking import MlflowClient

    from actprm.config import load_settings
    from actprm.tracking import configure_mlflow
    from models import StepBatcher, build_prm
    from models.uncertainty import step_stats
    from tasks.register import log_model

    model, tokenizer = build_prm("tiny", num_heads=4, seed=0)
    model.eval()
    questions = ["What is 2+3?", "Compute 7*6."]
    steps = [["2+3 = 5.", "So the answer is 5."], ["7*6 = 42", "so 42", "The answer is 42."]]
    expected = [step_stats(p) for p in model.step_probabilities(StepBatcher(tokenizer, 1024).encode(questions, steps))]
    model.save_pretrained(tmp_path / "saved", tokenizer)
    settings = load_settings()
    # configure_mlflow exports MLFLOW_TRACKING_URI; set here, it is undone after the test.
    monkeypatch.setenv("MLFLOW_TRACKING_URI", settings.tracking_uri)
    configure_mlflow(settings.tracking_uri, settings.experiment, settings.artifact_root)
    version = log_model(tmp_path / "saved", name="actprm-prm")
    MlflowClient().set_registered_model_alias("actprm-prm", "champion", version)

    port = free_port()
    log = tmp_path / "serve.log"
    # The documented command, run from the project's environment as docs/SERVING.md shows it.
    # mlflow starts `uvicorn` from PATH: the venv's bin/ comes first, as in an activated venv.
    env = {**os.environ, "MLFLOW_TRACKING_URI": settings.tracking_uri, "HF_HUB_OFFLINE": "1",
           "PATH": os.pathsep.join([str(Path(MLFLOW).parent), os.environ.get("PATH", "")]),
           "PYTHONPATH": os.pathsep.join([str(REPO), os.environ.get("PYTHONPATH", "")])}
    with log.open("w") as out:
        proc = subprocess.Popen([MLFLOW, "models", "serve", "-m", "models:/actprm-prm@champion", "--env-manager",
                                 "local", "--host", "127.0.0.1", "--port", str(port), "--workers", "1"],
                                stdout=out, stderr=subprocess.STDOUT, env=env, cwd=tmp_path, start_new_session=True)
    try:
        _wait_ready(proc, f"http://127.0.0.1:{port}/ping", log)
        body = {"dataframe_split": {"columns": ["question", "steps"],
                                    "data": [[q, s] for q, s in zip(questions, steps)]}}
        predictions = _post(f"http://127.0.0.1:{port}/invocations", body)["predictions"]
        assert len(predictions) == 2
        for row, (mu, sigma), s in zip(predictions, expected, steps):
            assert row["truncated_steps"] == 0 and len(row["step_scores"]) == len(s)
            torch.testing.assert_close(torch.tensor(row["step_scores"], dtype=torch.float64), mu, atol=1e-6, rtol=0)
            torch.testing.assert_close(torch.tensor(row["step_std"], dtype=torch.float64), sigma, atol=1e-6, rtol=0)
            assert isinstance(row["uncertain"], bool)
        # The model's own serving example (the body docs/SERVING.md shows) is accepted as it is.
        example = json.loads(Path(_model_dir(version), "serving_input_example.json").read_text())
        [answer] = _post(f"http://127.0.0.1:{port}/invocations", example)["predictions"]
        assert len(answer["step_scores"]) == 2 and isinstance(answer["step_scores"][0], float)
        # Steps that are not a list are the client's error (HTTP 400, naming the column), not a server error.
        bad = {"dataframe_split": {"columns": ["question", "steps"], "data": [["q", "not a list"]]}}
        with pytest.raises(urllib.error.HTTPError) as err:
            _post(f"http://127.0.0.1:{port}/invocations", bad)
        assert err.value.code == 400 and "steps" in err.value.read().decode()
    finally:
        _stop(proc)


def _model_dir(version: int) -> Path:
    from tasks.model_source import resolve_model_dir

    prm_dir, _ = resolve_model_dir(f"models:/actprm-prm/{version}")
    return prm_dir.parents[1]


def _stop(proc: subprocess.Popen) -> None:
    """The server and the workers it started, by this process group's id (its own session)."""
    for sig in (signal.SIGTERM, signal.SIGKILL):
        try:
            os.killpg(proc.pid, sig)
        except ProcessLookupError:
            break
        try:
            proc.wait(timeout=30)
            break
        except subprocess.TimeoutExpired:
            continue
    proc.poll()
