"""DP-FTRL's tree noise and epoch cohorts, against the tree they must implement."""

from __future__ import annotations

import numpy as np
import pytest

from common.privacy.keystream import KeystreamRandom
from server.federation.tree_noise import EpochCohorts, TreeNoise

SIZE = 5


def _node_draws(epoch_rounds: int, rounds: int, sigma: float) -> list[np.ndarray]:
    """The fresh noise drawn for the node ending at each round, in the tree's order."""
    rng = KeystreamRandom.from_seed("tree")
    return [sigma * rng.normal(SIZE) for _ in range(rounds)]


def _prefix_noise(draws: list[np.ndarray], epoch_rounds: int, server_round: int) -> np.ndarray:
    """The noise of the prefix sum of ``server_round``'s epoch, read off the binary
    decomposition of its place in the epoch: node ending at e spans lowbit(e) rounds."""
    start = (server_round - 1) // epoch_rounds * epoch_rounds
    position, total = server_round - start, np.zeros(SIZE)
    while position:
        total = total + draws[start + position - 1]
        position -= position & -position
    return total


@pytest.mark.parametrize("epoch_rounds", [1, 5, 8, 13])
def test_the_released_noise_adds_up_to_the_trees_prefix_noise(epoch_rounds):
    tree = TreeNoise(epoch_rounds, 0.7, KeystreamRandom.from_seed("tree"))
    draws = _node_draws(epoch_rounds, 40, 0.7)
    model_noise = np.zeros(SIZE)
    for server_round in range(1, 41):
        noise, nodes = tree.increment(server_round, SIZE)
        model_noise = model_noise + noise
        position = (server_round - 1) % epoch_rounds + 1
        assert nodes == 1 + ((position & -position).bit_length() - 1)
        # the model carries the epochs before (restarted trees) plus this epoch's prefix
        ends = range(epoch_rounds, server_round - position + 1, epoch_rounds)
        before = sum((_prefix_noise(draws, epoch_rounds, end) for end in ends), np.zeros(SIZE))
        want = before + _prefix_noise(draws, epoch_rounds, server_round)
        np.testing.assert_allclose(model_noise, want, atol=1e-12)


def test_the_prefix_noise_grows_with_log_rounds_not_rounds():
    trials, rounds = 400, 16
    prefix = np.zeros((trials, rounds))
    for t in range(trials):
        tree, total = TreeNoise(rounds, 1.0, KeystreamRandom.from_seed("v", t)), 0.0
        for server_round in range(1, rounds + 1):
            total = total + tree.increment(server_round, 1)[0][0]
            prefix[t, server_round - 1] = total
    variance = prefix.var(axis=0)
    popcount = np.array([bin(j).count("1") for j in range(1, rounds + 1)])
    np.testing.assert_allclose(variance, popcount, rtol=0.25)
    assert variance[15] < 2.0  # one node after 16 rounds; fresh noise each round: 16


def test_a_skipped_round_is_carried_into_the_next_release():
    every = TreeNoise(8, 1.0, KeystreamRandom.from_seed("c"))
    skipping = TreeNoise(8, 1.0, KeystreamRandom.from_seed("c"))
    released = [every.increment(r, SIZE) for r in (1, 2, 3)]
    first = skipping.increment(1, SIZE)
    carried, nodes = skipping.increment(3, SIZE)  # round 2 was never aggregated
    np.testing.assert_allclose(first[0], released[0][0])
    np.testing.assert_allclose(carried, released[1][0] + released[2][0], atol=1e-12)
    assert nodes == released[1][1] + released[2][1] == 3
    with pytest.raises(ValueError, match="already had its noise"):
        skipping.increment(3, SIZE)


@pytest.mark.parametrize(("released", "variance"), [((2,), 1), ((1, 2, 4), 2), ((5,), 2)])
def test_the_variance_of_a_carried_release_counts_cancelled_nodes_once(released, variance):
    """Skipping round 1 and releasing at 2 gives the node [1..2] alone; skipping 3 and
    releasing at 4 gives [1..4] minus [1..2]; skipping 1 to 4 gives [1..4] plus [5]."""
    trials, last = 600, np.zeros(600)
    for t in range(trials):
        tree = TreeNoise(8, 1.0, KeystreamRandom.from_seed("carried", t))
        for server_round in released:
            noise, reported = tree.increment(server_round, 1)
        last[t] = noise[0]
    assert reported == variance
    assert last.var() == pytest.approx(variance, rel=0.2)


def test_each_device_joins_once_an_epoch_at_a_uniform_round():
    devices = list(range(101, 141))  # 40 devices, 6 rounds an epoch
    cohorts = EpochCohorts(6, KeystreamRandom.from_seed("e"))
    epochs, places = [], np.zeros((40, 6))
    for epoch in range(300):
        joined = [cohorts.cohort(epoch * 6 + j, devices) for j in range(1, 7)]
        flat = [node for cohort in joined for node in cohort]
        assert sorted(flat) == devices
        assert all(c == [d for d in devices if d in c] for c in joined)  # in device order
        for place, cohort in enumerate(joined):
            places[[d - 101 for d in cohort], place] += 1
        epochs.append([frozenset(c) for c in joined])
    assert len(set(map(tuple, epochs))) == 300
    np.testing.assert_allclose(places.mean(axis=0), 50, rtol=0.1)  # uniform over the epoch
    assert places.min() > 25  # every device at every place


def test_a_devices_round_does_not_depend_on_who_else_is_enrolled():
    """Independent draws: a device's round is the same whether or not the devices drawn
    after it are enrolled (no split of a shuffled list)."""
    full = EpochCohorts(5, KeystreamRandom.from_seed("i"))
    fewer = EpochCohorts(5, KeystreamRandom.from_seed("i"))
    devices = list(range(1, 31))
    for server_round in range(1, 6):
        kept = set(fewer.cohort(server_round, devices[:20]))
        assert kept == set(full.cohort(server_round, devices)) & set(devices[:20])


def test_a_device_registered_mid_epoch_waits_for_the_next_epoch():
    cohorts = EpochCohorts(4, KeystreamRandom.from_seed("m"))
    devices = list(range(1, 21))
    seen = set(cohorts.cohort(1, devices))
    for server_round in (2, 3, 4):
        seen |= set(cohorts.cohort(server_round, [*devices, 99]))
    assert 99 not in seen and seen == set(devices)
    assert 99 in {n for r in range(5, 9) for n in cohorts.cohort(r, [*devices, 99])}


def test_bad_arguments_are_refused():
    rng = KeystreamRandom.from_seed("x")
    with pytest.raises(ValueError, match="epoch_rounds"):
        TreeNoise(0, 1.0, rng)
    with pytest.raises(ValueError, match="sigma"):
        TreeNoise(3, -1.0, rng)
    with pytest.raises(ValueError, match="epoch_rounds"):
        EpochCohorts(0, rng)
