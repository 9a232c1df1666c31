"""Keystream randomness: reproducible from a seed, unpredictable from the OS, well spread."""

from __future__ import annotations

import numpy as np
import pytest

from common.privacy.keystream import KeystreamRandom


def test_the_same_seed_gives_the_same_stream_and_another_seed_another():
    a = KeystreamRandom.from_seed(1, "noise", 3).uint64(1000)
    b = KeystreamRandom.from_seed(1, "noise", 3).uint64(1000)
    c = KeystreamRandom.from_seed(1, "noise", 4).uint64(1000)
    np.testing.assert_array_equal(a, b)
    assert (a != c).mean() > 0.99
    assert (KeystreamRandom.from_os().uint64(8) != KeystreamRandom.from_os().uint64(8)).any()


def test_uniform_normal_and_bernoulli_have_their_distributions():
    rng = KeystreamRandom.from_seed("dist")
    u = rng.uniform(200_000)
    assert 0 < u.min() and u.max() < 1 and u.mean() == pytest.approx(0.5, abs=0.005)
    z = rng.normal(200_001)
    assert len(z) == 200_001
    assert z.mean() == pytest.approx(0.0, abs=0.01) and z.std() == pytest.approx(1.0, abs=0.01)
    assert rng.bernoulli(0.2, 100_000).mean() == pytest.approx(0.2, abs=0.005)


def test_a_key_must_be_256_bits():
    with pytest.raises(ValueError, match="32 bytes"):
        KeystreamRandom(b"short")


@pytest.mark.parametrize("position", [0, 1, 63, 64, 65, 1000])
def test_seek_continues_the_stream_where_position_says(position):
    whole = KeystreamRandom.from_seed("seek")
    head = whole.bytes(position)
    tail = whole.bytes(300)
    assert len(head) == whole.position - 300 == position
    again = KeystreamRandom.from_seed("seek")
    again.seek(position)
    assert again.bytes(300) == tail and again.position == position + 300
    with pytest.raises(ValueError, match="position"):
        again.seek(-1)
