"""study/scripts/signals.py: how each acquisition score's ranking lines up with the heads' mistakes."""

import pytest
import torch

from models import IGNORE_INDEX
from study.scripts import signals


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


def test_the_learned_predictor_finds_a_feature_that_marks_the_mistakes_and_never_reads_a_trajectorys_own_verdict():
    wrong = [i % 3 == 0 for i in range(30)]
    noise = torch.randn(30, 2, generator=torch.Generator().manual_seed(0), dtype=torch.float64)
    marked = torch.cat([torch.tensor(wrong, dtype=torch.float64).unsqueeze(1), noise], 1)
    scores = signals.learned_scores(marked, wrong, seed=1)
    assert signals.top_half(scores) >= {i for i in range(30) if wrong[i]}
    # One-hot features let a fit memorize every verdict it sees; scored out of fold, no trajectory's own verdict
    # moves its score, so each fold's scores are all alike.
    scores = torch.tensor(signals.learned_scores(torch.eye(30, dtype=torch.float64), wrong, seed=1))
    for fold in torch.randperm(30, generator=torch.Generator().manual_seed(1)).tensor_split(2):
        assert torch.allclose(scores[fold], scores[fold][0].expand(len(fold)))


def test_trajectory_features_read_the_statistics_and_the_deciding_steps_state():
    probs = torch.tensor([[0.9, 0.2, 0.9], [0.8, 0.4, 0.9]])
    states = torch.tensor([[1.0, 0.0], [0.0, 3.0], [5.0, 5.0]])
    stats = signals.trajectory_features(probs)
    # 3 steps; the mean's lowest 0.3 and average 0.683; verdict: an error at step 1, so 2 steps decide it and
    # the closest of them to 0.5 is 0.2 away.
    assert stats[0] == 3 and stats[1] == pytest.approx(0.3) and stats[2] == pytest.approx(0.6833, abs=1e-4)
    assert stats[5] == pytest.approx(0.2) and stats[6] == 0 and stats[7] == 2
    full = signals.trajectory_features(probs, states)
    assert full[:2].tolist() == pytest.approx([2.0, 8 / 3]) and full[2:4].tolist() == [0.0, 3.0]
    assert torch.equal(full[4:], stats)


def test_signal_rows_add_the_learned_row_only_with_features():
    probs, labels, first_errors = _pool()
    features = torch.stack([signals.trajectory_features(p) for p in probs])
    assert "learned" in signals.signal_rows(probs, labels, first_errors, features=features)["signals"]
    assert "learned" not in signals.signal_rows(probs, labels, first_errors)["signals"]
