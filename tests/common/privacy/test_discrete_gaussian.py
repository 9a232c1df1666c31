"""The discrete Gaussian sampler: integer draws with the right variance and symmetry."""

from __future__ import annotations

import math

import numpy as np
import pytest

from common.privacy.discrete_gaussian import discrete_gaussian
from common.privacy.keystream import KeystreamRandom


def _exact_variance(sigma: float) -> float:
    x = np.arange(-int(20 * sigma) - 20, int(20 * sigma) + 21, dtype=np.float64)
    p = np.exp(-(x**2) / (2 * sigma**2))
    return float((p * x**2).sum() / p.sum())


@pytest.mark.parametrize("sigma", [0.4, 1.0, 3.7, 1500.0])
def test_variance_matches_the_discrete_gaussian(sigma):
    draws = discrete_gaussian(sigma, 200_000, KeystreamRandom.from_seed(sigma))
    assert draws.dtype == np.int64
    assert draws.var() == pytest.approx(_exact_variance(sigma), rel=0.02)
    assert abs(draws.mean()) < 4 * math.sqrt(_exact_variance(sigma) / len(draws))


def test_small_sigma_puts_the_right_mass_on_zero():
    sigma = 0.5
    draws = discrete_gaussian(sigma, 100_000, KeystreamRandom.from_seed("zero"))
    x = np.arange(-10, 11)
    p = np.exp(-(x**2) / (2 * sigma**2))
    assert (draws == 0).mean() == pytest.approx(p[10] / p.sum(), abs=0.01)


def test_zero_sigma_is_no_noise_and_bad_sigma_is_refused():
    assert not discrete_gaussian(0.0, 10, KeystreamRandom.from_seed(0)).any()
    with pytest.raises(ValueError, match="sigma"):
        discrete_gaussian(-1.0, 10, KeystreamRandom.from_seed(0))
