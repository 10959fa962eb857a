"""The registered model is self-contained: `mlflow.pyfunc.load_model("models:/…@champion")` loads and predicts in a
venv where this project is not installed (only the model's pip requirements), with the pipeline's scores."""

from __future__ import annotations

import json
import os
import subprocess
import sys
import sysconfig
from pathlib import Path

import pytest

os.environ.setdefault("HF_HUB_OFFLINE", "1")

REPO = Path(__file__).resolve().parents[2]
NAME = "actprm-prm"
QUESTIONS = ["What is 2+3?", "Compute 7*6, step by step."]
STEPS = [["2+3 = 5.", "So the answer is 5."],
         [f"partial product {k}: 7*{k} = {7 * k}." for k in range(1, 7)] + ["The answer is 42."]]
# A budget the second trajectory overflows, so the served count of unscored steps is checked too.
MAX_LENGTH = 64

def _bare_venv(root: Path) -> Path:
    """A venv with the shared venv's site-packages as a plain path (torch, transformers, mlflow, pandas ...): a plain
    line in a .pth does not run the .pth hooks inside that folder, so the editable install of this project is
    not seen. Returns its python."""
    subprocess.run([sys.executable, "-m", "venv", "--without-pip", str(root)], check=True, timeout=120)
    python = root / "bin" / "python"
    site = subprocess.run([str(python), "-I", "-c", "import sysconfig; print(sysconfig.get_paths()['purelib'])"],
                          check=True, capture_output=True, text=True, timeout=60).stdout.strip()
    Path(site, "shared-site-packages.pth").write_text(sysconfig.get_paths()["purelib"] + "\n")
    return python


def test_champion_pyfunc_loads_and_scores_the_same_without_the_project(tmp_path, actprm_home, monkeypatch):
    from actprm.config import load_settings
    from actprm.tracking import configure_mlflow, start_run
    from models import build_prm
    from tasks.champion import promotion_gate
    from tasks.score import score_steps
    from tasks.model_source import load_champion
    from tasks.register import log_model

    settings = load_settings()
    monkeypatch.setenv("MLFLOW_TRACKING_URI", settings.tracking_uri)
    configure_mlflow(settings.tracking_uri, settings.experiment, settings.artifact_root)
    model, tokenizer = build_prm("tiny", num_heads=4, seed=3)
    saved = model.save_pretrained(tmp_path / "saved", tokenizer)
    with start_run("register"):
        version = log_model(saved, name=NAME, tags={"actprm.pool": "sample"})
    assert promotion_gate(None, NAME, version, 0.5, eval_set="s")["decision"] == "promoted"

    # In-project scores: the champion as the pipeline loads it, scored as `actprm predict` does.
    loaded, loaded_tokenizer, _ = load_champion(NAME)
    expected = score_steps(loaded, loaded_tokenizer, [{"question": q, "steps": s} for q, s in zip(QUESTIONS, STEPS)],
                           max_length=MAX_LENGTH)
    assert expected[0]["truncated_steps"] == 0 < expected[1]["truncated_steps"]

    python = _bare_venv(tmp_path / "bare-venv")
    code = f"""
import importlib.util, json, sys
missing = [m for m in ("actprm", "tasks", "models") if importlib.util.find_spec(m) is None]
import mlflow, pandas as pd
model = mlflow.pyfunc.load_model("models:/{NAME}@champion")
out = model.predict(pd.DataFrame({{"question": {QUESTIONS!r}, "steps": {STEPS!r}}}))
rows = [{{k: (list(map(float, v)) if k.startswith("step_") else v.item() if hasattr(v, "item") else v)
          for k, v in row.items()}} for row in out.to_dict(orient="records")]
print(json.dumps({{"missing_before_load": missing, "rows": rows, "actprm_imported": "actprm" in sys.modules}}))
"""
    work = tmp_path / "empty-cwd"
    work.mkdir()
    env = {"PATH": os.environ["PATH"], "HOME": str(tmp_path / "home"), "HF_HOME": str(tmp_path / "hf-home"),
           "HF_HUB_OFFLINE": "1", "MLFLOW_TRACKING_URI": settings.tracking_uri, "MLFLOW_DISABLE_TELEMETRY": "true",
           "DO_NOT_TRACK": "1", "ACTPRM_SERVE_MAX_LENGTH": str(MAX_LENGTH)}
    proc = subprocess.run([str(python), "-I", "-c", code], cwd=work, env=env, capture_output=True, text=True,
                          timeout=300, check=False)
    assert proc.returncode == 0, proc.stderr[-3000:]
    got = json.loads(proc.stdout.strip().splitlines()[-1])
    assert got["missing_before_load"] == ["actprm", "tasks", "models"]
    assert not got["actprm_imported"]
    assert len(got["rows"]) == len(expected)
    for row, want in zip(got["rows"], expected, strict=True):
        assert len(row["step_scores"]) == len(want["step_scores"]) and row["step_scores"]
        assert row["step_scores"] == pytest.approx(want["step_scores"], abs=1e-5)
        assert row["step_std"] == pytest.approx(want["step_std"], abs=1e-5)
        assert row["uncertain"] == want["uncertain"]
        assert row["truncated_steps"] == want["truncated_steps"]


def test_registered_version_has_descriptions_an_input_example_and_a_list_schema(tmp_path, actprm_home, monkeypatch):
    import mlflow
    from mlflow.tracking import MlflowClient

    from actprm.config import load_settings
    from actprm.tracking import configure_mlflow
    from models import build_prm
    from tasks.model_source import load_model, resolve_model_dir
    from tasks.register import log_model

    settings = load_settings()
    monkeypatch.setenv("MLFLOW_TRACKING_URI", settings.tracking_uri)
    configure_mlflow(settings.tracking_uri, settings.experiment, settings.artifact_root)
    model, tokenizer = build_prm("tiny", num_heads=2, seed=0)
    version = log_model(model.save_pretrained(tmp_path / "saved", tokenizer), name=NAME,
                        tags={"actprm.pool": "sample"})
    client = MlflowClient()
    assert "question" in client.get_registered_model(NAME).description
    assert "pool=sample" in client.get_model_version(NAME, str(version)).description

    info = mlflow.models.get_model_info(f"models:/{NAME}/{version}")
    outputs = {c["name"]: c for c in info.signature.outputs.to_dict()}
    assert outputs["step_scores"]["type"] == "array" and outputs["step_scores"]["items"]["type"] == "double"
    assert {c["name"]: c["type"] for c in info.signature.inputs.to_dict()} == {"question": "string", "steps": "array"}
    assert info.saved_input_example_info is not None
    # The shipped code: the wrapper and models/, nothing of actprm/ or tasks/ besides the wrapper.
    prm_dir, _ = resolve_model_dir(f"models:/{NAME}/{version}")
    code = prm_dir.parents[1] / "code"
    assert sorted(p.name for p in code.iterdir()) == ["models", "pyfunc_model.py"]
    # The save_pretrained folder is still what the pipeline loads back.
    assert load_model(f"models:/{NAME}/{version}")[2] == version
