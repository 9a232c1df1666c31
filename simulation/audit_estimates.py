"""The statistics of the privacy audit: empirical epsilon from canary cosines, AUC, and
top-k hit rates against their chance level.

``empirical_epsilon`` follows the one-shot estimate of Andrew et al. (ICLR 2024): the
cosines of the final model delta with the canaries that were never inserted are fitted by
a Gaussian N(mean_out, std_out^2); the inserted canaries' cosines shift it to mean_in. The
two Gaussians are read as a Gaussian-DP mechanism of mu = (mean_in - mean_out) / std_out,
whose epsilon at delta is the smallest epsilon with
delta(epsilon) = Phi(-epsilon/mu + mu/2) - e^epsilon Phi(-epsilon/mu - mu/2) <= delta
(Dong, Roth and Su, 2019). A bootstrap over the canaries gives its confidence interval.
"""

from __future__ import annotations

import math
from dataclasses import dataclass

import numpy as np
from scipy.optimize import brentq
from scipy.stats import norm


@dataclass(frozen=True)
class EpsilonEstimate:
    """An empirical epsilon at ``delta``, its confidence interval and the fitted mu."""

    epsilon: float
    low: float
    high: float
    mu: float
    delta: float
    confidence: float


def gdp_epsilon(mu: float, delta: float) -> float:
    """Epsilon at ``delta`` of mu-Gaussian DP (0 when mu <= 0)."""
    if not 0 < delta < 1:
        raise ValueError(f"delta must be in (0, 1), got {delta}")
    if mu <= 0 or _gdp_delta(mu, 0.0) <= delta:
        return 0.0
    high = 1.0
    while _gdp_delta(mu, high) > delta:
        high *= 2
    return float(brentq(lambda e: _gdp_delta(mu, e) - delta, 0.0, high, xtol=1e-6))


def _gdp_delta(mu: float, epsilon: float) -> float:
    tail = norm.cdf(-epsilon / mu - mu / 2)
    return float(norm.cdf(-epsilon / mu + mu / 2) - (math.exp(epsilon) * tail if tail else 0.0))


def canary_mu(inserted: np.ndarray, held_out: np.ndarray) -> float:
    """(mean_in - mean_out) / std_out of the canaries' cosines."""
    spread = float(np.std(held_out, ddof=1))
    if spread <= 0:
        raise ValueError("held-out canary cosines have no spread")
    return (float(np.mean(inserted)) - float(np.mean(held_out))) / spread


def empirical_epsilon(
    inserted: np.ndarray,
    held_out: np.ndarray,
    *,
    delta: float,
    confidence: float = 0.95,
    resamples: int = 1000,
    seed: int = 0,
) -> EpsilonEstimate:
    """Epsilon at ``delta`` from canary cosines, with a percentile-bootstrap interval."""
    inserted, held_out = np.asarray(inserted, float), np.asarray(held_out, float)
    if inserted.size < 2 or held_out.size < 2:
        raise ValueError("need at least 2 inserted and 2 held-out canaries")
    mu = canary_mu(inserted, held_out)
    rng = np.random.default_rng(seed)
    draws = []
    for _ in range(resamples):
        a = inserted[rng.integers(inserted.size, size=inserted.size)]
        b = held_out[rng.integers(held_out.size, size=held_out.size)]
        draws.append(gdp_epsilon(canary_mu(a, b), delta))
    tail = (1 - confidence) / 2 * 100
    low, high = np.percentile(draws, [tail, 100 - tail])
    return EpsilonEstimate(gdp_epsilon(mu, delta), float(low), float(high), mu, delta, confidence)


def auc(positives: np.ndarray, negatives: np.ndarray) -> float:
    """P(score of a positive > score of a negative), ties counting half (Mann-Whitney)."""
    pos, neg = np.asarray(positives, float), np.asarray(negatives, float)
    if not pos.size or not neg.size:
        raise ValueError("AUC needs at least one positive and one negative")
    greater = (pos[:, None] > neg[None, :]).sum()
    ties = (pos[:, None] == neg[None, :]).sum()
    return float((greater + 0.5 * ties) / (pos.size * neg.size))


def hits_any(top: np.ndarray, wanted: set[int]) -> bool:
    """Whether any of ``wanted`` is among the ranked ``top`` rows."""
    return bool(wanted.intersection(int(i) for i in top))


def chance_of_any(n_items: int, k: int, wanted: int) -> float:
    """Probability that ``k`` items drawn at random include one of ``wanted`` items."""
    if wanted <= 0:
        return 0.0
    if n_items - wanted < k:
        return 1.0
    miss = math.comb(n_items - wanted, k) / math.comb(n_items, k)
    return 1.0 - miss
