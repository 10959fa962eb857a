"""Using a PRM on files: predict on every supported input format, best-of-N rerank, and no silent truncation."""

from __future__ import annotations

import json
import os
import shutil
import subprocess
import sys
from pathlib import Path

import pyarrow as pa
import pyarrow.parquet as pq
import pytest
import torch

os.environ.setdefault("HF_HUB_OFFLINE", "1")

from actprm.formats import FORMATS
from models import StepBatcher, build_prm
from models.uncertainty import step_stats
from tasks.predict import (
    AGGREGATES,
    aggregate,
    predict,
    read_trajectories,
    rerank,
    rerank_candidates,
)
from tasks.score import TruncationError

Q1, Q2 = "What is 12 + 30?", "Compute 7 * 6 - 2."
S1, S2 = ["12 + 30 = 42.", "The answer is 42."], ["7 * 6 = 42.", "42 - 2 = 41.", "The answer is 41."]
# Two records per registered input format: (records, trajectories they hold, steps per trajectory).
RECORDS = {
    "actprm": ([{"question": Q1, "steps": S1, "hard_labels": [1, 1]}, {"question": Q2, "steps": S2, "hard_labels": [1, 0]}],
               [2, 3]),
    "trl_stepwise": ([{"prompt": Q1, "completions": S1, "labels": [True, True]},
                      {"prompt": Q2, "completions": S2, "labels": [True, False, False]}], [2, 3]),
    "unlabeled": ([{"question": Q1, "steps": S1, "id": "a"}, {"question": Q2, "steps": S2, "id": "b"}], [2, 3]),
    "processbench": ([{"id": "p1", "problem": Q1, "steps": S1, "label": -1}, {"id": "p2", "problem": Q2, "steps": S2, "label": 1}],
                     [2, 3]),
    "prmbench": ([{"idx": "x1", "original_question": Q1, "original_process": S1, "modified_question": Q1,
                   "modified_process": ["12 + 30 = 41.", "The answer is 41."], "error_steps": [1], "classification": "calc"},
                  {"idx": "x2", "original_question": Q2, "original_process": S2, "modified_question": Q2,
                   "modified_process": S2[:2], "error_steps": [2], "classification": "calc"}], [2, 2]),
    "math_shepherd": ([{"input": f"{Q1} Step 1: {S1[0]} ки\nStep 2: {S1[1]} ки", "label": f"{Q1} Step 1: {S1[0]} +\nStep 2: {S1[1]} +"},
                       {"input": f"{Q2} Step 1: {S2[0]} ки\nStep 2: {S2[1]} ки", "label": f"{Q2} Step 1: {S2[0]} +\nStep 2: {S2[1]} -"}],
                      [2, 2]),
    "prm800k": ([{"question": {"problem": Q1}, "label": {"finish_reason": "solution", "steps": [
                     {"completions": [{"text": t, "rating": 1}], "chosen_completion": 0} for t in S1]}},
                 {"question": {"problem": Q2}, "label": {"finish_reason": "found_error", "steps": [
                     {"completions": [{"text": t, "rating": r}], "chosen_completion": 0}
                     for t, r in zip(S2, (1, -1, 1))]}}], [2, 3]),
}


@pytest.fixture(scope="module")
def model_dir(tmp_path_factory):
    torch.manual_seed(0)
    model, tokenizer = build_prm("tiny", num_heads=4, seed=0)
    folder = tmp_path_factory.mktemp("prm") / "model"
    model.save_pretrained(folder, tokenizer)
    return folder


def write_jsonl(path: Path, records: list, extra_lines: tuple[str, ...] = ()) -> Path:
    path.write_text("".join(json.dumps(r) + "\n" for r in records) + "".join(x + "\n" for x in extra_lines))
    return path


def direct_scores(folder: Path, question: str, steps: list[str]):
    from models import EnsemblePRM

    model, tokenizer = EnsemblePRM.from_pretrained(folder, with_tokenizer=True)
    [probs] = model.step_probabilities(StepBatcher(tokenizer, max_length=1024).encode([question], [steps]))
    return step_stats(probs)


def read_out(path: Path) -> list[dict]:
    return [json.loads(line) for line in path.read_text().splitlines()]


def test_predict_scores_every_step_of_every_supported_format(model_dir, tmp_path):
    assert set(RECORDS) == set(FORMATS.names()), "a new input format needs a case here"
    mu1, sigma1 = direct_scores(model_dir, Q1, S1)
    for name, (records, steps) in RECORDS.items():
        data = write_jsonl(tmp_path / f"{name}.jsonl", records, extra_lines=("{not json",))
        out = tmp_path / f"{name}.out.jsonl"
        summary = predict(str(model_dir), [str(data)], out, model_name="m", progress=False)
        lines = read_out(out)
        assert summary["format"] == name and summary["lines_read"] == 3 and summary["rejected_lines"] == 1
        assert summary["rejected_sample"][0]["line"] == 3 and summary["trajectories"] == len(steps) == len(lines)
        assert [len(x["step_scores"]) for x in lines] == [len(x["step_std"]) for x in lines] == steps
        assert summary["truncated_steps"] == 0 and all(x["truncated_steps"] == 0 for x in lines)
        # Rerank reads the same formats: one group per question here (no `group` field), every candidate kept.
        rerank(str(model_dir), [str(data)], tmp_path / f"{name}.rr.jsonl", model_name="m", progress=False)
        groups = read_out(tmp_path / f"{name}.rr.jsonl")
        assert len(groups) == 2 and sum(len(g["candidates"]) for g in groups) == len(steps)
        # Math-Shepherd's steps carry their "Step k:" text; PRMBench's first line is a modified process (its
        # original is read from the redundancy line only, as mr_eval does).
        if name not in ("math_shepherd", "prmbench"):
            torch.testing.assert_close(torch.tensor(lines[0]["step_scores"], dtype=torch.float64), mu1, atol=1e-6, rtol=0)
            torch.testing.assert_close(torch.tensor(lines[0]["step_std"], dtype=torch.float64), sigma1, atol=1e-6, rtol=0)
    # The record's own id names its line (PRMBench: idx and the view).
    assert [x["id"] for x in read_out(tmp_path / "prmbench.out.jsonl")] == ["x1:modified", "x2:modified"]

    # Parquet is read by the same parser.
    table = pa.Table.from_pylist(RECORDS["actprm"][0])
    pq.write_table(table, tmp_path / "pool.parquet")
    summary = predict(str(model_dir), [str(tmp_path / "pool.parquet")], tmp_path / "pq.out.jsonl", model_name="m",
                      progress=False)
    assert summary["trajectories"] == 2 and summary["format"] == "actprm"


def candidates(n_questions: int = 3, n: int = 4) -> list[dict]:
    out = []
    for q in range(n_questions):
        for c in range(n):
            a, b = 10 + q, 20 + c
            out.append({"id": f"q{q}c{c}", "question": f"What is {a} + {10 + q}?",
                        "steps": [f"{a} + {10 + q} = {a + 10 + q + c}.", f"The answer is {a + 10 + q + c}."][: 1 + c % 2]
                        + ["Check: " + "x" * b]})
    return out


def test_rerank_chooses_the_candidate_with_the_best_aggregate(model_dir, tmp_path):
    cands = candidates()
    cands[0]["group"] = cands[1]["group"] = "pair"  # a group field overrides the question
    data = write_jsonl(tmp_path / "cands.jsonl", cands)
    predicted = {x["id"]: x for x in read_out(Path(predict(str(model_dir), [str(data)], tmp_path / "p.jsonl",
                                                              model_name="m", progress=False)["output"]))}
    for how in AGGREGATES:
        summary = rerank(str(model_dir), [str(data)], tmp_path / f"r-{how}.jsonl", model_name="m", how=how,
                         progress=False)
        groups = read_out(tmp_path / f"r-{how}.jsonl")
        assert summary["groups"] == len(groups) == 4 and summary["candidates"] == 12
        assert groups[0]["group"] == "pair" and [c["id"] for c in groups[0]["candidates"]] == ["q0c0", "q0c1"]
        for g in groups:
            for c in g["candidates"]:
                assert c["score"] == pytest.approx(aggregate(predicted[c["id"]]["step_scores"], how), abs=1e-12)
            best = max(g["candidates"], key=lambda c: c["score"])
            assert g["chosen"] == best["id"] and g["chosen_score"] == best["score"]

    # The Python API gives the same choices.
    from models import EnsemblePRM

    model, tokenizer = EnsemblePRM.from_pretrained(model_dir, with_tokenizer=True)
    api = rerank_candidates(model, tokenizer, cands, "min")
    assert [g["chosen"] for g in api] == [g["chosen"] for g in read_out(tmp_path / "r-min.jsonl")]
    assert aggregate([0.9, 0.5, 0.8], "min") == 0.5 and aggregate([0.5, 0.5], "prod") == 0.25
    assert aggregate([0.9, 0.2], "last") == 0.2 and aggregate([], "min") == float("-inf")


def test_steps_past_max_length_are_counted_and_refused_unless_allowed(model_dir, tmp_path):
    data = write_jsonl(tmp_path / "long.jsonl", [{"question": Q1, "steps": S1, "id": "short"},
                                                 {"question": Q2, "steps": S2 + ["y" * 60] * 4, "id": "long"}])
    out = tmp_path / "long.out.jsonl"
    with pytest.raises(TruncationError, match=r"predict: 4 of 9 steps \(1 trajectories\) lie past max_length=64"):
        predict(str(model_dir), [str(data)], out, model_name="m", max_length=64, progress=False)
    # The output is still written, and says which steps were not scored.
    lines = {x["id"]: x for x in read_out(out)}
    assert lines["short"]["truncated_steps"] == 0 and lines["long"]["truncated_steps"] == 4
    assert len(lines["long"]["step_scores"]) == 3
    summary = predict(str(model_dir), [str(data)], out, model_name="m", max_length=64, allow_truncation=True,
                      progress=False)
    assert (summary["truncated_steps"], summary["total_steps"]) == (4, 9)
    # At the default budget (the backbone's whole context) every step is read.
    assert predict(str(model_dir), [str(data)], out, model_name="m", progress=False)["truncated_steps"] == 0


def test_evaluate_refuses_a_benchmark_metric_on_fewer_than_all_steps(model_dir, tmp_path):
    from tasks.evaluate import evaluate_model

    long_steps = [f"step {k}: " + "z" * 150 for k in range(8)]  # ~1,300 characters: past the tiny 1,024 context
    data = write_jsonl(tmp_path / "pb.jsonl", [{"id": "a", "problem": Q1, "steps": S1, "label": -1},
                                               {"id": "b", "problem": Q2, "steps": long_steps, "label": 3}])
    with pytest.raises(TruncationError, match=r"evaluate: \d+ of 10 steps \(1 trajectories\) lie past max_length=1024"):
        evaluate_model(model_dir, data)
    result = evaluate_model(model_dir, data, allow_truncation=True)
    assert result["truncated_steps"] > 0 and result["total_steps"] == 10 and "f1" in result


@pytest.mark.skipif(shutil.which("actprm", path=str(Path(sys.executable).parent)) is None, reason="no console script")
def test_cli_predict_truncation_is_a_one_line_error_with_a_nonzero_exit(model_dir, tmp_path):
    data = write_jsonl(tmp_path / "d.jsonl", [{"question": Q2, "steps": S2 + ["y" * 60] * 4}])
    env = {**os.environ, "ACTPRM_HOME": str(tmp_path / "home"), "PREFECT_HOME": str(tmp_path / "prefect")}
    env.pop("MLFLOW_TRACKING_URI", None)
    cmd = [shutil.which("actprm", path=str(Path(sys.executable).parent)), "predict", "--model", str(model_dir),
           "--data", str(data), "--output", str(tmp_path / "o.jsonl"), "--max-length", "64", "--json"]
    proc = subprocess.run(cmd, capture_output=True, text=True, env=env, timeout=600, check=False)
    assert proc.returncode == 1
    assert json.loads(proc.stdout)["type"] == "TruncationError"
    errors = [line for line in proc.stderr.splitlines() if line.startswith("error:")]
    assert errors == [("error: predict: 4 of 7 steps (1 trajectories) lie past max_length=64 tokens and were left "
                       "unscored; pass --allow-truncation to accept that, or a larger --max-length")]
    assert read_out(tmp_path / "o.jsonl")[0]["truncated_steps"] == 4


def test_read_trajectories_accounts_for_every_line(tmp_path):
    data = write_jsonl(tmp_path / "u.jsonl", RECORDS["unlabeled"][0], extra_lines=("[1, 2]", '{"question": "q"}'))
    trajectories, rejected, fmt, lines = read_trajectories([str(data)])
    assert (fmt, lines, len(trajectories), len(rejected)) == ("unlabeled", 4, 2, 2)
    assert {r["line"] for r in rejected} == {3, 4} and all(r["reason"] for r in rejected)


def test_evaluate_on_a_pool_past_max_length_fails_naming_the_count_and_passes_when_allowed(model_dir, tmp_path,
                                                                                           actprm_home, monkeypatch):
    """`actprm evaluate --pool P --max-length N`: the request the CLI makes, on a pool whose trajectories do not fit."""
    from actprm.config import Settings
    from actprm.store import Store
    from actprm.testing.pools import synth_pool
    from tasks.evaluate import evaluate_request

    settings = Settings(home=actprm_home)
    monkeypatch.setenv("MLFLOW_TRACKING_URI", settings.tracking_uri)  # configure_mlflow exports it; undone after
    with Store(settings.duckdb_path) as store:
        synth_pool(store, "toy", 20, seed=2, eval_every=2)
    with pytest.raises(TruncationError, match=r"evaluate: \d+ of \d+ steps \(\d+ trajectories\) lie past max_length=96"):
        evaluate_request(settings, model=str(model_dir), pool="toy", max_length=96)
    result = evaluate_request(settings, model=str(model_dir), pool="toy", max_length=96, allow_truncation=True)
    assert result["truncated_steps"] > 0 and result["truncated_trajectories"] <= result["n"] == 10
    # At the backbone's whole context (the default) nothing is cut and the metric is the benchmark's.
    assert evaluate_request(settings, model=str(model_dir), pool="toy")["truncated_steps"] == 0
