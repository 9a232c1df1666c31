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


def test_noised_counts_are_clamped_and_the_norm_stays_within_its_bounds():
    clipping = _clipping(start=1.0, floor=0.5, ceiling=2.0)
    assert clipping.step(unclipped=-30, expected=40) == 0.0
    assert clipping.step(unclipped=80, expected=40) == 1.0
    for _ in range(50):
        clipping.step(unclipped=0, expected=100)
    assert clipping.norm == 2.0
    for _ in range(50):
        clipping.step(unclipped=100, expected=100)
    assert clipping.norm == 0.5


def test_the_norm_converges_to_the_quantile_of_the_update_norms_under_noise():
    rng = np.random.default_rng(3)
    clipping = _clipping(start=0.05, quantile=0.3)
    for _ in range(150):
        norms = rng.lognormal(mean=np.log(2.0), sigma=0.4, size=100)
        unclipped = float(np.sum(norms <= clipping.norm)) + rng.normal(0, 5)
        clipping.step(unclipped=unclipped, expected=100)
    want = 2.0 * np.exp(0.4 * -0.5244)  # the lognormal's 30% quantile
    assert clipping.norm == pytest.approx(want, rel=0.15)


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
