"""Adaptive clipping: the norm follows the quantile of update norms, within its bounds."""

from __future__ import annotations

import numpy as np
import pytest

from server.federation.adaptive_clipping import AdaptiveClipping


def _clipping(start: float = 1.0, **kwargs) -> AdaptiveClipping:
    settings = {"quantile": 0.5, "lr": 0.2, "floor": 0.01, "ceiling": 100.0} | kwargs
    return AdaptiveClipping(start, **settings)


def test_the_norm_grows_while_too_few_updates_fit_and_shrinks_while_too_many_do():
    clipping = _clipping()
    clipping.step(unclipped=10, expected=100)
    assert clipping.norm == pytest.approx(np.exp(0.2 * 0.4))
    clipping = _clipping()
    clipping.step(unclipped=90, expected=100)
    assert clipping.norm == pytest.approx(np.exp(-0.2 * 0.4))


def test_noised_shares_are_used_unclamped_and_the_norm_stays_within_its_bounds():
    clipping = _clipping(start=1.0, floor=0.5, ceiling=2.0)
    assert clipping.step(unclipped=-30, expected=40) == -0.75  # unbiased, as noised
    assert clipping.norm == pytest.approx(np.exp(0.2 * 1.25))
    assert clipping.step(unclipped=80, expected=40) == 2.0
    for _ in range(50):
        clipping.step(unclipped=0, expected=100)
    assert clipping.norm == 2.0
    for _ in range(50):
        clipping.step(unclipped=100, expected=100)
    assert clipping.norm == 0.5


@pytest.mark.parametrize("quantile", [0.1, 0.5])
def test_the_norm_converges_to_the_quantile_of_the_update_norms_under_heavy_noise(quantile):
    """Count noise of 25 on cohorts of 100 (this project's default statistics noise is
    about 20 counts): the norm still settles near the quantile, small ones included."""
    rng = np.random.default_rng(3)
    clipping, settled = _clipping(start=0.05, quantile=quantile), []
    for step in range(400):
        norms = rng.lognormal(mean=np.log(2.0), sigma=0.4, size=100)
        unclipped = float(np.sum(norms <= clipping.norm)) + rng.normal(0, 25)
        clipping.step(unclipped=unclipped, expected=100)
        settled += [clipping.norm] if step >= 200 else []
    want = 2.0 * np.exp(0.4 * {0.1: -1.2816, 0.5: 0.0}[quantile])  # the lognormal's quantile
    assert np.median(settled) == pytest.approx(want, rel=0.1)


def test_state_round_trips_and_bad_settings_fail_early():
    clipping = _clipping()
    clipping.step(unclipped=0, expected=10)
    again = _clipping()
    again.load_state_dict(clipping.state_dict())
    assert again.norm == clipping.norm
    with pytest.raises(ValueError, match="floor <= start <= ceiling"):
        _clipping(start=200.0)
    with pytest.raises(ValueError, match="quantile"):
        _clipping(quantile=1.0)
