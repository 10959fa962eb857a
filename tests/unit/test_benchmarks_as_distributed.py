"""PRMBench and ProcessBench evaluated on their files as the benchmarks ship them, scored as their own code does.

PRMBench: mr_eval's prmtest_classified task (first record per (classification, idx), one "correct_<idx>" original
per problem from its redundency record, scored apart; multi_solutions scored by F1 alone in its table script).
ProcessBench: four subset files (Qwen/ProcessBench ships gsm8k.json, math.json, olympiadbench.json, omnimath.json
as JSON arrays; the Hub's Parquet conversion puts each subset under a folder of its name); the score is the mean
F1 of the subsets. Expected values are computed by hand in the comments.
"""

from __future__ import annotations

import json

import pyarrow as pa
import pyarrow.parquet as pq
import pytest

from actprm.errors import ActPRMError
from tasks.evaluate import evaluate_predictions, read_eval_set


def _jsonl(path, rows):
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text("".join(json.dumps(r) + "\n" for r in rows))
    return path


def _prm(idx, kind, modified, error_steps, original=("o1", "o2")):
    return {"idx": idx, "classification": kind, "original_question": "q", "modified_question": "q",
            "original_process": list(original), "modified_process": modified, "error_steps": error_steps,
            "question": "q"}


CIRCULAR = [_prm("p1", "circular", ["s1", "s2", "s3", "s4"], [2, 3], original=("Step 1. o1", "Step 2. o2"))]
REDUNDENCY = [_prm("p1", "redundency", ["t1", "t2"], [2, 5])]          # 5: past the process, ignored
MULTI = [_prm("m1", "multi_solutions", ["a", "b", "c"], []),
         _prm("m1", "multi_solutions", ["z"], [])]                       # a repeated key: mr_eval keeps the first
# circular_p1: TP TN FP TP -> F1 4/5, F1_neg 2/3 -> 0.7333.  redundency_p1: TP TN -> 1.0.
# multi_solutions_m1: TP FN TP -> F1 4/5, its category score (F1 alone).  correct_p1 (the original): TP FN -> F1 2/3.
# Total without the original: TP 5, FP 1, TN 2, FN 1 -> F1 10/12, F1_neg 4/6 -> PRMScore 0.75.
PREDICTIONS = [
    {"idx": "circular_p1", "step_scores": [0.9, 0.3, 0.8, 0.6]},
    {"idx": "redundency_p1", "step_scores": [0.9, 0.2]},
    {"idx": "multi_solutions_m1", "step_scores": [0.9, 0.2, 0.7]},
    {"idx": "multi_solutions_m1", "step_scores": [0.1]},                # scored twice by a PRM: the first counts
    {"idx": "correct_p1", "step_scores": [0.9, 0.4]},
]


def _check_prmbench(m):
    assert m["benchmark"] == "prmbench"
    assert m["prmscore"] == pytest.approx(0.75) and m["n"] == 3 and m["steps"] == 9
    cats = m["categories"]
    assert set(cats) == {"circular", "redundency", "multi_solutions"}  # the originals are no category
    assert cats["circular"]["prmscore"] == pytest.approx(0.5 * 0.8 + 0.5 * 2 / 3)
    assert cats["redundency"]["prmscore"] == pytest.approx(1.0)
    assert cats["multi_solutions"]["prmscore"] == pytest.approx(0.8) and cats["multi_solutions"]["n"] == 1
    assert m["groups"]["simplicity"]["prmscore"] == pytest.approx((0.5 * 0.8 + 0.5 * 2 / 3 + 1.0) / 2)
    assert m["groups"]["sensitivity"]["prmscore"] == pytest.approx(0.8)
    assert m["originals"]["f1"] == pytest.approx(2 / 3) and m["originals"]["n"] == 1
    assert m["data_notes"] == {"lines": 4, "repeated_keys_dropped": 1, "originals": 1}


def prmbench_as_shipped(root):
    """(the PRMBench folder, one file per category as shipped, and a predictions file for it) under `root`."""
    folder = root / "prmbench"
    _jsonl(folder / "circular.jsonl", CIRCULAR)
    _jsonl(folder / "multi_solutions.jsonl", MULTI)
    _jsonl(folder / "redundency.jsonl", REDUNDENCY)
    return folder, _jsonl(root / "preds.jsonl", PREDICTIONS)


def test_prmbench_split_as_shipped_folder_or_concatenation(tmp_path):
    folder, preds = prmbench_as_shipped(tmp_path)
    _check_prmbench(evaluate_predictions(folder, preds))
    together = _jsonl(tmp_path / "all.jsonl", CIRCULAR + MULTI + REDUNDENCY)
    _check_prmbench(evaluate_predictions(together, preds))


def test_prmbench_originals_are_optional_in_predictions_but_not_partly(tmp_path):
    data = _jsonl(tmp_path / "all.jsonl", CIRCULAR + MULTI + REDUNDENCY)
    preds = _jsonl(tmp_path / "preds.jsonl", [p for p in PREDICTIONS if p["idx"] != "correct_p1"])
    m = evaluate_predictions(data, preds)
    assert m["prmscore"] == pytest.approx(0.75) and m["originals"] is None
    assert "not scored" in m["data_notes"]["originals"]
    two = _jsonl(tmp_path / "two.jsonl", CIRCULAR + REDUNDENCY + [_prm("p2", "redundency", ["u"], [1])])
    partly = _jsonl(tmp_path / "partly.jsonl", PREDICTIONS + [{"idx": "redundency_p2", "step_scores": [0.2]}])
    with pytest.raises(ActPRMError, match="correct_p2"):
        evaluate_predictions(two, partly)


def test_prmbench_reads_the_originals_from_the_redundency_records(tmp_path):
    _, records, notes = read_eval_set(_jsonl(tmp_path / "all.jsonl", CIRCULAR + REDUNDENCY))
    (original,) = [r for r in records if r["classification"] == "correct"]
    assert original["idx"] == "p1" and original["modified_process"] == ["o1", "o2"] and original["error_steps"] == []
    assert notes["originals"] == 1


def _pb(prefix, labels):
    return [{"id": f"{prefix}-{i}", "generator": "g", "problem": "p", "steps": ["s1", "s2", "s3"], "label": lab,
             "final_answer_correct": lab == -1} for i, lab in enumerate(labels)]


# Per subset (scores below): gsm8k acc_error 1, acc_correct 1 -> F1 1; math 0 and 1 -> F1 0;
# olympiadbench 1/2 and 1 -> 2/3; omnimath 1 and 1/2 -> 2/3. Official score: their mean, 7/12.
SUBSETS = {"gsm8k": _pb("gsm8k", [1, -1]), "math": _pb("math", [1, -1]),
           "olympiadbench": _pb("olympiadbench", [1, 2, -1]), "omnimath": _pb("omnimath", [0, -1, -1])}
PB_SCORES = {"gsm8k-0": [0.9, 0.1, 0.1], "gsm8k-1": [0.9, 0.9, 0.9],
             "math-0": [0.9, 0.9, 0.9], "math-1": [0.9, 0.9, 0.9],
             "olympiadbench-0": [0.9, 0.2, 0.9], "olympiadbench-1": [0.1, 0.9, 0.9], "olympiadbench-2": [0.8] * 3,
             "omnimath-0": [0.3, 0.9, 0.9], "omnimath-1": [0.9] * 3, "omnimath-2": [0.9, 0.9, 0.4]}


def test_processbench_four_subset_files_give_the_mean_f1(tmp_path):
    folder = tmp_path / "ProcessBench"
    folder.mkdir()
    # as the Hub ships them: JSON arrays; one subset as the Hub's Parquet conversion lays it out, one as JSONL
    (folder / "gsm8k.json").write_text(json.dumps(SUBSETS["gsm8k"]))
    (folder / "omnimath.json").write_text(json.dumps(SUBSETS["omnimath"]))
    _jsonl(folder / "math.jsonl", SUBSETS["math"])
    (folder / "olympiadbench").mkdir()
    pq.write_table(pa.Table.from_pylist(SUBSETS["olympiadbench"]), folder / "olympiadbench" / "0000.parquet")
    preds = _jsonl(tmp_path / "preds.jsonl", [{"id": k, "step_scores": v} for k, v in PB_SCORES.items()])
    m = evaluate_predictions(folder, preds)
    subsets = m["subsets"]
    assert set(subsets) == set(SUBSETS)
    assert (subsets["gsm8k"]["acc_error"], subsets["gsm8k"]["acc_correct"], subsets["gsm8k"]["f1"]) == (1, 1, 1)
    assert (subsets["math"]["acc_error"], subsets["math"]["acc_correct"], subsets["math"]["f1"]) == (0, 1, 0)
    assert subsets["olympiadbench"]["acc_error"] == 0.5 and subsets["olympiadbench"]["f1"] == pytest.approx(2 / 3)
    assert subsets["omnimath"]["acc_correct"] == 0.5 and subsets["omnimath"]["f1"] == pytest.approx(2 / 3)
    assert m["f1"] == pytest.approx(7 / 12)
    assert m["data_notes"]["averaging"] == "mean F1 of 4 subsets" and "missing_subsets" not in m["data_notes"]
    # the same records in one file with a `subset` field: the same score
    tagged = [{**r, "subset": name} for name, rows in SUBSETS.items() for r in rows]
    assert evaluate_predictions(_jsonl(tmp_path / "tagged.jsonl", tagged), preds)["f1"] == pytest.approx(7 / 12)


def test_processbench_one_file_without_subsets_is_pooled_and_says_so(tmp_path):
    rows = [r for rs in SUBSETS.values() for r in rs]
    preds = _jsonl(tmp_path / "preds.jsonl", [{"id": k, "step_scores": v} for k, v in PB_SCORES.items()])
    m = evaluate_predictions(_jsonl(tmp_path / "all.jsonl", rows), preds)
    # errors: 3 of 5 found; correct: 4 of 5 -> F1 2 * 0.6 * 0.8 / 1.4
    assert list(m["subsets"]) == ["pooled"] and m["f1"] == pytest.approx(2 * 0.6 * 0.8 / 1.4)
    assert m["data_notes"]["averaging"].startswith("pooled")
    # one official subset file is that subset, and the others are named missing
    one = evaluate_predictions(_jsonl(tmp_path / "gsm8k.jsonl", SUBSETS["gsm8k"]), preds)
    assert list(one["subsets"]) == ["gsm8k"] and one["data_notes"]["missing_subsets"] == ["math", "olympiadbench",
                                                                                           "omnimath"]


@pytest.mark.parametrize("record, message", [
    (_prm("p1", "circular", ["a", "b"], ["two"]), "error_steps must be a list of 1-based step numbers"),
    (_prm("p1", "circular", "a b", [1]), "modified_process must be a list of strings"),
    ({"id": "x", "problem": "p", "steps": ["s"], "label": "0"}, "label must be an integer"),
])
def test_badly_typed_records_are_one_line_errors(tmp_path, record, message):
    with pytest.raises(ActPRMError, match=message) as err:
        read_eval_set(_jsonl(tmp_path / "bad.jsonl", [record]))
    assert "bad.jsonl:1" in str(err.value) and "\n" not in str(err.value)
