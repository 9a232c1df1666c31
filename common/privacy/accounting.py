"""Renyi DP of the mechanisms a federated round runs, and the conversion to (epsilon, delta).

One round releases the noised sum of the sampled devices' clipped updates. Two noises:

- ``gaussian_rdp``: continuous Gaussian noise of ``noise_multiplier`` times the L2
  sensitivity, added by the server (or by whoever is trusted with the sum); Poisson
  subsampling at ``sample_rate`` amplifies it (Mironov, Talwar and Zhang 2019, through
  Opacus).
- ``distributed_discrete_gaussian_rdp``: each of at least ``devices`` devices adds discrete
  Gaussian noise of standard deviation ``sigma_device`` (integer units) to its quantized
  update, so the sum carries ``sqrt(devices) * sigma_device``. A sum of discrete Gaussians
  is not exactly a discrete Gaussian; Kairouz, Liu and Steinke (ICML 2021, Theorem 1 and
  Proposition 14) bound its RDP by the discrete Gaussian's plus a term ``tau`` that
  vanishes once sigma_device is a few integer units, in terms of the L2 and L1
  sensitivities in integer units. Subsampling is accounted with the general Poisson
  subsampling bound of Zhu and Wang (ICML 2019, Theorem 5), valid for any mechanism.

- ``tree_round_rdp``: DP-FTRL's tree aggregation (Kairouz et al., ICML 2021), restarted
  every epoch of ``epoch_rounds`` rounds in which each device joins at most once. Every
  node of the tree (the sum of the rounds it spans) gets fresh Gaussian noise of
  ``noise_multiplier`` times the L2 sensitivity, and one device's update lies in one leaf,
  so in at most one node per level: a node is a Gaussian mechanism of RDP order / (2
  sigma**2) for that device. By round j of an epoch the device of the first leaf lies in
  floor(log2 j) + 1 completed nodes and no device in more, so round j is charged one node
  when j is a power of two and nothing otherwise. No sampling amplification is assumed.

Orders are integers (the subsampling bound needs them). RDP adds up over rounds;
``epsilon_at`` converts a total to epsilon at ``delta`` (the tighter conversion of Balle et
al. 2020, through Opacus).
"""

from __future__ import annotations

import math
from collections.abc import Callable, Sequence

import numpy as np
from scipy.special import gammaln, logsumexp

from common.privacy import drop_opacus_log_handler

ORDERS: tuple[int, ...] = (*range(2, 65), 80, 96, 128, 192, 256)


def gaussian_rdp(
    sample_rate: float, noise_multiplier: float, orders: Sequence[int] = ORDERS
) -> np.ndarray:
    """RDP of one round of the Poisson-subsampled Gaussian mechanism, per order."""
    _check_rate(sample_rate)
    if noise_multiplier <= 0:
        return np.full(len(orders), math.inf)
    from opacus.accountants.analysis.rdp import compute_rdp  # heavy (torch): on use

    drop_opacus_log_handler()
    rdp = compute_rdp(
        q=sample_rate, noise_multiplier=noise_multiplier, steps=1, orders=list(orders)
    )
    return np.asarray(rdp, dtype=np.float64)


def tree_round_rdp(
    server_round: int, epoch_rounds: int, noise_multiplier: float, orders: Sequence[int] = ORDERS
) -> np.ndarray:
    """RDP charged for round ``server_round`` (1-based) of tree aggregation restarted every
    ``epoch_rounds`` rounds, per order (see the module doc)."""
    if server_round < 1 or epoch_rounds < 1:
        raise ValueError(
            f"server_round and epoch_rounds must be >= 1, got {server_round}, {epoch_rounds}"
        )
    position = (server_round - 1) % epoch_rounds + 1
    if position & (position - 1):  # not a power of two: no node containing a new leaf ends
        return np.zeros(len(orders))
    if noise_multiplier <= 0:
        return np.full(len(orders), math.inf)
    return np.asarray(orders, dtype=np.float64) / (2.0 * noise_multiplier**2)


def sum_tau(sigma_device: float, devices: int) -> float:
    """The excess ``tau`` of a sum of ``devices`` discrete Gaussians over one discrete
    Gaussian of the summed variance (0 for a single device)."""
    k = np.arange(1, max(devices, 1), dtype=np.float64)
    return float(10.0 * np.exp(-2.0 * math.pi**2 * sigma_device**2 * k / (k + 1)).sum())


def distributed_discrete_gaussian_rdp(
    *,
    sample_rate: float,
    sigma_device: float,
    devices: int,
    l2_sensitivity: float,
    l1_sensitivity: float,
    dim: int,
    orders: Sequence[int] = ORDERS,
) -> np.ndarray:
    """RDP of one round of the subsampled distributed discrete Gaussian, per order.

    Sensitivities and ``sigma_device`` are in integer (quantized) units; ``devices`` is the
    fewest devices whose noise the sum is guaranteed to hold.
    """
    _check_rate(sample_rate)
    if sigma_device <= 0 or devices < 1:
        return np.full(len(orders), math.inf)
    sigma = math.sqrt(devices) * sigma_device
    l2, l1, tau = l2_sensitivity / sigma, l1_sensitivity / sigma, sum_tau(sigma_device, devices)

    def rdp(order: int) -> float:
        return min(
            order / 2 * l2**2 + tau * dim,
            order / 2 * (l2**2 + 2 * l1 * tau + tau**2 * dim),
            order / 2 * (l2 + math.sqrt(dim) * tau) ** 2,
        )

    if sample_rate == 1.0:
        return np.array([rdp(int(a)) for a in orders])
    return np.array(
        [min(rdp(int(a)), poisson_subsampled_rdp(int(a), sample_rate, rdp)) for a in orders]
    )


def poisson_subsampled_rdp(order: int, rate: float, rdp: Callable[[int], float]) -> float:
    """Zhu and Wang's upper bound on the RDP at integer ``order`` of a mechanism with RDP
    function ``rdp`` run on a Poisson sample at ``rate``."""
    if order < 2:
        raise ValueError(f"order must be an integer >= 2, got {order}")
    log_terms = [
        (order - 1) * math.log1p(-rate) + math.log(order * rate - rate + 1),
        _log_comb(order, 2) + 2 * math.log(rate) + (order - 2) * math.log1p(-rate) + rdp(2),
    ]
    weights = [1.0, 1.0]
    for j in range(3, order + 1):
        log_terms.append(
            _log_comb(order, j)
            + j * math.log(rate)
            + (order - j) * math.log1p(-rate)
            + (j - 1) * rdp(j)
        )
        weights.append(3.0)
    return float(logsumexp(log_terms, b=weights)) / (order - 1)


def _log_comb(n: int, k: int) -> float:
    return float(gammaln(n + 1) - gammaln(k + 1) - gammaln(n - k + 1))


def epsilon_at(rdp: np.ndarray, delta: float, orders: Sequence[int] = ORDERS) -> float:
    """Epsilon at ``delta`` of a total RDP curve (inf if every order is infinite)."""
    if not 0 < delta < 1:
        raise ValueError(f"delta must be in (0, 1), got {delta}")
    rdp = np.asarray(rdp, dtype=np.float64)
    if not np.isfinite(rdp).any():
        return math.inf
    if not rdp.any():
        return 0.0
    from opacus.accountants.analysis.rdp import get_privacy_spent  # heavy (torch): on use

    drop_opacus_log_handler()
    eps, _ = get_privacy_spent(orders=list(orders), rdp=rdp, delta=delta)
    return float(eps)


def _check_rate(rate: float) -> None:
    if not 0 < rate <= 1:
        raise ValueError(f"sample_rate must be in (0, 1], got {rate}")
