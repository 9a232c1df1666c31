"""Renyi DP of a round: the Gaussian (through Opacus) and the distributed discrete Gaussian."""

from __future__ import annotations

import math

import numpy as np
import pytest
from opacus.accountants import RDPAccountant

from common.privacy.accounting import (
    ORDERS,
    distributed_discrete_gaussian_rdp,
    epsilon_at,
    gaussian_rdp,
    poisson_subsampled_rdp,
    sum_tau,
    tree_round_rdp,
)


@pytest.mark.parametrize(("q", "sigma", "rounds"), [(0.2, 1.0, 40), (0.05, 0.8, 100)])
def test_gaussian_epsilon_matches_an_opacus_accountant(q, sigma, rounds):
    accountant = RDPAccountant()
    for _ in range(rounds):
        accountant.step(noise_multiplier=sigma, sample_rate=q)
    ours = epsilon_at(rounds * gaussian_rdp(q, sigma), 1e-5)
    assert ours == pytest.approx(accountant.get_epsilon(1e-5, alphas=list(ORDERS)), rel=1e-6)


def test_without_sampling_the_discrete_gaussian_is_the_gaussian_once_tau_vanishes():
    l2, sigma_device, devices = 1000.0, 500.0, 16  # sum's sigma 2000: scale 0.5
    assert sum_tau(sigma_device, devices) == 0.0
    rdp = distributed_discrete_gaussian_rdp(
        sample_rate=1.0,
        sigma_device=sigma_device,
        devices=devices,
        l2_sensitivity=l2,
        l1_sensitivity=l2 * 10,
        dim=100,
    )
    np.testing.assert_allclose(rdp, np.array(ORDERS) * 0.5**2 / 2)


def test_tau_charges_sums_of_tiny_shares():
    assert sum_tau(0.2, 10) > 1.0
    assert sum_tau(0.2, 1) == 0.0


def test_subsampling_amplifies_and_is_bounded_by_the_unsampled_mechanism():
    def rdp(order: int) -> float:
        return order / 2 * 1.0**2

    for order in (2, 8, 32):
        sampled = poisson_subsampled_rdp(order, 0.01, rdp)
        assert 0 < sampled < rdp(order)
    kwargs = {"sigma_device": 100.0, "devices": 4, "l2_sensitivity": 200.0}
    kwargs |= {"l1_sensitivity": 2000.0, "dim": 100}
    high = distributed_discrete_gaussian_rdp(sample_rate=0.9, **kwargs)
    assert np.all(high <= distributed_discrete_gaussian_rdp(sample_rate=1.0, **kwargs))


def test_the_generic_bound_is_never_below_the_exact_gaussian_analysis():
    q, z = 0.1, 1.0
    gaussian = gaussian_rdp(q, z)
    generic = distributed_discrete_gaussian_rdp(
        sample_rate=q,
        sigma_device=1e6,
        devices=1,
        l2_sensitivity=1e6 / z,
        l1_sensitivity=1e6,
        dim=10,
    )
    assert np.all(generic >= gaussian * (1 - 1e-9))


def test_epsilon_edges():
    assert epsilon_at(np.zeros(len(ORDERS)), 1e-5) == 0.0
    assert epsilon_at(np.full(len(ORDERS), math.inf), 1e-5) == math.inf
    with pytest.raises(ValueError, match="delta"):
        epsilon_at(np.ones(len(ORDERS)), 0.0)


def _worst_device_nodes(epoch_rounds: int, rounds: int) -> int:
    """Brute force over the tree: the most completed nodes holding one device's updates,
    one leaf per epoch, after ``rounds`` rounds (a node [a, b] of an epoch completes at b)."""
    total = 0
    for start in range(0, rounds, epoch_rounds):
        done = min(rounds - start, epoch_rounds)
        nodes = [
            (a, a + size - 1)
            for size in (2**k for k in range(epoch_rounds.bit_length()))
            for a in range(1, epoch_rounds + 1, size)
            if a + size - 1 <= done
        ]
        total += max(sum(a <= leaf <= b for a, b in nodes) for leaf in range(1, done + 1))
    return total


@pytest.mark.parametrize("epoch_rounds", [1, 3, 8, 30, 37])
def test_tree_charges_add_up_to_the_most_nodes_any_device_is_in(epoch_rounds):
    unit = np.asarray(ORDERS, dtype=np.float64) / (2 * 1.3**2)  # one node's Gaussian RDP
    total = np.zeros(len(ORDERS))
    for server_round in range(1, 3 * epoch_rounds + 5):
        total = total + tree_round_rdp(server_round, epoch_rounds, 1.3)
        nodes = _worst_device_nodes(epoch_rounds, server_round)
        np.testing.assert_allclose(total, nodes * unit, rtol=1e-12)


def test_one_tree_node_is_the_unsampled_gaussian():
    np.testing.assert_allclose(tree_round_rdp(1, 30, 0.9), gaussian_rdp(1.0, 0.9), rtol=1e-9)
    assert not tree_round_rdp(3, 30, 0.9).any()
    assert np.isinf(tree_round_rdp(4, 30, 0.0)).all()
    with pytest.raises(ValueError, match="server_round"):
        tree_round_rdp(0, 30, 1.0)
