"""The walking skeleton through the real `actprm` console script: real DuckDB file, real MLflow
SQLite store, real (ephemeral) Prefect. What a newcomer sees after `make run`, on a tiny preset."""

from __future__ import annotations

import json
import os
import shutil
import subprocess
import sys
from pathlib import Path

import pytest

ACTPRM = shutil.which("actprm", path=str(Path(sys.executable).parent)) or "actprm"


def cli(home: Path, *args: str, timeout: int = 900) -> subprocess.CompletedProcess:
    env = {**os.environ, "ACTPRM_HOME": str(home), "ACTPRM_SYNTH__N": "160", "ACTPRM_TRAIN__EPOCHS": "2"}
    env.pop("MLFLOW_TRACKING_URI", None)
    return subprocess.run([ACTPRM, *args], capture_output=True, text=True, env=env, timeout=timeout)


def one_json(proc: subprocess.CompletedProcess) -> dict:
    """--json promises exactly one JSON object on stdout, whatever the libraries log."""
    lines = [line for line in proc.stdout.splitlines() if line.strip()]
    assert len(lines) == 1, f"stdout must hold one JSON line, got {proc.stdout!r}\nstderr tail: {proc.stderr[-2000:]}"
    return json.loads(lines[0])


@pytest.fixture(scope="module")
def finished_run(tmp_path_factory):
    home = tmp_path_factory.mktemp("home")
    proc = cli(home, "run", "--preset", "tiny", "--rounds", "2", "--labels-per-round", "40", "--json")
    assert proc.returncode == 0, proc.stderr[-3000:]
    return home, one_json(proc)


@pytest.mark.slow
def test_run_reports_every_round_and_registers_a_champion(finished_run):
    home, out = finished_run
    assert [r["round"] for r in out["rounds"]] == [1, 2]
    for r in out["rounds"]:
        assert r["labels_bought"] == 40
        assert 0.0 <= r["f1"] <= 1.0
        assert isinstance(r["model_version"], int)
    assert out["champion"] in {r["model_version"] for r in out["rounds"]}
    assert out["duckdb"] == str((home / "actprm.duckdb").resolve())
    assert out["mlflow_tracking_uri"].startswith("sqlite:///")

    from mlflow.tracking import MlflowClient

    client = MlflowClient(tracking_uri=out["mlflow_tracking_uri"], registry_uri=out["mlflow_tracking_uri"])
    versions = client.search_model_versions("name='actprm-prm'")
    assert sorted(int(v.version) for v in versions) == sorted(r["model_version"] for r in out["rounds"])
    assert int(client.get_model_version_by_alias("actprm-prm", "champion").version) == out["champion"]
    assert int(client.get_model_version_by_alias("actprm-prm", "challenger").version) == out["rounds"][-1]["model_version"]
    # Each round is an MLflow run tagged with its Prefect flow run and carrying training metrics.
    runs = client.search_runs([client.get_experiment_by_name("actprm").experiment_id],
                              "tags.`mlflow.runName` = 'round-1'")
    assert runs and runs[0].data.tags.get("prefect.flow_run_id")
    assert "train/cls_loss" in runs[0].data.metrics or any(k.startswith("train") for k in runs[0].data.metrics)


@pytest.mark.slow
def test_status_shows_champion_pool_counts_and_budget(finished_run):
    home, out = finished_run
    status = one_json(cli(home, "status", "--json"))
    assert status["champion"] == out["champion"]
    (pool,) = status["pools"]
    assert pool["name"] == "sample" and pool["trajectories"] == 160 and pool["status"] == "registered"
    assert status["budget_left"]["global"]["spent"]["labels"] == 80
    # every judge request by ledger state; what counts as spent adds up to the budget's spent tokens
    requests = status["judge_requests"]
    assert requests["settled"]["requests"] >= 80
    spent_states = ("reserved", "settled", "maybe_billed", "orphaned")
    assert sum(requests.get(s, {"tokens": 0})["tokens"] for s in spent_states) == \
        status["budget_left"]["global"]["spent"]["tokens"]


@pytest.mark.slow
def test_rerun_does_not_pay_twice_for_the_same_labels(finished_run, tmp_path):
    """A second `run` on the same home re-scores with the champion but never re-buys a label."""
    home, out = finished_run
    proc = cli(home, "label", "--select", "all", "--max-labels", "0", "--json")
    assert proc.returncode == 0, proc.stderr[-2000:]
    summary = one_json(proc)
    # Everything already bought is served from the label cache; the zero cap buys nothing new.
    assert summary["cached"] == 80
    assert summary["labeled"] == 0
    assert summary["stopped_because"] in {"budget", "done"}


def test_status_on_an_empty_home_has_no_champion(tmp_path):
    status = one_json(cli(tmp_path / "fresh", "status", "--json"))
    assert status["champion"] is None and status["pools"] == []


def test_errors_are_one_line_with_a_json_error_object(tmp_path):
    proc = cli(tmp_path / "fresh", "ingest", str(tmp_path / "missing.jsonl"), "--pool", "p", "--json")
    assert proc.returncode == 1
    err = one_json(proc)
    assert "missing.jsonl" in err["error"]
    assert "Traceback" not in proc.stderr
    # (Ephemeral Prefect may still log its shutdown after our line.)
    errors = [line for line in proc.stderr.splitlines() if line.startswith("error: ")]
    assert errors == [f"error: {err['error']}"]
    # A pool that was never ingested is named as the user typed it, with what there is instead.
    proc = cli(tmp_path / "fresh", "label", "--pool", "nope", "--judge", "verifier", "--json")
    assert proc.returncode == 1 and one_json(proc)["error"] == (
        "unknown pool 'nope' (known pools: none); ingest it first with `actprm ingest`")


@pytest.mark.slow
def test_a_failed_run_resumes_without_rescoring_or_rebuying(tmp_path):
    """Issue 7.6: a run that dies in training, rerun, redoes no finished scoring shard and buys no
    label twice (DuckDB state is the resume point)."""
    import datetime

    import duckdb

    home = tmp_path / "home"
    common = ("run", "--preset", "tiny", "--rounds", "1", "--labels-per-round", "30", "--json")
    failed = cli(home, *common, "--config", str(_config(tmp_path, lr=1e12)))
    assert failed.returncode == 1
    assert "loss" in one_json(failed)["error"].lower()  # the non-finite loss is named, not a traceback
    rerun_started = datetime.datetime.now()

    proc = cli(home, *common)
    assert proc.returncode == 0, proc.stderr[-3000:]
    out = one_json(proc)
    assert out["rounds"][0]["labels_bought"] == 30

    con = duckdb.connect(str(home / "actprm.duckdb"), read_only=True)
    init_shards = con.execute("SELECT finished_at FROM score_shards WHERE model_version LIKE 'init:%'").fetchall()
    assert init_shards and all(t < rerun_started for (t,) in init_shards), "finished shards were scored again"
    labeled, distinct = con.execute(
        "SELECT count(*), count(DISTINCT trajectory_id) FROM judge_labels WHERE status = 'labeled'").fetchone()
    assert labeled == distinct == 60  # 30 kept from the failed run + 30 new, none bought twice
    settled = con.execute("SELECT count(*) FROM budget_ledger WHERE state = 'settled' AND labels = 1").fetchone()[0]
    assert settled == labeled  # the ledger paid exactly once per label


def _config(tmp_path: Path, lr: float) -> Path:
    path = tmp_path / "diverge.yaml"
    path.write_text(f"train:\n  lr: {lr}\n")
    return path


def test_evaluate_tunes_the_threshold_on_a_dev_file(tmp_path):
    # Errors score 0.6 and correct steps 0.7 in both files: at 0.5 no error is found (F1 0); tuned on the
    # dev file the threshold lands in (0.6, 0.7] and finds every one.
    def bench(path, rows):
        path.write_text("".join(json.dumps({"id": i, "problem": "p", "steps": ["s"] * len(sc), "label": lab}) + "\n"
                                for i, lab, sc in rows))
        return path

    dev = bench(tmp_path / "dev.jsonl", [("g", -1, [0.7, 0.8]), ("h", 0, [0.6, 0.9])])
    test = bench(tmp_path / "test.jsonl", [("i", 0, [0.6, 0.9]), ("j", -1, [0.7])])
    preds = tmp_path / "preds.jsonl"
    preds.write_text("".join(json.dumps({"id": i, "step_scores": sc}) + "\n" for i, sc in
                             {"g": [0.7, 0.8], "h": [0.6, 0.9], "i": [0.6, 0.9], "j": [0.7]}.items()))
    home = tmp_path / "home"
    tuned = one_json(cli(home, "evaluate", "--data", str(test), "--predictions", str(preds), "--dev-data", str(dev),
                         "--json"))
    assert tuned["threshold_source"] == "tuned" and tuned["threshold"] == pytest.approx(0.61)
    assert tuned["f1"] == 1.0 and tuned["dev_f1"] == 1.0
    fixed = one_json(cli(home, "evaluate", "--data", str(test), "--predictions", str(preds), "--json"))
    assert fixed["threshold"] == 0.5 and fixed["f1"] == 0.0


def test_study_variants_are_checked_before_any_work(tmp_path):
    home = tmp_path / "fresh"
    for args, message in [(("--set", "rounds"), "--set takes FIELD=VALUE"),
                          (("--set", "rounds=many"), "study preset field 'rounds' takes a positive number, got 'many'"),
                          (("--set", "final_retrain=maybe"), "'final_retrain' takes true or false"),
                          (("--strategies", "actprm,greedy"), "unknown study strategy 'greedy'")]:
        proc = cli(home, "study", *args, "--json")
        assert proc.returncode == 1 and message in one_json(proc)["error"], (args, proc.stderr[-2000:])
    assert not (home / "actprm.duckdb").exists()  # refused before a pool was made
