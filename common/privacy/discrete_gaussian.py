"""Sampling the discrete Gaussian N_Z(0, sigma^2): P(x) proportional to exp(-x^2 / 2 sigma^2)
over the integers.

Devices add integer noise to their quantized updates before secure aggregation, so the sum
the server unmasks is already noised; integer noise survives SecAgg+'s modular arithmetic
exactly, which floating-point noise does not. The sampler is the rejection method of
Canonne, Kamath and Steinke ("The Discrete Gaussian for Differential Privacy", 2020):
propose from a discrete Laplace distribution of scale t = floor(sigma) + 1 and accept a
proposal y with probability exp(-(|y| - sigma^2/t)^2 / (2 sigma^2)). Proposals are drawn a
batch at a time from a ``KeystreamRandom``; the geometric variates behind the discrete
Laplace use the inverse CDF in double precision.
"""

from __future__ import annotations

import math

import numpy as np

from common.privacy.keystream import KeystreamRandom


def discrete_gaussian(sigma: float, size: int, rng: KeystreamRandom) -> np.ndarray:
    """``size`` independent draws of N_Z(0, sigma^2) as int64 (zeros when sigma is 0)."""
    if sigma < 0 or not math.isfinite(sigma):
        raise ValueError(f"sigma must be finite and >= 0, got {sigma}")
    out = np.zeros(size, dtype=np.int64)
    if sigma == 0 or size == 0:
        return out
    t = math.floor(sigma) + 1
    filled = 0
    while filled < size:
        batch = max(64, int(1.3 * (size - filled)))
        y = _discrete_laplace(t, batch, rng)
        accept = rng.uniform(batch) < np.exp(-((np.abs(y) - sigma**2 / t) ** 2) / (2 * sigma**2))
        kept = y[accept][: size - filled]
        out[filled : filled + len(kept)] = kept
        filled += len(kept)
    return out


def _discrete_laplace(t: int, size: int, rng: KeystreamRandom) -> np.ndarray:
    """P(y) proportional to exp(-|y| / t): the difference of two geometric variates."""
    log_q = -1.0 / t  # log of the geometric's failure probability exp(-1/t)
    g1 = np.floor(np.log(rng.uniform(size)) / log_q)
    g2 = np.floor(np.log(rng.uniform(size)) / log_q)
    out: np.ndarray = (g1 - g2).astype(np.int64)
    return out
