"""Scoring metrics and the mu/sigma histogram land in the active MLflow run (real SQLite store)."""

from __future__ import annotations

import os

import pytest

os.environ.setdefault("HF_HUB_OFFLINE", "1")


@pytest.mark.slow
def test_log_scoring_to_mlflow(tmp_path):
    import mlflow

    from tasks.score import ScoreSummary, log_scoring_to_mlflow

    summary = ScoreSummary("p", "v1", "actprm", scored=10, uncertain=4, seconds=2.0,
                           trajectories_per_s=5.0, tokens_per_s=400.0)
    assert log_scoring_to_mlflow(summary, ([0.2], [0.1]), tmp_path / "none") is None  # no active run: no-op
    mlflow.set_tracking_uri(f"sqlite:///{tmp_path / 'mlflow.db'}")
    # Artifacts under tmp_path, not the default ./mlruns of the working directory.
    mlflow.create_experiment("score-test", artifact_location=(tmp_path / "artifacts").as_uri())
    mlflow.set_experiment("score-test")
    try:
        with mlflow.start_run() as run:
            png = log_scoring_to_mlflow(summary, ([0.1, 0.97, 0.5], [0.001, 0.0, 0.2]), tmp_path / "out")
    finally:
        mlflow.set_tracking_uri(None)
    assert png is not None and png.read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
    client = mlflow.MlflowClient(f"sqlite:///{tmp_path / 'mlflow.db'}")
    metrics = client.get_run(run.info.run_id).data.metrics
    assert metrics["score_uncertain_fraction"] == pytest.approx(0.4)
    assert metrics["score_trajectories_per_s"] == 5.0
    assert [a.path for a in client.list_artifacts(run.info.run_id, "scoring")] == [f"scoring/{png.name}"]
    # The flows pass a run id instead of keeping a run active.
    other = client.create_run(client.get_experiment_by_name("score-test").experiment_id)
    log_scoring_to_mlflow(summary, ([0.5], [0.0]), tmp_path / "out2", run_id=other.info.run_id,
                          tracking_uri=f"sqlite:///{tmp_path / 'mlflow.db'}")
    assert client.get_run(other.info.run_id).data.metrics["score_scored"] == 10
