"""The payload codec: clipping on the device, statistics within their bound, sums decode."""

from __future__ import annotations

import numpy as np
import pytest

from common.config import config_from_dict
from common.federation.payload import STATS, PayloadCodec
from common.federation.privacy_plan import PrivacyPlan
from common.federation.run_spec import RunSpec

SHAPES = [(4, 6), (4,), (6, 4), (6,)]


def _codec(share=0.0625, clip=1.0):
    return PayloadCodec.for_weights([np.zeros(s) for s in SHAPES], clip, share)


def _update(scale):
    rng = np.random.default_rng(0)
    return [scale * rng.standard_normal(s) for s in SHAPES]


def test_update_is_clipped_to_c_and_statistics_scaled_within_their_bound():
    codec = _codec()
    payload = codec.encode(_update(10.0), {"trained": 1.0, "base.ndcg": 2.0})
    assert payload.shape == (codec.update_size + len(STATS),) and payload.dtype == np.float32
    assert np.linalg.norm(payload[: codec.update_size]) == pytest.approx(1.0, rel=1e-5)
    stats = payload[codec.update_size :]
    assert stats.max() == pytest.approx(codec.gamma) and stats.min() == 0.0  # clipped to 1
    assert np.linalg.norm(payload) <= np.sqrt(1 + 0.0625) + 1e-5


def test_sums_decode_to_update_sums_and_counts():
    codec = _codec()
    updates = [_update(0.01), _update(0.02)]
    total = sum(codec.encode(u, {"trained": 1.0, "evaluated": 1.0}) for u in updates)
    arrays, stats = codec.decode(total)
    for got, a, b in zip(arrays, *updates, strict=True):
        np.testing.assert_allclose(got, a + b, atol=1e-6)
    assert stats["trained"] == pytest.approx(2.0) and stats["declined"] == pytest.approx(0.0)


def test_without_a_statistics_share_the_payload_is_the_update_alone():
    codec = _codec(share=0.0)
    payload = codec.encode(_update(0.01), {"trained": 1.0})
    assert payload.size == codec.update_size
    assert codec.decode(payload)[1] == {}


def test_bad_inputs_are_refused():
    codec = _codec()
    with pytest.raises(ValueError, match="unknown statistics"):
        codec.encode(_update(0.01), {"loss": 1.0})
    with pytest.raises(ValueError, match="values"):
        codec.encode([np.zeros(3)], {})
    with pytest.raises(ValueError, match="payload sum"):
        codec.decode(np.zeros(5))


def test_only_adaptive_runs_send_whether_the_update_fit(tmp_path):
    def plan(**federation):
        config = config_from_dict({"federation": federation})
        return PrivacyPlan.from_spec(RunSpec(config, "marketplace", 100, tmp_path))

    weights = [np.zeros(s) for s in SHAPES]
    fixed, adaptive = (
        PayloadCodec.for_plan(weights, plan()),
        PayloadCodec.for_plan(weights, plan(adaptive_clipping=True)),
    )
    assert fixed.names == STATS and adaptive.names == (*STATS, "unclipped")
    assert adaptive.size == fixed.size + 1
    with pytest.raises(ValueError, match="unknown statistics"):
        fixed.encode(weights, {"unclipped": 1.0})
    _, stats = adaptive.decode(adaptive.encode(weights, {"unclipped": 1.0}))
    assert stats["unclipped"] == pytest.approx(1.0)
