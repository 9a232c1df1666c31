"""User-level privacy ledger of DP-FedAvg: Renyi DP over rounds (Opacus's RDP analysis).

Each round is one subsampled Gaussian mechanism on the sum of clipped device updates:
sampling rate q = clients per round / population, noise multiplier sigma (noise std
sigma * C on a sum whose sensitivity is C). ``epsilon(rounds)`` composes the rounds and
converts to (epsilon, delta)-DP at delta <= 1 / population.
"""

from __future__ import annotations

import math
from dataclasses import dataclass, field
from typing import Any

import numpy as np
from opacus.accountants.analysis.rdp import compute_rdp, get_privacy_spent
from opacus.accountants.rdp import RDPAccountant

from common.config import ConfigError
from common.federation.privacy_plan import UserLevelDP

USER_RDP_ORDERS = tuple(RDPAccountant.DEFAULT_ALPHAS)


class PrivacyBudgetError(ConfigError):
    """The planned rounds would spend more than the configured user-level epsilon."""


@dataclass
class PrivacyLedger:
    """Rounds spent so far and the user-level epsilon after each."""

    noise_multiplier: float
    sample_rate: float
    delta: float
    epsilon_budget: float
    entries: list[dict[str, float]] = field(default_factory=list)
    _rdp: np.ndarray | None = field(default=None, init=False, repr=False, compare=False)

    def __post_init__(self) -> None:
        if not 0 < self.sample_rate <= 1:
            raise ValueError(f"sample_rate must be in (0, 1], got {self.sample_rate}")
        if not 0 < self.delta < 1:
            raise ValueError(f"delta must be in (0, 1), got {self.delta}")
        if self.noise_multiplier < 0:
            raise ValueError(f"noise_multiplier must be >= 0, got {self.noise_multiplier}")

    @classmethod
    def for_plan(cls, plan: UserLevelDP) -> PrivacyLedger:
        """An empty ledger for the run's user-level DP plan."""
        return cls(
            noise_multiplier=plan.noise_multiplier,
            sample_rate=plan.sample_rate,
            delta=plan.delta,
            epsilon_budget=plan.epsilon_budget,
        )

    @property
    def rounds(self) -> int:
        return len(self.entries)

    def epsilon(self, rounds: int | None = None) -> float:
        """User-level epsilon after ``rounds`` rounds (default: those spent)."""
        rounds = self.rounds if rounds is None else rounds
        if rounds == 0:
            return 0.0
        if self.noise_multiplier == 0:
            return math.inf
        eps, _ = get_privacy_spent(
            orders=USER_RDP_ORDERS, rdp=rounds * self._round_rdp(), delta=self.delta
        )
        return float(eps)

    def _round_rdp(self) -> np.ndarray:
        """RDP of one round at each order (rounds compose additively)."""
        if self._rdp is None:
            self._rdp = compute_rdp(
                q=self.sample_rate,
                noise_multiplier=self.noise_multiplier,
                steps=1,
                orders=USER_RDP_ORDERS,
            )
        return self._rdp

    def max_rounds(self, limit: int = 100_000) -> int:
        """The most rounds whose epsilon stays within the budget."""
        low, high = 0, limit
        while low < high:
            mid = (low + high + 1) // 2
            if self.epsilon(mid) <= self.epsilon_budget:
                low = mid
            else:
                high = mid - 1
        return low

    def check_plan(self, rounds: int) -> float:
        """Epsilon after ``rounds`` more rounds; raise if it passes the budget."""
        planned = self.epsilon(self.rounds + rounds)
        if planned > self.epsilon_budget:
            raise PrivacyBudgetError(
                f"federation.rounds: {self.rounds + rounds} rounds would spend epsilon_user = "
                f"{planned:.2f} > federation.epsilon_user = {self.epsilon_budget:g} "
                f"(delta = {self.delta:.3g}, q = {self.sample_rate:.4g}, "
                f"sigma = {self.noise_multiplier:g}); at most {self.max_rounds()} rounds fit"
            )
        return planned

    def record_round(self, server_round: int) -> dict[str, float]:
        """Spend one round; return its ledger entry."""
        self.check_plan(1)
        entry = {
            "round": server_round,
            "epsilon": self.epsilon(self.rounds + 1),
            "delta": self.delta,
            "sample_rate": self.sample_rate,
            "noise_multiplier": self.noise_multiplier,
        }
        self.entries.append(entry)
        return entry

    def summary(self) -> dict[str, Any]:
        return {
            "mechanism": "DP-FedAvg, Poisson-sampled devices, fixed clipping, Gaussian noise; RDP",
            "epsilon": self.epsilon(),
            "delta": self.delta,
            "epsilon_budget": self.epsilon_budget,
            "sample_rate": self.sample_rate,
            "noise_multiplier": self.noise_multiplier,
            "rounds": self.rounds,
        }

    def state_dict(self) -> dict[str, Any]:
        return {
            "noise_multiplier": self.noise_multiplier,
            "sample_rate": self.sample_rate,
            "delta": self.delta,
            "epsilon_budget": self.epsilon_budget,
            "entries": [dict(e) for e in self.entries],
        }

    @classmethod
    def from_state_dict(cls, state: dict[str, Any]) -> PrivacyLedger:
        return cls(
            noise_multiplier=float(state["noise_multiplier"]),
            sample_rate=float(state["sample_rate"]),
            delta=float(state["delta"]),
            epsilon_budget=float(state["epsilon_budget"]),
            entries=[dict(e) for e in state["entries"]],
        )
