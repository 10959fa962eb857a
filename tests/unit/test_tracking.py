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
