"""What the server writes after each round: the ledger charge, the published version and
one line of ``metrics.jsonl``, in that order.

A round is charged to the population's ledger once, before anything computed from it is
published: under SecAgg+ already just before the server asks for the shares that unmask
its sum (``charge``), and taken back (``refund``) if too few came back to unmask it. A
round whose noised count of devices that trained reaches the plan's ``min_devices`` yields
an adapter (the moving average when the run keeps one, else the new global adapter); a
round of declines yields none. That adapter is published as the registry's next version
(signed with ``finalize``) at once under the ``promote`` rule ``"always"``, or after the
next round's devices evaluated it and ``server.federation.promotion`` found it not worse
than the served version. A round dropped unseen is recorded as dropped, neither charged nor
published; under DP-FTRL it stays charged (never refunded), since the tree's noise drawn
for it is released with a later round. A ``resume``d run appends to the rounds already
recorded.
"""

from __future__ import annotations

import json
import logging
import math
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any, Literal

import numpy as np

from common.federation.privacy_plan import PrivacyPlan
from common.federation.run_spec import RunSpec
from server.federation.averaging import MovingAverage
from server.federation.ledger import PopulationLedger
from server.federation.promotion import Candidate, Standing, judge, pooled_gain
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
        promote: Literal["if-not-worse", "always"] = "if-not-worse",
        round_plan: Callable[[int], PrivacyPlan] | None = None,
    ) -> None:
        self.spec = spec
        self.plan = plan
        self.round_plan = round_plan or (lambda _: plan)  # a round's plan, at its norm
        self.round_log = round_log
        self.ledger = ledger
        self.payload_size = payload_size
        self.average = average
        self.finalize = finalize
        self.promote = promote
        self.start = time.perf_counter()
        self.charged: dict[int, float | None] = {}
        self.pending: Candidate | None = None  # the adapter the next round evaluates
        self.standing = Standing()  # the served version's pooled evaluation
        self.evaluating: list[np.ndarray] | None = None  # what the next round evaluates
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
            if self.plan.tree:  # the tree's node for this round is released later
                entry["epsilon_user"] = self.charge(server_round)
        else:
            entry["fit"] = figures
            entry["epsilon_user"] = self.charge(server_round)
            entry |= self._release(server_round, global_weights, figures)
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
        """Take back the charge of a round whose sum stayed masked (nothing was released);
        not under DP-FTRL, whose tree noise drawn for the round is still released later."""
        if self.plan.tree:
            return
        if self.charged.pop(server_round, None) is not None and self.ledger is not None:
            self.ledger.refund(run=self.spec.run_dir.name, round_number=server_round)

    def _charge(self, server_round: int) -> float | None:
        if self.ledger is None:
            return None
        plan = self.round_plan(server_round)
        return self.ledger.charge(
            run=self.spec.run_dir.name,
            round_number=server_round,
            mechanism=mechanism(plan),
            rdp=plan.round_rdp(self.payload_size, server_round),
        )

    def _enough_trained(self, figures: dict[str, float]) -> bool:
        trained = figures.get("trained")
        return trained is None or trained >= self.plan.min_devices

    def _release(
        self, server_round: int, weights: list[np.ndarray], figures: dict[str, float]
    ) -> dict[str, Any]:
        """Judge the candidate this round evaluated, then make this round's adapter the
        next candidate (or publish it at once); the record's keys."""
        entry: dict[str, Any] = {}
        federation = self.spec.config.federation
        if not federation.publish:
            return entry
        if self.pending is not None:
            entry |= self._judge(self.pending, figures)
        averaged = self.average.average if self.average is not None else None
        adapter = averaged if averaged is not None else weights
        if not self._enough_trained(figures):
            entry["not_published"] = (
                f"too few devices trained: {figures.get('trained', 0):.1f} (noised) < "
                f"{self.plan.min_devices}"
            )
        elif self.promote == "always":
            entry["published"] = str(self._publish(Candidate(server_round, adapter, figures)))
            self.evaluating = adapter
        else:
            if self.pending is not None:
                entry["superseded"] = f"round {self.pending.round}'s adapter, never evaluated"
            self.pending = Candidate(server_round, adapter, figures)
            self.evaluating = adapter
            entry["candidate"] = server_round
        return entry

    def _judge(self, pending: Candidate, figures: dict[str, float]) -> dict[str, Any]:
        """Publish the pending candidate if this round's evaluation finds it not worse."""
        measured = pooled_gain(figures, self.spec.config.evaluation.k)
        if measured is None:
            return {}
        verdict = judge(
            *measured, self.standing, margin_sd=self.spec.config.federation.promote_margin_sd
        )
        self.pending = None
        evaluation = {"round": pending.round, "gain": verdict.gain, "std": verdict.std}
        if not verdict.promote:
            self.evaluating = None
            return {"not_promoted": f"round {pending.round}'s adapter: {verdict.reason}"}
        folder = self._publish(pending, evaluation | {"verdict": verdict.reason})
        self.standing = Standing(folder.name, verdict.gain, verdict.std)
        return {"published": str(folder), "promoted": verdict.reason}

    def _publish(self, candidate: Candidate, evaluation: dict | None = None) -> Path:
        manifest = self._manifest(candidate.round, candidate.figures)
        if evaluation is not None:
            manifest["evaluation"] = finite(evaluation)
        return publish_adapter(
            self.spec.config.paths.registry, candidate.weights, manifest, finalize=self.finalize
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
        "mechanism": plan.mechanism if plan.dp else "none",
        "epoch_rounds": plan.epoch_rounds,
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
    if entry.get("published"):
        parts.append(f"published {Path(entry['published']).name}")
    for key, label in (("not_promoted", "NOT promoted"), ("not_published", "NOT published")):
        if key in entry:
            parts.append(f"{label}: {entry[key]}")
    if "candidate" in entry:
        parts.append(f"candidate for the next round's evaluation: round {entry['candidate']}")
    return ", ".join(parts)
