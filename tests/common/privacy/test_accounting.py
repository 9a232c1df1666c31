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
