"""MLflow wiring against a real SQLite store."""

import mlflow
from mlflow.tracking import MlflowClient

from actprm.tracking import configure_mlflow, logging_into


def test_a_stage_logs_into_its_run_after_the_process_selected_another_experiment(tmp_path):
    uri = f"sqlite:///{tmp_path / 'mlflow.db'}"
    experiment = configure_mlflow(uri, "actprm", tmp_path / "artifacts")
    run_id = MlflowClient(uri).create_run(experiment).info.run_id
    configure_mlflow(uri, "another", tmp_path / "artifacts")  # e.g. a study logged into its own experiment first

    with logging_into(run_id, uri):
        mlflow.log_metric("eval_f1", 0.5)

    run = MlflowClient(uri).get_run(run_id)
    assert run.data.metrics["eval_f1"] == 0.5 and run.info.status == "RUNNING"  # the flow closes it, not the stage


def test_a_local_process_reads_and_writes_the_servers_proxied_artifacts(tmp_path, monkeypatch):
    """Experiments created through the MLflow server of `make serve` store artifacts at `mlflow-artifacts:/<id>`,
    which the server maps into `<home>/mlartifacts`. `make run` tracks the same SQLite store without the server and
    must log into, and load from, that same folder instead of failing on every artifact."""
    monkeypatch.chdir(tmp_path)
    uri = f"sqlite:///{tmp_path / 'mlflow.db'}"
    root = tmp_path / "home" / "mlartifacts"
    MlflowClient(uri).create_experiment("served", artifact_location="mlflow-artifacts:/7")
    experiment = configure_mlflow(uri, "served", root)
    with mlflow.start_run(experiment_id=experiment) as run:
        mlflow.log_dict({"f1": 0.5}, "evaluation.json")
    assert run.info.artifact_uri == f"mlflow-artifacts:/7/{run.info.run_id}/artifacts"
    assert (root / "7" / run.info.run_id / "artifacts" / "evaluation.json").is_file()
    assert mlflow.artifacts.load_dict(f"runs:/{run.info.run_id}/evaluation.json") == {"f1": 0.5}
    assert not (tmp_path / "mlruns").exists()
