"""What the server writes after each round: the ledger charge, the published version and
one line of ``metrics.jsonl``, in that order.

A round is charged to the population's ledger once, before anything computed from it is
published: under SecAgg+ already just before the server asks for the shares that unmask
its sum (``charge``), and taken back (``refund``) if too few came back to unmask it. It is
then published as the registry's next version (signed with ``finalize``) if its noised
count of devices that trained reaches the plan's ``min_devices`` (a round of declines
publishes nothing); what is published is the moving average when the run keeps one, else
the new global adapter. A round dropped unseen is recorded as dropped, neither charged nor
published. A ``resume``d run appends to the rounds already recorded.
"""

from __future__ import annotations

import json
import logging
import math
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

import numpy as np

from common.federation.privacy_plan import PrivacyPlan
from common.federation.run_spec import RunSpec
from server.federation.averaging import MovingAverage
from server.federation.ledger import PopulationLedger
from server.federation.publish import publish_adapter
from server.federation.strategy import RoundLog

log = logging.getLogger(__name__)
METRICS_FILE = "metrics.jsonl"


class RunRecorder:
    """Charges, publishes and records each round (see the module doc)."""

    def __init__(
        self,
        spec: RunSpec,
        plan: PrivacyPlan,
        round_log: RoundLog,
        ledger: PopulationLedger | None,
        *,
        payload_size: int,
        average: MovingAverage | None = None,
        finalize: Callable[[Path], None] | None = None,
        resume: bool = False,
    ) -> None:
        self.spec = spec
        self.plan = plan
        self.round_log = round_log
        self.ledger = ledger
        self.payload_size = payload_size
        self.average = average
        self.finalize = finalize
        self.start = time.perf_counter()
        self.charged: dict[int, float | None] = {}
        spec.run_dir.mkdir(parents=True, exist_ok=True)
        if not resume:  # a resumed run appends to the rounds it recorded
            (spec.run_dir / METRICS_FILE).write_text("", encoding="utf-8")

    def record(self, server_round: int, global_weights: list[np.ndarray]) -> dict[str, Any]:
        figures = self.round_log.fit.get(server_round)
        entry: dict[str, Any] = {
            "round": server_round,
            "elapsed_s": round(time.perf_counter() - self.start, 3),
        }
        if figures is None:
            entry["dropped"] = True
        else:
            entry["fit"] = figures
            entry["epsilon_user"] = self.charge(server_round)
            if self._enough_trained(figures):
                entry["published"] = str(self._publish(server_round, global_weights, figures))
            else:
                entry["not_published"] = (
                    f"too few devices trained: {figures.get('trained', 0):.1f} (noised) < "
                    f"{self.plan.min_devices}"
                )
        with (self.spec.run_dir / METRICS_FILE).open("a", encoding="utf-8") as fh:
            fh.write(json.dumps(finite(entry)) + "\n")
        log.info("round %d recorded: %s", server_round, _short(entry))
        return entry

    def charge(self, server_round: int) -> float | None:
        """Charge the round to the ledger (once); the epsilon spent after it."""
        if server_round not in self.charged:
            self.charged[server_round] = self._charge(server_round)
        return self.charged[server_round]

    def refund(self, server_round: int) -> None:
        """Take back the charge of a round whose sum stayed masked (nothing was released)."""
        if self.charged.pop(server_round, None) is not None and self.ledger is not None:
            self.ledger.refund(run=self.spec.run_dir.name, round_number=server_round)

    def _charge(self, server_round: int) -> float | None:
        if self.ledger is None:
            return None
        return self.ledger.charge(
            run=self.spec.run_dir.name,
            round_number=server_round,
            mechanism=mechanism(self.plan),
            rdp=self.plan.round_rdp(self.payload_size),
        )

    def _enough_trained(self, figures: dict[str, float]) -> bool:
        trained = figures.get("trained")
        return trained is None or trained >= self.plan.min_devices

    def _publish(self, server_round: int, weights: list[np.ndarray], figures: dict) -> Path | None:
        if not self.spec.config.federation.publish:
            return None
        averaged = self.average.average if self.average is not None else None
        return publish_adapter(
            self.spec.config.paths.registry,
            averaged if averaged is not None else weights,
            self._manifest(server_round, figures),
            finalize=self.finalize,
        )

    def _manifest(self, server_round: int, figures: dict[str, Any]) -> dict[str, Any]:
        federation = self.spec.config.federation.model_dump(exclude={"seed", "ledger_dir"})
        privacy = self.ledger.summary() if self.ledger else {"user_level_dp": False}
        return finite(
            {
                "round": server_round,
                "run": self.spec.run_dir.name,
                "population": self.spec.ledger_name,
                "base_model": self.spec.base_model,
                "metrics": figures,
                "privacy": {**privacy, "against": self.plan.against_whom()},
                "secure_aggregation": self.plan.secagg,
                "federation": federation,
            }
        )


def mechanism(plan: PrivacyPlan) -> dict[str, Any]:
    """The round's mechanism as the ledger records it."""
    return {
        "noise": plan.noise if plan.dp else "none",
        "noise_multiplier": plan.noise_multiplier,
        "sample_rate": plan.sample_rate,
        "min_devices": plan.min_devices,
        "payload_norm": plan.payload_norm,
    }


def finite(value: Any) -> Any:
    """JSON-safe copy: NaN and infinities become None."""
    if isinstance(value, dict):
        return {k: finite(v) for k, v in value.items()}
    if isinstance(value, list | tuple):
        return [finite(v) for v in value]
    if isinstance(value, float) and not math.isfinite(value):
        return None
    return value


def _short(entry: dict[str, Any]) -> str:
    """The round's log line: replies, then how many trained, declined (noised counts) and
    failed, the personal nDCG, user-level epsilon, and what was (not) published."""
    fit = entry.get("fit", {})
    personal = fit.get("personal.nDCG@10")
    parts = [f"devices {fit.get('devices', 0):.0f}"] if fit else ["dropped"]
    if "trained" in fit:
        parts.append(
            f"trained {fit['trained']:.1f}, declined {fit.get('declined', 0):.1f} (noised), "
            f"failed {fit.get('failures', 0):.0f}"
        )
    if personal is not None and math.isfinite(personal):
        parts.append(f"personal nDCG@10 {personal:.3f} (noised)")
    if entry.get("epsilon_user") is not None:
        parts.append(f"epsilon_user {entry['epsilon_user']:.2f}")
    if "not_published" in entry:
        parts.append(f"NOT published: {entry['not_published']}")
    elif entry.get("published"):
        parts.append(f"published {Path(entry['published']).name}")
    return ", ".join(parts)
