"""The most an honest cohort's noised payload sum can weigh: a poisoning check that needs
nothing but the sum SecAgg+ gives the server (``federation.sum_bound``).

Each honest payload has L2 norm at most the plan's ``payload_norm`` (its update clipped to
C, its statistics within ``C x sqrt(stats_share)``), so ``n`` honest payloads sum to at
most ``n x payload_norm``, plus under SecAgg+ less than one quantization unit per value and
device of stochastic rounding. The round's noise Z has standard deviation ``sigma`` per
value (the devices' discrete Gaussian shares, sub-Gaussian with that parameter, or the
server's Gaussian). With ``x = tail**2 / 2``, ``||Z||**2 <= sigma**2 (d + 2 sqrt(d x) + 2x)``
(Laurent and Massart, 2000) and ``<S, Z> <= ||S|| sigma tail``, each but with probability
at most ``exp(-x)``; so an honest round's sum passes ``limit`` but with probability at most
``2 exp(-tail**2 / 2)`` (6e-8 at the default tail 6).

A sum above the limit cannot come from honest devices: the strategy refuses that round
(no update, no statistics; the noised sum was unmasked, so the ledger still charges it).
What this bounds: a round in which some devices send a very large payload (model
replacement with a large boost). What it does not: attackers who together stay under the
limit, which the noise leaves room for (about the whole cohort's honest weight again);
see the README on poisoning.
"""

from __future__ import annotations

import math
from dataclasses import dataclass

import numpy as np

from common.federation.privacy_plan import PrivacyPlan

DEFAULT_TAIL = 6.0


@dataclass(frozen=True)
class SumBound:
    """The honest-cohort limit on a round's noised payload sum of ``dim`` values."""

    plan: PrivacyPlan
    dim: int
    tail: float = DEFAULT_TAIL

    def noise_std(self, devices: int) -> float:
        """Standard deviation of the round's noise per value, in payload units."""
        if self.plan.devices_add_noise:
            return self.plan.sigma_device(self.dim) * math.sqrt(devices) / self.plan.scale
        return self.plan.sigma_server

    def limit(self, devices: int) -> float:
        """The largest L2 norm an honest round of ``devices`` payloads passes with."""
        rounding = math.sqrt(self.dim) / self.plan.scale if self.plan.secagg else 0.0
        honest = devices * (self.plan.payload_norm + rounding)
        sigma, x = self.noise_std(devices), self.tail**2 / 2
        noise = sigma**2 * (self.dim + 2 * math.sqrt(self.dim * x) + 2 * x)
        return math.sqrt(honest**2 + 2 * honest * sigma * self.tail + noise)

    def admits(self, total: np.ndarray, devices: int) -> bool:
        return float(np.linalg.norm(np.asarray(total, dtype=np.float64))) <= self.limit(devices)
