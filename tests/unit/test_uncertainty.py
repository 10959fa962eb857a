"""The ActPRM uncertainty rule and the acquisition strategies."""

from __future__ import annotations

import math

import numpy as np
import pytest
import torch

from models.errors import ModelError
from models.uncertainty import (
    STRATEGIES, acquisition, power_order, predicted_first_error, step_stats, trajectory_uncertain,
)


def _rule_by_hand(probs: np.ndarray, p: float = 0.95, s: float = 0.005) -> bool:
    mu, sigma = probs.mean(0), probs.std(0, ddof=1)  # unbiased, as torch.std and the official trainer
    for j in range(len(mu)):
        confident = sigma[j] <= s and (mu[j] >= p or mu[j] <= 1 - p)
        if not confident:
            return True
        if mu[j] < 0.5:  # first predicted error: later steps do not count
            return False
    return False


def test_step_stats_are_mean_and_unbiased_std():
    probs = torch.rand(8, 5, generator=torch.Generator().manual_seed(0))
    mu, sigma = step_stats(probs)
    assert np.allclose(mu.numpy(), probs.numpy().mean(0))
    assert np.allclose(sigma.numpy(), probs.numpy().std(0, ddof=1))
    assert step_stats(probs[:1])[1].tolist() == [0.0] * 5  # defined for a single head


def test_rule_matches_hand_computation_on_random_ensembles():
    rng = np.random.default_rng(0)
    seen = set()
    for _ in range(400):
        steps = int(rng.integers(1, 7))
        # centres near 0/1 with tiny or large spread, so both verdicts occur
        centre = rng.choice([0.001, 0.02, 0.5, 0.97, 0.999], size=steps)
        spread = rng.choice([0.0005, 0.003, 0.05], size=steps)
        probs = np.clip(centre + rng.normal(0, 1, size=(16, steps)) * spread, 0, 1)
        mu, sigma = step_stats(torch.from_numpy(probs))
        got = trajectory_uncertain(mu, sigma)
        assert got == _rule_by_hand(probs)
        seen.add(got)
    assert seen == {True, False}


def test_steps_after_the_first_predicted_error_do_not_matter():
    mu = torch.tensor([0.999, 0.001, 0.5])
    sigma = torch.tensor([0.0, 0.0, 0.3])
    assert predicted_first_error(mu) == 1
    assert trajectory_uncertain(mu, sigma) is False
    assert trajectory_uncertain(torch.tensor([0.999, 0.6, 0.001]), torch.zeros(3)) is True
    assert predicted_first_error(torch.tensor([0.9, 0.8])) == -1
    assert trajectory_uncertain(torch.tensor([0.999, 0.999]), torch.tensor([0.0, 0.006])) is True
    assert trajectory_uncertain(torch.tensor([]), torch.tensor([])) is True


def test_steps_the_model_never_read_decide_a_trajectory_with_no_predicted_error():
    """Past max_length a trajectory's steps are not scored: when the read ones all look right, the verdict rests
    on the unread ones, so the trajectory is uncertain; a predicted error among the read steps still decides."""
    confident = torch.tensor([0.999, 0.999, 0.999])
    assert trajectory_uncertain(confident, torch.zeros(3)) is False
    assert trajectory_uncertain(confident, torch.zeros(3), unscored_steps=7) is True
    assert trajectory_uncertain(torch.tensor([0.999, 0.001, 0.999]), torch.zeros(3), unscored_steps=7) is False


def test_strategies_are_registered_and_unknown_is_an_error():
    assert sorted(STRATEGIES) == ["actprm", "bald", "entropy", "random"]
    with pytest.raises(ModelError, match="actprm"):
        acquisition("coreset", torch.rand(4, 3))


def test_actprm_acquisition_ranks_uncertain_above_confident():
    confident = torch.full((8, 3), 0.999)
    wobbly = confident.clone()
    wobbly[:, 1] = torch.linspace(0.6, 0.99, 8)
    wrong_then_noise = torch.tensor([[0.999, 0.01, 0.2], [0.999, 0.01, 0.9]])
    assert acquisition("actprm", confident) <= 0.005
    assert acquisition("actprm", wobbly) > acquisition("actprm", confident)
    assert acquisition("actprm", wrong_then_noise) == pytest.approx(acquisition("actprm", wrong_then_noise[:, :2]))


def test_bald_is_zero_when_heads_agree_and_entropy_peaks_at_one_half():
    agree = torch.full((4, 2), 0.7)
    assert acquisition("bald", agree) == pytest.approx(0.0, abs=1e-9)
    disagree = torch.tensor([[0.99, 0.99], [0.01, 0.99]])
    assert acquisition("bald", disagree) > 0.5
    assert acquisition("entropy", torch.full((3, 1), 0.5)) == pytest.approx(math.log(2))
    assert acquisition("entropy", torch.full((3, 1), 0.99)) < 0.1


def test_random_strategy_is_reproducible_with_a_generator():
    probs = torch.rand(4, 3)
    a = [acquisition("random", probs, generator=torch.Generator().manual_seed(7)) for _ in range(2)]
    assert a[0] == a[1] and 0.0 <= a[0] < 1.0


def test_power_order_draws_in_proportion_to_the_score_and_never_a_zero_before_a_positive():
    """Sampling without replacement with probability proportional to the score: a score of 3 comes first three
    times as often as a score of 1; 0 only after every positive score; an unscored trajectory (inf) first."""
    gen = torch.Generator().manual_seed(0)
    draws = [power_order([1.0, 0.0, 3.0], gen) for _ in range(4000)]
    assert all(sorted(d) == [0, 1, 2] and d[-1] == 1 for d in draws)
    first_high = sum(d[0] == 2 for d in draws) / len(draws)
    assert first_high == pytest.approx(0.75, abs=0.03)
    assert all(power_order([0.2, math.inf, 0.9], gen)[0] == 1 for _ in range(50))
    # Reproducible from the generator's seed, as the study's runs must be.
    assert power_order([0.5] * 20, torch.Generator().manual_seed(4)) == \
        power_order([0.5] * 20, torch.Generator().manual_seed(4))
