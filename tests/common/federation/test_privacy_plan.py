"""The privacy plan: one set of numbers for devices, server and ledger."""

from __future__ import annotations

import math

import numpy as np
import pytest

from common.config import ConfigError, config_from_dict
from common.federation.privacy_plan import MODULUS, QUANTIZATION_RANGE, PrivacyPlan
from common.federation.run_spec import RunSpec


def _plan(tmp_path, devices=100, **federation) -> PrivacyPlan:
    config = config_from_dict({"federation": {"clients_per_round": 20, **federation}})
    return PrivacyPlan.from_spec(RunSpec(config, "marketplace", devices, tmp_path))


def test_device_shares_add_up_to_the_planned_noise_at_the_fewest_survivors(tmp_path):
    plan = _plan(tmp_path, noise_multiplier=1.2, clipping_norm=2.0, min_devices_fraction=0.5)
    assert plan.expected_devices == 20 and plan.min_devices == 10
    size = 5000
    total = plan.sigma_device(size) * math.sqrt(plan.min_devices)
    assert total == pytest.approx(1.2 * plan.l2_sensitivity_units(size))
    # in payload units, the sum's noise is sigma x payload norm, plus the rounding slack
    assert total / plan.scale == pytest.approx(1.2 * plan.payload_norm, rel=0.01)
    assert plan.sigma_server == 0.0 and plan.devices_add_noise


def test_server_placement_and_no_dp(tmp_path):
    server = _plan(tmp_path, noise="server", secagg=False, noise_multiplier=0.8)
    assert server.sigma_server == pytest.approx(0.8 * server.payload_norm)
    assert server.sigma_device(100) == 0.0
    assert "readers of published versions only" in server.against_whom()
    off = _plan(tmp_path, dp=False)
    assert off.noise_multiplier == 0.0 and not off.devices_add_noise
    assert np.isinf(off.round_rdp(100)).all()


def test_quantization_leaves_room_for_noise_and_large_cohorts(tmp_path):
    plan = _plan(tmp_path)
    assert QUANTIZATION_RANGE < 2**31 and MODULUS > 2**20 * QUANTIZATION_RANGE
    # a payload value of +-payload_norm uses 1/64 of the quantization range around its middle
    assert plan.payload_norm * plan.scale == pytest.approx(QUANTIZATION_RANGE / 128)


def test_devices_noise_needs_secagg(tmp_path):
    with pytest.raises(ConfigError, match="federation.noise"):
        _plan(tmp_path, secagg=False)
