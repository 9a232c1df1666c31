"""``federation.sum_bound``: honest noised sums pass, a boosted payload's round is refused."""

from __future__ import annotations

import numpy as np
from flwr.common import ndarrays_to_parameters, parameters_to_ndarrays

from common.federation.privacy_plan import PrivacyPlan
from server.federation.sum_bound import SumBound
from tests.server.federation.test_strategy import (
    _initial,
    _manager,
    _payloads,
    _results,
    _spec,
    _strategy,
)


def test_honest_sums_pass_even_when_every_payload_points_the_same_way(tmp_path):
    for noise in ("server", "devices"):
        spec = _spec(tmp_path, noise=noise, secagg=noise == "devices")
        plan = PrivacyPlan.from_spec(spec)
        dim, devices = 500, 12
        bound = SumBound(plan, dim)
        rng = np.random.default_rng(0)
        direction = rng.standard_normal(dim)
        honest = devices * plan.payload_norm * direction / np.linalg.norm(direction)
        sigma = bound.noise_std(devices)
        assert sigma > 0
        sums = honest + sigma * rng.standard_normal((300, dim))
        assert all(bound.admits(s, devices) for s in sums)
        # one device sending thirty payloads' worth more is over the limit (ten would pass:
        # the noise leaves that much room, see the module doc)
        heavier = sums[0] + 30 * plan.payload_norm * direction / np.linalg.norm(direction)
        assert not bound.admits(heavier, devices)


def _round(tmp_path, *, sum_bound: bool, boost: float):
    spec = _spec(tmp_path, noise="server", secagg=False, sum_bound=sum_bound)
    strategy = _strategy(spec)
    strategy.configure_fit(1, ndarrays_to_parameters(_initial()), _manager(40))
    codec, _, payloads = _payloads(spec, 10, scale=1.0)  # clipped to the norm
    update, stats = payloads[0][: codec.update_size], payloads[0][codec.update_size :]
    payloads[0] = np.concatenate([boost * update, stats])
    return strategy.aggregate_fit(1, _results(payloads), [])


def test_a_round_with_a_boosted_payload_is_refused_only_with_the_bound(tmp_path):
    params, figures = _round(tmp_path / "a", sum_bound=True, boost=1.0)
    assert params is not None and "refused" not in figures
    params, figures = _round(tmp_path / "b", sum_bound=True, boost=40.0)
    assert params is None and figures == {"devices": 10.0, "failures": 0.0, "refused": 1.0}
    # without the bound the same round moves the adapter by the boosted payload
    params, figures = _round(tmp_path / "c", sum_bound=False, boost=40.0)
    moved = [p - w for p, w in zip(parameters_to_ndarrays(params), _initial(), strict=True)]
    spec = _spec(tmp_path)
    plan = PrivacyPlan.from_spec(spec)
    assert np.sqrt(sum(np.sum(m * m) for m in moved)) > 2 * plan.clipping_norm
