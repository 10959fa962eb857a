"""The calibration (reliability) data behind the run's calibration plot: step labels as first_error implies them."""

from __future__ import annotations

import pytest

from actprm.metrics import step_calibration
from tasks.plots import curve_points


def test_steps_after_the_first_error_are_unlabeled_and_ece_weighs_bins_by_steps():
    # first_error 1: step 0 correct, step 1 wrong, step 2 unlabeled (left out); -1: every step correct
    records = [{"id": "a", "label": 1}, {"id": "b", "label": -1}]
    scores = {"a": [0.95, 0.15, 0.99], "b": [0.85, 0.92]}
    cal = step_calibration(records, scores, bins=10)
    assert cal["steps"] == 4
    by_bin = {round(b["lower"], 1): b for b in cal["bins"] if b["n"]}
    assert set(by_bin) == {0.1, 0.8, 0.9}
    assert by_bin[0.1]["correct_fraction"] == 0.0 and by_bin[0.9]["n"] == 2 and by_bin[0.9]["correct_fraction"] == 1.0
    # |0 - 0.15| + |1 - 0.85| + 2 * |1 - 0.935|, over 4 steps
    assert cal["ece"] == pytest.approx((0.15 + 0.15 + 2 * 0.065) / 4)
    assert step_calibration([], {})["ece"] is None


def test_a_probability_of_one_falls_in_the_last_bin():
    cal = step_calibration([{"id": "a", "label": -1}], {"a": [1.0, 0.0]}, bins=4)
    assert [b["n"] for b in cal["bins"]] == [1, 0, 0, 1]


def test_curve_points_accumulate_labels_over_rounds_in_order():
    rounds = [{"round": 2, "labels_bought": 15, "f1": 0.5, "model_version": "2", "promoted": False},
              {"round": 1, "labels_bought": 20, "f1": 0.4, "model_version": "1", "promoted": True}]
    assert [(p["round"], p["cumulative_labels"]) for p in curve_points(rounds)] == [(1, 20), (2, 35)]
