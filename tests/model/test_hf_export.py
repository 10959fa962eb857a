"""The PRM leaves the pipeline: a trained tiny PRM, exported, loads with plain transformers in a process that cannot
see this project, and scores steps exactly as the pipeline does."""

from __future__ import annotations

import itertools
import json
import os
import subprocess
import sys
import sysconfig
from pathlib import Path

import pytest
import torch

os.environ.setdefault("HF_HUB_OFFLINE", "1")

from actprm.errors import ActPRMError
from models.errors import ModelError
from actprm.synth import generate
from models import StepBatcher, build_prm
from models.uncertainty import step_stats, trajectory_uncertain

REPO = Path(__file__).resolve().parents[2]
POOL = list(itertools.islice(generate(24, seed=5), 24))
# Scored after export: a held-out question, and one long enough that a 512-token cut would have left steps out.
PROBE_Q = [POOL[0]["question"], "Long one?"]
PROBE_STEPS = [POOL[0]["steps"], [f"check {k}: " + "x" * 40 for k in range(14)]]


def trained(preset: str):
    """A tiny PRM after a few optimizer steps on labeled synthetic trajectories (backbone and heads move)."""
    model, tokenizer = build_prm(preset, num_heads=4, seed=0)
    batcher = StepBatcher(tokenizer, max_length=1024)
    opt = torch.optim.AdamW(model.parameters(), lr=3e-3)
    model.train()
    for start in range(0, 24, 8):
        chunk = POOL[start:start + 8]
        batch = batcher.encode([r["question"] for r in chunk], [r["steps"] for r in chunk],
                               [r["first_error"] for r in chunk])
        out = model(**batch.model_inputs(), labels=batch.labels)
        out.loss.backward()
        opt.step()
        opt.zero_grad()
    model.eval()
    assert not torch.equal(model.w1, model.anchor_w1)
    return model, tokenizer


def pipeline_scores(model, tokenizer):
    batch = StepBatcher(tokenizer, max_length=1024).encode(PROBE_Q, PROBE_STEPS)
    assert batch.truncated_steps == [0, 0]
    return [step_stats(p) for p in model.step_probabilities(batch)]


def score_in_clean_process(folder: Path, tmp_path: Path) -> list[dict]:
    """Plain transformers in a fresh interpreter: -I -S (no PYTHONPATH, no cwd on sys.path, no site hooks: the
    venv's editable install of this project is a .pth hook), site-packages added as a bare path for torch and
    transformers, cwd outside the repo, and a check that this project is not importable there."""
    code = f"""
import sys
sys.path.append({sysconfig.get_paths()["purelib"]!r})
import importlib.util, json
assert importlib.util.find_spec("models") is None and importlib.util.find_spec("actprm") is None, sys.path
from transformers import AutoModel, AutoTokenizer
model = AutoModel.from_pretrained({str(folder)!r}, trust_remote_code=True)
tokenizer = AutoTokenizer.from_pretrained({str(folder)!r}, trust_remote_code=True)
print(json.dumps(model.score_steps(tokenizer, {PROBE_Q!r}, {PROBE_STEPS!r})))
"""
    env = {"PATH": os.environ["PATH"], "HF_HOME": str(tmp_path / "hf-home"), "HF_HUB_OFFLINE": "1"}
    proc = subprocess.run([sys.executable, "-I", "-S", "-c", code], cwd=tmp_path, env=env, capture_output=True,
                          text=True, timeout=300, check=False)
    assert proc.returncode == 0, proc.stderr[-3000:]
    return json.loads(proc.stdout.strip().splitlines()[-1])


def check_same(got: list[dict], expected) -> None:
    for g, (mu, sigma) in zip(got, expected, strict=True):
        assert len(g["step_scores"]) == len(mu) == len(g["step_std"])
        torch.testing.assert_close(torch.tensor(g["step_scores"], dtype=torch.float64), mu, atol=1e-5, rtol=0)
        torch.testing.assert_close(torch.tensor(g["step_std"], dtype=torch.float64), sigma, atol=1e-5, rtol=0)
        assert g["uncertain"] == trajectory_uncertain(mu, sigma)


def test_trained_tiny_registered_champion_exports_and_scores_the_same_without_the_project(tmp_path, actprm_home,
                                                                                           monkeypatch):
    from mlflow.tracking import MlflowClient

    from actprm.config import load_settings
    from actprm.tracking import configure_mlflow
    from tasks.export import export_model
    from tasks.register import log_model

    model, tokenizer = trained("tiny")
    expected = pipeline_scores(model, tokenizer)
    model.save_pretrained(tmp_path / "saved", tokenizer)
    settings = load_settings()
    # configure_mlflow exports MLFLOW_TRACKING_URI; set here, it is undone after the test.
    monkeypatch.setenv("MLFLOW_TRACKING_URI", settings.tracking_uri)
    configure_mlflow(settings.tracking_uri, settings.experiment, settings.artifact_root)
    version = log_model(tmp_path / "saved", name="actprm-prm", tags={"actprm.pool": "synth-test"})
    MlflowClient().set_registered_model_alias("actprm-prm", "champion", version)

    result = export_model("champion", tmp_path / "export", model_name="actprm-prm")
    folder = Path(result["out"])
    assert result["model_version"] == version
    assert {"config.json", "model.safetensors", "modeling_actprm.py", "README.md", "tokenizer.json"} <= set(result["files"])
    config = json.loads((folder / "config.json").read_text())
    assert config["auto_map"]["AutoModel"] == "modeling_actprm.ActPRMForStepScoring"
    # The modeling code is standalone: it imports torch and transformers, nothing of this project.
    imports = [line.split()[1] for line in (folder / "modeling_actprm.py").read_text().splitlines()
               if line.startswith(("import ", "from "))]
    assert {m.split(".")[0] for m in imports} <= {"__future__", "torch", "transformers"}
    card = (folder / "README.md").read_text()
    assert f"version {version}" in card and "synth-test" in card and "score_steps" in card

    check_same(score_in_clean_process(folder, tmp_path), expected)


def test_trained_tiny_decoder_folder_exports_and_round_trips(tmp_path):
    from models.hf_import import load_prm_folder
    from tasks.export import export_model

    model, tokenizer = trained("tiny-decoder")
    expected = pipeline_scores(model, tokenizer)
    model.save_pretrained(tmp_path / "saved", tokenizer)
    folder = Path(export_model(str(tmp_path / "saved"), tmp_path / "export", model_name="actprm-prm")["out"])
    assert "not a registered version" in (folder / "README.md").read_text()
    check_same(score_in_clean_process(folder, tmp_path), expected)
    # The export is also a starting point for the pipeline: heads and anchors come back as they were.
    again, tok2 = load_prm_folder(folder)
    torch.testing.assert_close(again.anchor_w1, model.anchor_w1, atol=0, rtol=0)
    check_same([{"step_scores": mu.tolist(), "step_std": s.tolist(), "uncertain": trajectory_uncertain(mu, s)}
                for mu, s in pipeline_scores(again, tok2)], expected)

    with pytest.raises(ModelError, match="not empty"):
        export_model(str(tmp_path / "saved"), tmp_path / "export", model_name="actprm-prm")


def test_export_refuses_what_is_not_a_model(tmp_path):
    from tasks.export import model_reference

    assert model_reference("champion", "actprm-prm") == "models:/actprm-prm@champion"
    assert model_reference(None, "m") == "models:/m@champion"
    with pytest.raises(ActPRMError, match="neither a folder"):
        model_reference("no/such/folder", "actprm-prm")
