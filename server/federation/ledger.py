"""The user-level privacy ledger of a population: every round of every run on the same
people, composed.

One JSON file per population (``<ledger_dir>/<name>.json``). Each aggregated round appends
an entry with its run, round, mechanism and its Renyi DP curve at
``common.privacy.accounting.ORDERS``; curves add up across rounds and runs, and epsilon at
the population's delta is read off the total. A run refuses to start when its planned
rounds would take the total past the budget, and a round is charged before anything
computed from it is published (under SecAgg+, before the server may unmask its sum). A
round that was dropped unseen (too few survivors, or too few shares to unmask) released
nothing and is not charged, or its charge is taken back (``refund``; not under DP-FTRL,
whose tree noise of that round is still released later). The file is
rewritten atomically after each change, so a server killed mid-run leaves the ledger of the
rounds it charged.
"""

from __future__ import annotations

import json
import math
import re
from collections.abc import Callable
from pathlib import Path
from typing import Any

import numpy as np

from common.config import ConfigError
from common.files import atomic_write
from common.privacy.accounting import ORDERS, epsilon_at

# One round's RDP curve, or the total curve of n rounds as a function of n.
PlannedRdp = np.ndarray | Callable[[int], np.ndarray]


class PrivacyBudgetError(ConfigError):
    """The planned rounds would take the population's epsilon past its budget."""


class PopulationLedger:
    """Rounds charged to one population and the epsilon they add up to."""

    def __init__(self, path: Path, *, delta: float, epsilon_budget: float) -> None:
        if not 0 < delta < 1:
            raise ValueError(f"delta must be in (0, 1), got {delta}")
        self.path = Path(path)
        self.delta = delta
        self.epsilon_budget = epsilon_budget
        self.entries: list[dict[str, Any]] = []
        if self.path.is_file():
            state = json.loads(self.path.read_text(encoding="utf-8"))
            if list(state.get("orders", [])) != list(ORDERS):
                raise ConfigError(f"{self.path}: ledger written with other RDP orders")
            self.entries = state["entries"]

    @classmethod
    def for_population(
        cls, ledger_dir: Path, name: str, *, delta: float, epsilon_budget: float
    ) -> PopulationLedger:
        safe = re.sub(r"[^A-Za-z0-9_.-]", "_", name) or "population"
        return cls(Path(ledger_dir) / f"{safe}.json", delta=delta, epsilon_budget=epsilon_budget)

    @property
    def rounds(self) -> int:
        return len(self.entries)

    def total_rdp(self) -> np.ndarray:
        total = np.zeros(len(ORDERS))
        for entry in self.entries:
            total = total + np.asarray(entry["rdp"], dtype=np.float64)
        return total

    def epsilon(self, extra: np.ndarray | None = None) -> float:
        """Epsilon so far (plus an ``extra`` RDP curve) at the population's delta."""
        total = self.total_rdp() if extra is None else self.total_rdp() + extra
        return epsilon_at(total, self.delta) if total.any() else 0.0

    def check_plan(self, round_rdp: PlannedRdp, rounds: int) -> float:
        """Epsilon after ``rounds`` more rounds of ``round_rdp`` (one round's RDP, or the
        total of n rounds as a function of n); raise if over budget."""
        total_of = _total_of(round_rdp)
        planned = self.epsilon(total_of(rounds))
        if planned > self.epsilon_budget:
            raise PrivacyBudgetError(
                f"federation.rounds: {rounds} more rounds would take the population "
                f"'{self.path.stem}' to epsilon_user = {planned:.2f} > federation.epsilon_user "
                f"= {self.epsilon_budget:g} (delta {self.delta:.3g}; already spent "
                f"{self.epsilon():.2f} in {self.rounds} rounds); at most "
                f"{self.max_rounds(round_rdp)} more rounds fit"
            )
        return planned

    def max_rounds(self, round_rdp: PlannedRdp, limit: int = 100_000) -> int:
        """The most further rounds of ``round_rdp`` that stay within the budget."""
        total_of = _total_of(round_rdp)
        low, high = 0, limit
        while low < high:
            mid = (low + high + 1) // 2
            if self.epsilon(total_of(mid)) <= self.epsilon_budget:
                low = mid
            else:
                high = mid - 1
        return low

    def charge(self, *, run: str, round_number: int, mechanism: dict, rdp: np.ndarray) -> float:
        """Append one round, write the file, return the epsilon now spent."""
        entry = {"run": run, "round": round_number, "mechanism": mechanism}
        entry["rdp"] = [x if math.isfinite(x) else 1e300 for x in np.asarray(rdp).tolist()]
        self.entries.append(entry)
        epsilon = self.epsilon()
        entry["epsilon_after"] = epsilon
        self._write()
        return epsilon

    def refund(self, *, run: str, round_number: int) -> float:
        """Remove the last charge of ``run``'s round ``round_number`` (its sum was never
        unmasked); return the epsilon now spent."""
        for n in range(len(self.entries) - 1, -1, -1):
            if self.entries[n]["run"] == run and self.entries[n]["round"] == round_number:
                del self.entries[n]
                self._write()
                return self.epsilon()
        raise ValueError(f"ledger {self.path.stem}: no charge for run {run} round {round_number}")

    def summary(self) -> dict[str, Any]:
        runs = sorted({str(e["run"]) for e in self.entries})
        return {
            "population": self.path.stem,
            "epsilon": self.epsilon(),
            "delta": self.delta,
            "unit": "user (all of one device's searches)",
            "epsilon_budget": self.epsilon_budget,
            "rounds": self.rounds,
            "runs": len(runs),
        }

    def _write(self) -> None:
        state = {"summary": self.summary(), "orders": list(ORDERS), "entries": self.entries}
        atomic_write(self.path, json.dumps(state, indent=1))


def _total_of(round_rdp: PlannedRdp) -> Callable[[int], np.ndarray]:
    if callable(round_rdp):
        return round_rdp
    rdp = np.asarray(round_rdp, dtype=np.float64)
    return lambda rounds: rounds * rdp
