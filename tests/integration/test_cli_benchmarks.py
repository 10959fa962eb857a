"""`actprm evaluate --benchmark` on benchmark folders as shipped, through the real console script."""

from __future__ import annotations

import json

from tests.integration.test_cli_pipeline import cli, one_json
from tests.unit.test_benchmarks_as_distributed import prmbench_as_shipped


def test_evaluate_a_prmbench_folder_as_shipped(tmp_path):
    folder, preds = prmbench_as_shipped(tmp_path)
    home = tmp_path / "home"
    out = one_json(cli(home, "evaluate", "--benchmark", "prmbench", "--data", str(folder), "--predictions",
                       str(preds), "--json"))
    assert out["benchmark"] == "prmbench" and abs(out["prmscore"] - 0.75) < 1e-12
    assert out["data_notes"]["repeated_keys_dropped"] == 1 and out["originals"]["n"] == 1
    wrong = cli(home, "evaluate", "--benchmark", "processbench", "--data", str(folder), "--predictions", str(preds),
                "--json")
    assert wrong.returncode == 1 and "holds prmbench records, not processbench" in json.loads(wrong.stdout)["error"]


def test_one_shot_on_the_built_in_pool(tmp_path):
    """`actprm one-shot` scores the sample pool once, keeps what the rule flags (no cap by default), buys those
    labels and trains on them without in-training selection; it reports the share kept against the paper's."""
    home = tmp_path / "home"
    proc = cli(home, "one-shot", "--pool", "sample", "--preset", "tiny", "--json")
    assert proc.returncode == 0, proc.stderr[-3000:]
    out = one_json(proc)
    assert out["cap"] is None and out["in_training_selection"] is False
    assert out["paper_retained_fraction"] == 0.6
    # an untrained ensemble is unsure of everything: the rule, not a cap, keeps the whole train split
    assert out["retained"] == out["uncertain"] == out["scored"] > 0 and out["retained_fraction"] == 1.0
    (round1,) = out["rounds"]
    assert round1["labels_bought"] == out["retained"] and round1["train_trajectories"] == out["retained"]
    from mlflow.tracking import MlflowClient

    run = MlflowClient(out["mlflow_tracking_uri"]).get_run(out["mlflow_run_id"])  # training logs into the flow's run
    assert run.data.params["train.in_training_selection"] == "False"  # what the training itself ran with
