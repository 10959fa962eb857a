"""bench/al_study_signals.py: how each acquisition score's ranking lines up with the heads' mistakes."""

import pytest
import torch

from actprm.testing.bench import load_bench_script
from models import IGNORE_INDEX

signals = load_bench_script("al_study_signals")


def _pool():
    """Four 3-step trajectories, two heads each. Gold: 0 and 1 are correct throughout, 2 and 3 err at step 1."""
    labels = torch.tensor([[1, 1, 1], [1, 1, 1], [1, 0, IGNORE_INDEX], [1, 0, IGNORE_INDEX]])
    first_errors = [-1, -1, 1, 1]
    probs = [torch.tensor([[0.95, 0.95, 0.95], [0.97, 0.97, 0.97]]),   # right and sure
             torch.tensor([[0.9, 0.2, 0.9], [0.8, 0.3, 0.9]]),         # wrong: sees an error at step 1
             torch.tensor([[0.9, 0.9, 0.9], [0.9, 0.8, 0.9]]),         # wrong: misses the error
             torch.tensor([[0.95, 0.05, 0.5], [0.97, 0.03, 0.5]])]     # right and sure
    return probs, labels, first_errors


def test_the_oracle_row_ranks_the_mistakes_first_and_the_base_rates_count_every_trajectory():
    probs, labels, first_errors = _pool()
    out = signals.signal_rows(probs, labels, first_errors)
    assert out["trajectories"] == 4
    assert out["base"] == {"verdict_wrong_share": 0.5, "error_share": 0.5}
    oracle = out["signals"]["oracle"]
    # Its top half is the two trajectories whose verdict the heads get wrong.
    assert oracle["spearman_with_oracle"] == pytest.approx(1.0) and oracle["oracle_top_half_shared"] == 1.0
    assert oracle["verdict_wrong_share"] == 1.0 and oracle["error_share"] == 0.5
    # Every registered strategy gets a row; ActPRM, whose rule reads the same two as uncertain, ranks them first too.
    assert set(out["signals"]) == {"oracle", "actprm", "bald", "entropy", "random"}
    assert out["signals"]["actprm"]["verdict_wrong_share"] == 1.0


def test_spearman_and_the_average_over_seeds():
    assert signals.spearman([1.0, 2.0, 3.0], [30.0, 20.0, 10.0]) == pytest.approx(-1.0)
    assert signals.spearman([1.0, 2.0, 3.0], [5.0, 6.0, 9.0]) == pytest.approx(1.0)
    a = {"base": {"error_share": 0.4}, "signals": {"x": {"error_share": 0.6}}}
    b = {"base": {"error_share": 0.6}, "signals": {"x": {"error_share": 0.8}}}
    assert signals.average([a, b]) == {"base": {"error_share": pytest.approx(0.5)},
                                       "signals": {"x": {"error_share": pytest.approx(0.7)}}}
