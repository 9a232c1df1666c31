"""The user-level DP plan of a federated run: what the server announces, what each device
checks against its own policy, and what the ledger charges, derived in one place.

One round releases the noised sum of the payloads of a Poisson sample of devices (each
joins with probability ``sample_rate``). A device's payload is its update clipped to
``clipping_norm`` followed by a few bounded statistics (``common.federation.payload``), so
one device moves the sum by at most ``payload_norm``. The average divides the sum by the
fixed ``expected_devices`` (sample_rate x population), never by the cohort's actual size.

Noise of standard deviation ``noise_multiplier`` x ``payload_norm`` on the sum is added

- by the devices (``noise = "devices"``): each quantizes its payload the way SecAgg+ does
  (``quantization_range`` levels over [-clip_range, clip_range]) and adds discrete Gaussian
  noise of ``sigma_device`` integer units after SecAgg+ masked it; the shares are sized so
  that ``min_devices`` surviving devices already carry the whole noise, and the server drops
  a round (without unmasking it) when fewer survive. The server only ever holds a noised sum.
- or by the server (``noise = "server"``): Gaussian noise on the sum it unmasked or
  received; the guarantee then holds against readers of published versions only.

Under ``mechanism = "dp-ftrl"`` the rounds run in epochs of ``epoch_rounds`` rounds (a
device joins at one round of each epoch) and the server's noise is that of tree
aggregation, restarted each epoch (``server.federation.tree_noise``); ``round_rdp`` then
depends on the round's place in its epoch (``common.privacy.accounting.tree_round_rdp``).

With adaptive clipping (``federation.adaptive_clipping``) the norm C changes from round to
round (``for_round``: the value the server sends in the round's config, which a device
accepts only within [``ceiling`` / 64, ``ceiling``]); SecAgg+'s range stays sized
for the ceiling, so its setup is the same every round. The noise scales with C, so the
round's RDP does not depend on it: the sensitivity in integer units, C x sqrt(1 +
stats_share) x ``scale`` + sqrt(dim), and the noise keep their ratio 1 / noise_multiplier.

SecAgg+ works modulo ``modulus`` (2**48): a round sums at most modulus / (2 x
quantization_range) = 2**23 payloads without wrapping, and the quantization grid keeps 2**17
steps per ``payload_norm``, so rounding moves a 50k-value payload by under 0.2% of it.
"""

from __future__ import annotations

import math
from collections.abc import Callable, Mapping
from dataclasses import dataclass, replace
from typing import Any, Literal

import numpy as np

from common.federation.run_spec import RunSpec
from common.privacy.accounting import (
    ORDERS,
    distributed_discrete_gaussian_rdp,
    gaussian_rdp,
    tree_round_rdp,
)

QUANTIZATION_RANGE = 2**24
MODULUS = 2**48
RANGE_FACTOR = 64  # SecAgg+'s clipping range in payload norms: room for noise, no wrap
CLIPPING_KEY = "clipping_norm"  # the round's norm in the fit config (adaptive clipping)
CEILING_RATIO = 64  # an adaptive norm stays within [ceiling / this, ceiling]

Placement = Literal["devices", "server"]
Mechanism = Literal["dp-fedavg", "dp-ftrl"]


@dataclass(frozen=True)
class PrivacyPlan:
    """See the module doc; ``dp`` False means no user-level DP (no noise, no ledger)."""

    dp: bool
    noise: Placement
    secagg: bool
    clipping_norm: float
    stats_share: float
    noise_multiplier: float
    sample_rate: float
    expected_devices: int
    min_devices: int
    delta: float
    epsilon_budget: float
    adaptive: bool
    ceiling: float  # the largest norm a round of the run may use (the norm, unless adaptive)
    mechanism: Mechanism = "dp-fedavg"
    epoch_rounds: int = 1  # rounds per epoch; a device joins one of them (dp-ftrl)

    @classmethod
    def from_spec(cls, spec: RunSpec) -> PrivacyPlan:
        federation = spec.config.federation
        expected = spec.expected_devices
        return cls(
            dp=federation.dp,
            noise=federation.noise,
            secagg=federation.secagg,
            clipping_norm=federation.clipping_norm,
            stats_share=federation.stats_share,
            noise_multiplier=federation.noise_multiplier if federation.dp else 0.0,
            sample_rate=spec.sample_rate,
            expected_devices=expected,
            min_devices=max(1, math.floor(federation.min_devices_fraction * expected)),
            delta=spec.delta_user,
            epsilon_budget=federation.epsilon_user,
            adaptive=federation.adaptive_clipping,
            ceiling=federation.clipping_ceiling
            if federation.adaptive_clipping
            else federation.clipping_norm,
            mechanism=federation.mechanism,
            epoch_rounds=max(1, spec.num_devices // federation.clients_per_round),
        )

    def at_clipping(self, norm: float) -> PrivacyPlan:
        """This plan for a round clipped at ``norm``; ValueError unless the run clips
        adaptively and ``norm`` lies in [ceiling / 64, ceiling] (else it must be the run's)."""
        if not self.adaptive:
            if norm != self.clipping_norm:
                raise ValueError(
                    f"the round's clipping norm {norm:g} is not the run's {self.clipping_norm:g}"
                )
            return self
        if not math.isfinite(norm) or not self.ceiling / CEILING_RATIO <= norm <= self.ceiling:
            raise ValueError(
                f"the round's clipping norm {norm:g} is outside "
                f"[{self.ceiling / CEILING_RATIO:g}, {self.ceiling:g}]"
            )
        return replace(self, clipping_norm=float(norm))

    def for_round(self, fit_config: Mapping[str, Any]) -> PrivacyPlan:
        """This plan at the clipping norm the round's config names (the run's if none)."""
        norm = fit_config.get(CLIPPING_KEY)
        if norm is None:
            return self
        if isinstance(norm, bool) or not isinstance(norm, int | float):
            raise ValueError(f"the round's clipping norm is not a number: {norm!r}")
        return self.at_clipping(float(norm))

    @property
    def payload_norm(self) -> float:
        """The most one device moves the sum by (update and statistics together)."""
        return self.clipping_norm * math.sqrt(1.0 + self.stats_share)

    @property
    def clip_range(self) -> float:
        """SecAgg+'s per-value range: every payload value lies well inside it (at every
        norm up to the ceiling)."""
        return RANGE_FACTOR * (self.ceiling * math.sqrt(1.0 + self.stats_share))

    @property
    def scale(self) -> float:
        """Integer units per unit of payload value after SecAgg+'s quantization."""
        return QUANTIZATION_RANGE / (2.0 * self.clip_range)

    @property
    def devices_add_noise(self) -> bool:
        return self.dp and self.noise == "devices" and self.noise_multiplier > 0

    @property
    def server_adds_noise(self) -> bool:
        return self.dp and self.noise == "server" and self.noise_multiplier > 0

    def l2_sensitivity_units(self, dim: int) -> float:
        """The sum's L2 sensitivity in integer units, stochastic rounding included (each of
        the ``dim`` values moves by less than one unit)."""
        return self.payload_norm * self.scale + math.sqrt(dim)

    def sigma_device(self, dim: int) -> float:
        """Each device's discrete Gaussian share, in integer units."""
        if not self.devices_add_noise:
            return 0.0
        total = self.noise_multiplier * self.l2_sensitivity_units(dim)
        return total / math.sqrt(self.min_devices)

    @property
    def sigma_server(self) -> float:
        """The server's Gaussian noise on the sum, in payload units."""
        return self.noise_multiplier * self.payload_norm if self.server_adds_noise else 0.0

    @property
    def tree(self) -> bool:
        """Whether the rounds run DP-FTRL's epochs and tree noise."""
        return self.dp and self.mechanism == "dp-ftrl"

    def round_rdp(self, dim: int, server_round: int = 1) -> np.ndarray:
        """RDP of round ``server_round`` at ``common.privacy.accounting.ORDERS`` (the same
        for every round but under ``dp-ftrl``)."""
        if not self.dp:
            return np.full(len(ORDERS), math.inf)
        if self.tree:
            return tree_round_rdp(server_round, self.epoch_rounds, self.noise_multiplier)
        if self.noise == "server":
            return gaussian_rdp(self.sample_rate, self.noise_multiplier)
        l2 = self.l2_sensitivity_units(dim)
        return distributed_discrete_gaussian_rdp(
            sample_rate=self.sample_rate,
            sigma_device=self.sigma_device(dim),
            devices=self.min_devices,
            l2_sensitivity=l2,
            l1_sensitivity=l2 * min(math.sqrt(dim), l2),
            dim=dim,
        )

    def planned_rdp(self, dim: int, first: int) -> Callable[[int], np.ndarray]:
        """The total RDP of ``n`` rounds from round ``first`` on, as a function of ``n``."""

        if not self.tree:
            one = self.round_rdp(dim)  # computed once: the ledger's search calls ``total`` often
            return lambda rounds: rounds * one
        node = self.round_rdp(dim, 1)

        def total(rounds: int) -> np.ndarray:
            positions = (np.arange(first, first + rounds) - 1) % self.epoch_rounds + 1
            nodes = int(np.count_nonzero(positions & (positions - 1) == 0))
            return nodes * node if nodes else np.zeros(len(ORDERS))  # 0 x inf would be nan

        return total

    def against_whom(self) -> str:
        """One sentence: who the user-level guarantee protects against."""
        if not self.dp:
            return "no user-level DP: nothing bounds what the server or readers learn"
        if self.noise == "devices" and self.secagg:
            return (
                "holds against readers of published versions; the server, which only "
                "unmasks sums that devices already noised but knows whom it sampled, is held "
                "to the devices' noise in each round a device took part in, unamplified"
            )
        return (
            "holds against readers of published versions only: the server sees the "
            + ("un-noised sum" if self.secagg else "un-noised updates")
            + " before adding the noise"
        )
