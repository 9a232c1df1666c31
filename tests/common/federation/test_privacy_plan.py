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
    # the ledger's (amplified) epsilon is not claimed against the server, which sampled
    assert plan.against_whom().startswith("holds against readers of published versions;")
    assert "unamplified" in plan.against_whom()


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


def test_a_fixed_norm_run_accepts_only_its_own_norm(tmp_path):
    plan = _plan(tmp_path, clipping_norm=2.0)
    assert plan.for_round({"round": 3}) is plan
    assert plan.for_round({"clipping_norm": 2.0}) is plan
    with pytest.raises(ValueError, match="not the run's 2"):
        plan.for_round({"clipping_norm": 5.0})


def test_adaptive_rounds_keep_the_secagg_range_and_the_round_rdp(tmp_path):
    plan = _plan(tmp_path, adaptive_clipping=True, clipping_norm=1.0, clipping_ceiling=8.0)
    low, high = plan.for_round({"clipping_norm": 0.125}), plan.at_clipping(8.0)
    assert (low.clipping_norm, high.clipping_norm, plan.ceiling) == (0.125, 8.0, 8.0)
    assert low.clip_range == high.clip_range == plan.clip_range  # one SecAgg+ setup
    size = 5000
    np.testing.assert_allclose(low.round_rdp(size), plan.round_rdp(size), rtol=1e-12)
    np.testing.assert_allclose(high.round_rdp(size), plan.round_rdp(size), rtol=1e-12)
    # the noise scales with the round's norm
    assert low.sigma_device(size) < plan.sigma_device(size) < high.sigma_device(size)
    for bad in (8.5, 0.1, math.nan, True, "1.0"):
        with pytest.raises(ValueError, match="clipping norm"):
            plan.for_round({"clipping_norm": bad})


def test_adaptive_settings_are_checked(tmp_path):
    with pytest.raises(ConfigError, match="federation.clipping_norm"):
        _plan(tmp_path, adaptive_clipping=True, clipping_norm=20.0, clipping_ceiling=8.0)
    with pytest.raises(ConfigError, match="stats_share"):
        _plan(tmp_path, adaptive_clipping=True, stats_share=0.0)


def test_dp_ftrl_plans_epochs_of_fixed_cohorts_and_charges_tree_nodes(tmp_path):
    ftrl = {"mechanism": "dp-ftrl", "noise": "server", "clients_per_round": 7}
    plan = _plan(tmp_path, devices=100, **ftrl)
    assert plan.tree and plan.epoch_rounds == 14  # 100 // 7
    size = 5000
    rounds = [plan.round_rdp(size, r) for r in range(1, 31)]
    charged = [r for r, rdp in enumerate(rounds, start=1) if rdp.any()]
    assert charged == [1, 2, 4, 8, 15, 16, 18, 22, 29, 30]  # powers of two in each epoch
    for first, count in ((1, 30), (9, 13), (14, 1), (15, 0)):
        want = sum(rounds[first - 1 : first - 1 + count], np.zeros(len(rounds[0])))
        np.testing.assert_allclose(plan.planned_rdp(size, first)(count), want, rtol=1e-12)
    fedavg = _plan(tmp_path, devices=100, noise="server", clients_per_round=7)
    assert not fedavg.tree
    np.testing.assert_allclose(fedavg.planned_rdp(size, 5)(30), 30 * fedavg.round_rdp(size))


def test_dp_ftrl_settings_are_checked(tmp_path):
    with pytest.raises(ConfigError, match='federation.mechanism: "dp-ftrl" needs federation.noise'):
        _plan(tmp_path, mechanism="dp-ftrl")
    for setting in ({"adaptive_clipping": True}, {"sum_bound": True}):
        with pytest.raises(ConfigError, match="fixed clipping norm and no sum_bound"):
            _plan(tmp_path, mechanism="dp-ftrl", noise="server", **setting)
    assert not _plan(tmp_path, mechanism="dp-ftrl", dp=False, noise="server").tree
