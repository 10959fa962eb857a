"""ProcessBench F1 and PRMBench PRMScore on small hand-computed cases, and the file entry points."""

from __future__ import annotations

import json
import random

import pytest

from actprm.errors import ActPRMError
from actprm.metrics import (THRESHOLD_GRID, fold_of, predicted_first_error, prmbench_metrics, processbench_crossfit,
                            processbench_metrics, processbench_tuned, tune_threshold)
from tasks.evaluate import evaluate_predictions, read_eval_data, read_predictions

# Two subsets. gsm8k: a hit, b wrong step, c hit, d false alarm -> acc_error 1/2, acc_correct 1/2,
# F1 0.5. math: both right -> F1 1.0. ProcessBench averages subsets: 0.75 (pooling would give 2/3).
PB_RECORDS = [
    {"id": "a", "label": 1, "subset": "gsm8k"},
    {"id": "b", "label": 0, "subset": "gsm8k"},
    {"id": "c", "label": -1, "subset": "gsm8k"},
    {"id": "d", "label": -1, "subset": "gsm8k"},
    {"id": "e", "label": 2, "subset": "math"},
    {"id": "f", "label": -1, "subset": "math"},
]
PB_SCORES = {
    "a": [0.9, 0.2, 0.8],   # first below 0.5 at 1 == label
    "b": [0.7, 0.1],        # predicts 1, label 0
    "c": [0.9, 0.6],        # predicts -1
    "d": [0.9, 0.4],        # predicts 1 on a correct trajectory
    "e": [0.8, 0.9, 0.3],   # predicts 2 == label
    "f": [0.6, 0.7],        # predicts -1
}


def test_first_error_is_first_step_strictly_below_threshold():
    assert predicted_first_error([0.9, 0.5, 0.49, 0.1]) == 2  # 0.5 itself is not "below"
    assert predicted_first_error([0.9, 0.8]) == -1
    assert predicted_first_error([]) == -1                     # nothing scored: no error found


def test_processbench_f1_averages_per_subset_f1():
    m = processbench_metrics(PB_RECORDS, PB_SCORES)
    assert m["subsets"]["gsm8k"] == {"acc_error": 0.5, "acc_correct": 0.5, "f1": 0.5, "n": 4}
    assert m["subsets"]["math"] == {"acc_error": 1.0, "acc_correct": 1.0, "f1": 1.0, "n": 2}
    assert m["f1"] == pytest.approx(0.75)
    assert (m["threshold"], m["threshold_source"]) == (0.5, "default")


def test_processbench_f1_is_zero_when_one_side_is_always_wrong():
    # Calls everything correct: acc_correct 1, acc_error 0 -> harmonic mean 0, not 0.5.
    records = [{"id": "x", "label": 0}, {"id": "y", "label": -1}]
    m = processbench_metrics(records, {"x": [0.9], "y": [0.9]})
    assert m["f1"] == 0.0


def test_threshold_tuned_on_dev_is_applied_to_test():
    # dev: h's wrong step scores 0.6, g's lowest correct step 0.7: any t in (0.6, 0.7] is perfect;
    # ties go to the threshold closest to 0.5 -> 0.61. At 0.5 the dev F1 would be 0.
    dev = [{"id": "g", "label": -1}, {"id": "h", "label": 0}]
    test = [{"id": "i", "label": 0}, {"id": "j", "label": -1}]
    scores = {"g": [0.7, 0.8], "h": [0.6, 0.9], "i": [0.55, 0.9], "j": [0.65]}
    assert tune_threshold(dev, scores) == pytest.approx(0.61)
    m = processbench_tuned(test, dev, scores)
    assert m["threshold"] == pytest.approx(0.61) and m["threshold_source"] == "tuned"
    assert m["f1"] == 1.0 and m["dev_f1"] == 1.0
    assert processbench_metrics(test, scores)["f1"] == 0.0  # the default threshold misses i


def test_tuned_threshold_is_the_grid_argmax_of_processbench_f1():
    # tune_threshold counts each record's hit interval instead of predicting it at all 99 thresholds; it must
    # pick what a brute-force sweep of processbench_metrics picks. Scores sit on grid values (a step scored
    # exactly t is not below t), labels fall past the scored steps, and some records have no scored step.
    rng = random.Random(7)
    for trial in range(30):
        records, scores = [], {}
        for k in range(rng.randint(1, 40)):
            n = rng.randint(0, 6)
            scores[f"r{k}"] = [rng.choice([rng.random(), round(rng.randint(1, 99) * 0.01, 2)]) for _ in range(n)]
            records.append({"id": f"r{k}", "label": rng.randint(-1, 7), "subset": rng.choice(["a", "b"])})
        brute = max(THRESHOLD_GRID, key=lambda t: (processbench_metrics(records, scores, t)["f1"], -abs(t - 0.5)))
        assert tune_threshold(records, scores) == brute, trial


def _ids_in_fold(fold: int, n: int) -> list[str]:
    return [i for i in (f"t{k}" for k in range(100)) if fold_of(i, 2) == fold][:n]


def test_crossfit_scores_each_fold_at_a_threshold_tuned_on_the_other():
    # Fold 0 separates at t in (0.6, 0.7], fold 1 at t in (0.3, 0.4]: no single threshold fits both.
    (e0, c0), (e1, c1) = _ids_in_fold(0, 2), _ids_in_fold(1, 2)
    records = [{"id": e0, "label": 0}, {"id": c0, "label": -1}, {"id": e1, "label": 0}, {"id": c1, "label": -1}]
    scores = {e0: [0.6], c0: [0.7], e1: [0.3], c1: [0.4]}
    m = processbench_crossfit(records, scores)
    assert m["thresholds"] == [pytest.approx(0.4), pytest.approx(0.61)]  # fold 0's from fold 1 and back
    # Fold 0 at 0.4 misses e0 and keeps c0; fold 1 at 0.61 finds e1 and flags c1: acc 1/2 each, F1 0.5.
    # Tuning on all four records at once would have scored each fold at its own threshold.
    assert m["f1"] == pytest.approx(0.5) and m["threshold_source"] == "cross-fit (2 folds)"


def test_crossfit_recovers_a_shifted_calibration():
    # Every error step scores 0.6 and every correct one 0.8: at 0.5 no error is found; any held-out
    # fold finds the gap, so the cross-fitted F1 is 1.
    ids = _ids_in_fold(0, 3) + _ids_in_fold(1, 3)
    records = [{"id": i, "label": (1 if k % 2 else -1)} for k, i in enumerate(ids)]
    scores = {r["id"]: ([0.8, 0.6] if r["label"] == 1 else [0.8, 0.8]) for r in records}
    assert processbench_metrics(records, scores)["f1"] == 0.0
    assert processbench_crossfit(records, scores)["f1"] == 1.0
    with pytest.raises(ActPRMError, match="at least 2 folds"):
        processbench_crossfit(records, scores, folds=1)


# PRMBench: two records share idx "p1" (as in the real data) in different categories.
# circular p1, wrong steps 2,3 (1-based): scores -> TP, TN, FP, TP: F1 4/5, F1_neg 2/3 -> 0.7333.
# counterfactual p1, wrong step 3: 0.4 and 0.5 (not > 0.5) are FN, then TN: F1 0, F1_neg 1/2 -> 0.25.
# redundency p2, wrong steps 2 and 5 (5 is past the end, ignored): TP, TN -> 1.0.
# All steps: TP 3, FP 1, TN 3, FN 2 -> F1 6/9, F1_neg 6/9 -> PRMScore 2/3.
PRMB_RECORDS = [
    {"idx": "p1", "classification": "circular", "modified_question": "q",
     "modified_process": ["s1", "s2", "s3", "s4"], "error_steps": [2, 3]},
    {"idx": "p1", "classification": "counterfactual", "modified_question": "q",
     "modified_process": ["s1", "s2", "s3"], "error_steps": [3]},
    {"idx": "p2", "classification": "redundency", "modified_question": "q2",
     "modified_process": ["t1", "t2"], "error_steps": [2, 5]},
]
PRMB_SCORES = {
    "circular_p1": [0.9, 0.3, 0.8, 0.6],
    "counterfactual_p1": [0.4, 0.5, 0.1],
    "redundency_p2": [0.9, 0.2],
}


def test_prmscore_micro_sums_steps_with_categories_and_groups():
    m = prmbench_metrics(PRMB_RECORDS, PRMB_SCORES)
    circ, cf, red = (m["categories"][c] for c in ("circular", "counterfactual", "redundency"))
    assert (circ["tp"], circ["fp"], circ["tn"], circ["fn"]) == (2, 1, 1, 0)
    assert circ["f1"] == pytest.approx(0.8) and circ["f1_negative"] == pytest.approx(2 / 3)
    assert circ["prmscore"] == pytest.approx(0.5 * 0.8 + 0.5 * 2 / 3)
    assert (cf["tp"], cf["fp"], cf["tn"], cf["fn"]) == (0, 0, 1, 2)
    assert cf["prmscore"] == pytest.approx(0.25)
    assert red["prmscore"] == pytest.approx(1.0)
    assert m["prmscore"] == pytest.approx(2 / 3) and m["steps"] == 9
    assert m["groups"]["simplicity"]["prmscore"] == pytest.approx((circ["prmscore"] + 1.0) / 2)
    assert m["groups"]["soundness"]["prmscore"] == pytest.approx(0.25)
    assert "sensitivity" not in m["groups"]  # no category of that group present


def test_multi_solutions_is_scored_by_f1_alone_as_prmbench_does():
    """Every step of a multi_solutions process is correct: there is no error to find, so the category's score is
    F1 (a perfect PRM gets 1.0 there, not 0.5); the overall PRMScore still pools its steps as positives."""
    records = [{"idx": "m1", "classification": "multi_solutions", "modified_question": "q",
                "modified_process": ["a", "b", "c", "d"], "error_steps": []}]
    perfect = prmbench_metrics(records, {"multi_solutions_m1": [0.9, 0.8, 0.7, 0.6]})
    assert perfect["categories"]["multi_solutions"]["prmscore"] == pytest.approx(1.0)
    assert perfect["groups"]["sensitivity"]["prmscore"] == pytest.approx(1.0)
    one_miss = prmbench_metrics(records, {"multi_solutions_m1": [0.9, 0.2, 0.7, 0.6]})
    assert one_miss["categories"]["multi_solutions"]["prmscore"] == pytest.approx(2 * 3 / (2 * 3 + 1))
    assert perfect["prmscore"] == pytest.approx(0.5)  # overall: F1 1.0, F1_neg 0 (no erroneous step anywhere)


def test_prmscore_of_always_correct_is_half_f1_only():
    # A PRM that calls every step correct finds no error: F1_neg = 0.
    scores = {k: [0.99] * len(v) for k, v in PRMB_SCORES.items()}
    m = prmbench_metrics(PRMB_RECORDS, scores)
    assert m["f1_negative"] == 0.0
    assert m["prmscore"] == pytest.approx(0.5 * (2 * 5 / (2 * 5 + 4)))


def _write_jsonl(path, rows):
    path.write_text("".join(json.dumps(r) + "\n" for r in rows))
    return path


def test_processbench_files_take_subset_from_file_stem(tmp_path):
    data = tmp_path / "bench"
    data.mkdir()
    for subset in ("gsm8k", "math"):
        _write_jsonl(data / f"{subset}.jsonl",
                     [{"id": r["id"], "problem": "p", "steps": ["s"] * len(PB_SCORES[r["id"]]), "label": r["label"]}
                      for r in PB_RECORDS if r["subset"] == subset])
    preds = _write_jsonl(tmp_path / "preds.jsonl", [{"id": k, "step_scores": v} for k, v in PB_SCORES.items()])
    kind, records = read_eval_data(data)
    assert kind == "processbench" and {r["subset"] for r in records} == {"gsm8k", "math"}
    m = evaluate_predictions(data, preds)
    assert m["benchmark"] == "processbench" and m["f1"] == pytest.approx(0.75)


def test_prmbench_predictions_may_use_bare_idx_when_unique(tmp_path):
    records = [PRMB_RECORDS[0], PRMB_RECORDS[2]]  # p1 and p2: unique idx
    data = _write_jsonl(tmp_path / "prmbench.jsonl", records)
    preds = _write_jsonl(tmp_path / "preds.jsonl", [{"idx": "p1", "step_scores": PRMB_SCORES["circular_p1"]},
                                                   {"idx": "p2", "step_scores": PRMB_SCORES["redundency_p2"]}])
    m = evaluate_predictions(data, preds)
    assert m["benchmark"] == "prmbench"
    assert m["categories"]["circular"]["prmscore"] == pytest.approx(0.5 * 0.8 + 0.5 * 2 / 3)


def test_mismatching_ids_name_the_first_missing(tmp_path):
    data = _write_jsonl(tmp_path / "gsm8k.jsonl",
                        [{"id": f"t{i}", "problem": "p", "steps": ["s"], "label": -1} for i in range(8)])
    preds = _write_jsonl(tmp_path / "preds.jsonl", [{"id": "t0", "step_scores": [0.9]},
                                                   {"id": "other", "step_scores": [0.9]}])
    with pytest.raises(ActPRMError, match=r"7 of 8 .*'t1', 't2', 't3', 't4', 't5'\)"):
        evaluate_predictions(data, preds)


def test_nan_scores_are_rejected(tmp_path):
    preds = tmp_path / "preds.jsonl"
    preds.write_text('{"id": "a", "step_scores": [0.9, NaN]}\n')
    with pytest.raises(ActPRMError, match="NaN"):
        read_predictions(preds)
    with pytest.raises(ActPRMError, match="NaN"):
        processbench_metrics([{"id": "a", "label": -1}], {"a": [float("nan")]})


def test_more_scores_than_steps_is_an_error(tmp_path):
    data = _write_jsonl(tmp_path / "gsm8k.jsonl", [{"id": "a", "problem": "p", "steps": ["s"], "label": -1}])
    preds = _write_jsonl(tmp_path / "preds.jsonl", [{"id": "a", "step_scores": [0.9, 0.9]}])
    with pytest.raises(ActPRMError, match="2 step scores for 1 steps"):
        evaluate_predictions(data, preds)


def test_record_missing_fields_is_a_clear_error(tmp_path):
    data = _write_jsonl(tmp_path / "gsm8k.jsonl", [{"id": "a", "problem": "p", "steps": ["s"]}])
    with pytest.raises(ActPRMError, match=r"gsm8k.jsonl:1: processbench record lacks label"):
        read_eval_data(data)


def test_evaluation_files_with_repeated_ids_or_a_dev_split_that_overlaps_the_test_are_refused(tmp_path):
    """Scores are matched to records by id: a repeated id would judge one record on another's scores, and a
    threshold tuned on test records would be scored on them."""
    rows = [{"id": r["id"], "problem": "p", "steps": ["s"] * len(PB_SCORES[r["id"]]), "label": r["label"]}
            for r in PB_RECORDS]
    folder = tmp_path / "bench"
    folder.mkdir()
    _write_jsonl(folder / "gsm8k.jsonl", rows[:2])
    _write_jsonl(folder / "math.jsonl", [{**rows[2], "id": rows[0]["id"]}])  # ids restart in each subset file
    with pytest.raises(ActPRMError, match=f"record {rows[0]['id']!r} appears twice"):
        read_eval_data(folder)

    test = _write_jsonl(tmp_path / "test.jsonl", rows[:3])
    dev = _write_jsonl(tmp_path / "dev.jsonl", rows[2:])
    preds = _write_jsonl(tmp_path / "preds.jsonl", [{"id": k, "step_scores": v} for k, v in PB_SCORES.items()])
    with pytest.raises(ActPRMError, match=f"1 dev record.s. are also test records .e.g. {rows[2]['id']!r}"):
        evaluate_predictions(test, preds, dev_data_path=dev)
    prmbench = _write_jsonl(tmp_path / "prmbench.jsonl", PRMB_RECORDS)
    with pytest.raises(ActPRMError, match="PRMBench's PRMScore is defined at 0.5"):
        evaluate_predictions(prmbench, preds, dev_data_path=dev)
