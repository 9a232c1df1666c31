"""SecAgg+'s neighbourhoods are sized for the tolerated dropout."""

from __future__ import annotations

import math

import pytest

from server.federation.secure_aggregation import NEIGHBOURHOOD_RISK, neighbourhood_size


def _short(size: int, threshold: float, tolerance: float) -> float:
    needed = max(2, round(threshold * size))
    return sum(
        math.comb(size, k) * (1 - tolerance) ** k * tolerance ** (size - k) for k in range(needed)
    )


@pytest.mark.parametrize("sampled", [5, 11, 40, 200, 2000])
def test_neighbourhoods_are_the_cohort_or_big_enough_for_the_dropout(sampled):
    size = neighbourhood_size(sampled, least=11, threshold=0.6, tolerance=0.3)
    assert 11 <= size <= sampled or size == sampled
    if size < sampled:
        assert size % 2 == 1
        assert sampled * _short(size, 0.6, 0.3) <= NEIGHBOURHOOD_RISK
        assert sampled * _short(size - 2, 0.6, 0.3) > NEIGHBOURHOOD_RISK or size - 2 < 11


def test_no_dropout_keeps_the_configured_neighbourhood_and_more_dropout_grows_it():
    assert neighbourhood_size(500, least=11, threshold=0.6, tolerance=0.0) == 11
    sizes = [neighbourhood_size(500, least=11, threshold=0.5, tolerance=t) for t in (0.1, 0.2, 0.3)]
    assert sizes == sorted(sizes) and sizes[0] < sizes[-1]
    assert neighbourhood_size(500, least=11, threshold=0.6, tolerance=0.45) == 500  # only all
