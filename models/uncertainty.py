"""Ensemble uncertainty of a trajectory (ActPRM, Duan et al., 2025, Sec. 3.2) and acquisition strategies.

For each step the E heads give probabilities p_e; mu is their mean and sigma their UNBIASED std
(``correction=1``, `torch.std`'s default, as the official trainer computes it: sail-sg/ActivePRM,
active_sft_trainer; with E = 32 it is sqrt(32/31) = 1.016 times the population std, which flips 29 of 20,000
near-threshold trajectories). With one head there is no spread: sigma is 0. Every consumer (scoring, export,
training selection) uses `step_stats`, so the choice is made once here.

A step is *confident* when sigma <= std_threshold and (mu >= p_threshold or mu <= 1 - p_threshold)
(paper: 0.95 and 0.005). A trajectory is *uncertain* when any step up to and including its first
predicted error (the first step with mu < 0.5; all steps when there is none) is not confident: later
steps do not matter to a PRM whose verdict is "the first error is here". A step the model never read
(past its max_length) is not confident either.

Acquisition strategies map one trajectory's (E, S) probabilities to a score for ranking when the budget
is smaller than the uncertain set (higher = label first). The `uncertain` flag is always the ActPRM
rule; strategies only order. They aggregate with max over the decisive steps (up to the first predicted
error), matching the "any step" form of the rule. `power_order` draws that order at random, weighted by the
score, instead of sorting by it.
"""

from __future__ import annotations

import math

from collections.abc import Callable

import torch

from models.errors import ModelError

P_THRESHOLD = 0.95
STD_THRESHOLD = 0.005

# Acquisition strategies by name, added with @strategy("name"): a plain dict, so models/ needs nothing of the
# pipeline's registry (actprm.registry).
STRATEGIES: dict[str, Callable[..., float]] = {}


def strategy(name: str) -> Callable[[Callable[..., float]], Callable[..., float]]:
    """Register an acquisition strategy: fn(probs (E, S), *, p_threshold, std_threshold, generator) -> score."""
    def register(fn: Callable[..., float]) -> Callable[..., float]:
        if name in STRATEGIES:
            raise ValueError(f"acquisition strategy {name!r} is registered twice")
        STRATEGIES[name] = fn
        return fn

    return register


def get_strategy(name: str) -> Callable[..., float]:
    """The registered strategy `name`; an unknown name is a one-line ModelError listing the known ones."""
    try:
        return STRATEGIES[name]
    except KeyError:
        raise ModelError(f"unknown acquisition strategy {name!r}; choose one of: {', '.join(sorted(STRATEGIES))}") from None


def step_stats(probs: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """(E, S) head probabilities -> (mu, sigma), each (S,): mean and unbiased std over heads (0 for one head)."""
    probs = probs.double()
    if probs.shape[0] < 2:
        return probs.mean(0), torch.zeros_like(probs[0])
    return probs.mean(0), probs.std(0, correction=1)


def predicted_first_error(mu: torch.Tensor) -> int:
    """0-based index of the first step with mu < 0.5, or -1 when every step looks correct."""
    wrong = (mu < 0.5).nonzero()
    return int(wrong[0, 0]) if len(wrong) else -1


def decisive_steps(mu: torch.Tensor) -> int:
    """How many leading steps decide the verdict: up to and including the first predicted error."""
    fe = predicted_first_error(mu)
    return len(mu) if fe < 0 else fe + 1


def confident_steps(mu: torch.Tensor, sigma: torch.Tensor, p_threshold: float = P_THRESHOLD,
                    std_threshold: float = STD_THRESHOLD) -> torch.Tensor:
    return (sigma <= std_threshold) & ((mu >= p_threshold) | (mu <= 1 - p_threshold))


def trajectory_uncertain(mu: torch.Tensor, sigma: torch.Tensor, p_threshold: float = P_THRESHOLD,
                         std_threshold: float = STD_THRESHOLD, unscored_steps: int = 0) -> bool:
    """The ActPRM rule; a trajectory with no scored step is uncertain (we know nothing about it).

    `unscored_steps`: steps past the model's max_length, never read. When no scored step is predicted wrong,
    the decisive steps run to the end of the trajectory, so those unread steps decide it: uncertain."""
    mu, sigma = torch.as_tensor(mu, dtype=torch.float64), torch.as_tensor(sigma, dtype=torch.float64)
    if len(mu) == 0:
        return True
    if unscored_steps > 0 and predicted_first_error(mu) < 0:
        return True
    k = decisive_steps(mu)
    return not bool(confident_steps(mu[:k], sigma[:k], p_threshold, std_threshold).all())


def acquisition(strategy: str, probs: torch.Tensor, *, p_threshold: float = P_THRESHOLD,
                std_threshold: float = STD_THRESHOLD, generator: torch.Generator | None = None) -> float:
    """Acquisition score of one trajectory under a registered strategy (higher = label first)."""
    if probs.shape[-1] == 0:
        return math.inf  # unscored: nothing is known, ask first
    return float(get_strategy(strategy)(probs, p_threshold=p_threshold, std_threshold=std_threshold,
                                         generator=generator))


def power_order(scores: list[float], generator: torch.Generator, beta: float = 1.0) -> list[int]:
    """Positions in a random order drawn as sampling without replacement with probability proportional to
    score ** beta: power acquisition (Kirsch et al., 2023, "Stochastic Batch Acquisition", TMLR), beta = 1 as
    they recommend. A top-k batch of a large pool batch is many near-copies of one kind of hard trajectory; a
    draw weighted by the score still favours uncertain ones but spreads over the batch. Drawn with the
    Gumbel-top-k trick (Kool et al., 2019): sorting beta * log(score) + Gumbel noise is that sampling, in one
    pass. A score of 0 sorts last (never drawn while a positive one is left), an infinite one first."""
    s = torch.as_tensor(scores, dtype=torch.float64)
    u = torch.rand(len(s), generator=generator, dtype=torch.float64).clamp(min=1e-300)
    keys = beta * s.clamp(min=0).log() - (-u.log()).log()
    return sorted(range(len(s)), key=lambda i: (-float(keys[i]), i))


@strategy("actprm")
def actprm_score(probs, *, p_threshold, std_threshold, generator=None) -> float:
    """max over decisive steps of (gap + 2 sigma) / 2, in [0, 1].

    gap = distance of mu from the confident region, scaled by its width (p - 0.5) so 0 = inside it and
    1 = mu at 0.5; 2 sigma scales the std by its maximum (0.5 for values in [0, 1]). Used to order the
    uncertain set; a trajectory confident everywhere scores at most std_threshold.
    """
    mu, sigma = step_stats(probs)
    k = decisive_steps(mu)
    width = max(p_threshold - 0.5, 1e-9)
    gap = torch.where(mu >= 0.5, (p_threshold - mu).clamp(min=0), (mu - (1 - p_threshold)).clamp(min=0)) / width
    return float(((gap.clamp(max=1) + 2 * sigma) / 2)[:k].max())


@strategy("random")
def random_score(probs, *, p_threshold, std_threshold, generator=None) -> float:
    """Uniform random ranking (the paper's random-selection baseline)."""
    return float(torch.rand((), generator=generator))


def _binary_entropy(p: torch.Tensor) -> torch.Tensor:
    p = p.clamp(1e-12, 1 - 1e-12)
    return -(p * p.log() + (1 - p) * (1 - p).log())


@strategy("entropy")
def entropy_score(probs, *, p_threshold, std_threshold, generator=None) -> float:
    """Predictive entropy H[mu] (nats), max over decisive steps."""
    mu, _ = step_stats(probs)
    return float(_binary_entropy(mu)[: decisive_steps(mu)].max())


@strategy("bald")
def bald_score(probs, *, p_threshold, std_threshold, generator=None) -> float:
    """BALD mutual information H[mean_e p] - mean_e H[p_e] (Houlsby et al., 2011), max over decisive steps."""
    probs = probs.double()
    mu = probs.mean(0)
    mi = _binary_entropy(mu) - _binary_entropy(probs).mean(0)
    return float(mi[: decisive_steps(mu)].max())
