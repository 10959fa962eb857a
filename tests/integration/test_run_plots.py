"""Every active-learning run logs its learning curve and calibration plot to its MLflow parent run (the tiny preset,
the production flow under a real Prefect server, a real DuckDB file and MLflow store)."""

from __future__ import annotations

import json
from pathlib import Path

import pytest

pytestmark = [pytest.mark.integration, pytest.mark.slow]

PNG_MAGIC = b"\x89PNG\r\n\x1a\n"


def test_a_two_round_run_logs_its_learning_curve_and_calibration(actprm_home, prefect_harness, tmp_path):
    from mlflow import MlflowClient

    import flows.active_learning as loop
    from actprm.config import load_settings

    summary = loop.active_learning(pool="sample", rounds=2, labels_per_round=20, preset="tiny",
                                   config={"synth": {"n": 120}, "model": {"num_heads": 4}, "train": {"epochs": 1},
                                           "loop": {"plateau_rounds": 5}})
    assert [r["round"] for r in summary["rounds"]] == [1, 2]
    client = MlflowClient(load_settings().tracking_uri)
    parent = summary["mlflow_run_id"]
    logged = {a.path: a.file_size for a in client.list_artifacts(parent, "plots")}
    assert set(logged) == {f"plots/{n}" for n in ("active_learning_curve.png", "active_learning_curve.json",
                                                    "calibration.png", "calibration.json")}
    out = Path(client.download_artifacts(parent, "plots", str(tmp_path)))
    for png in ("active_learning_curve.png", "calibration.png"):
        data = (out / png).read_bytes()
        assert data.startswith(PNG_MAGIC) and len(data) > 10_000, f"{png}: {len(data)} bytes"  # drawn, not blank

    curve = json.loads((out / "active_learning_curve.json").read_text())["points"]
    assert [p["round"] for p in curve] == [1, 2]
    cumulative = [p["cumulative_labels"] for p in curve]
    assert cumulative[0] == summary["rounds"][0]["labels_bought"] > 0 and cumulative[1] > cumulative[0]
    assert cumulative[-1] == sum(r["labels_bought"] for r in summary["rounds"])
    assert [p["f1"] for p in curve] == [r["f1"] for r in summary["rounds"]]

    calibration = json.loads((out / "calibration.json").read_text())
    assert calibration["round"] == 2 and len(calibration["bins"]) == 10
    assert calibration["steps"] == sum(b["n"] for b in calibration["bins"]) > 0
    assert 0.0 <= calibration["ece"] <= 1.0
