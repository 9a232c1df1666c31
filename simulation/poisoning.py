"""Poisoning devices, on purpose: a simulation-only attack on the federated adapter.

``write_attack_settings(run_dir, settings)`` makes a seeded ``fraction`` of the simulated
devices malicious for that run (``choose_attackers``, from ``federation.seed``); only the
simulation's ClientApp carries ``attack_mod`` (innermost, inside the device's privacy
chain, as ``simulation.canaries``), and only a file in the run folder switches it on. A
malicious device controls its own code: it skips its clipping and replaces the update
part of its payload (statistics untouched) by

- ``boost``: untargeted model replacement: the current adapter trained to rank its own
  searches' clicked items as low as it can (gradient ascent), minus the current adapter,
  boosted;
- ``target``: targeted model replacement: the current adapter trained to rank one item
  first for one query (``AttackTarget``), minus the current adapter, boosted;
- ``signflip``: its own honest update, sign flipped and boosted.

The boost defaults to ``1 / fraction``: the attackers of a round then weigh as much as the
whole expected cohort (Bagdasaryan et al., AISTATS 2020). It cannot break SecAgg+'s
arithmetic: its payload goes through SecAgg+'s quantization (values clipped to the plan's
``clip_range``), masking and its noise share like any other.

``defence = "sum-bound"``: the server refuses rounds whose sum no honest cohort could send
(``server.federation.sum_bound``, switched on by the command); the attackers know it and
keep their update within ``boost x`` the clipping norm, so that together they weigh about
what the whole cohort could and their rounds pass. ``defence = "verified-norm"`` emulates
per-device input validation (a device proves, in zero knowledge, that its payload's L2
norm is within the plan's ``payload_norm`` and the server unmasks only the inputs whose
proofs verify; e.g. ACORN, Bell et al., USENIX Security 2023). No such proof is built
here: the attacker's best response to the check, its payload scaled into the bound, is what
the emulation sends.
"""

from __future__ import annotations

import dataclasses
import functools
import json
import math
from collections.abc import Sequence
from pathlib import Path
from typing import Literal

import numpy as np
import torch
from flwr.app import Array, Context, Message
from flwr.clientapp.typing import ClientAppCallable
from flwr.common import parameters_to_ndarrays
from flwr.compat.common.recorddict_compat import recorddict_to_fitins

from common.data.searches import SearchExample
from common.federation.payload import PayloadCodec
from common.federation.privacy_plan import PrivacyPlan
from common.federation.run_spec import RunSpec
from common.model.adapter import QueryAdapter
from simulation.canaries import PAYLOAD_RECORD
from simulation.devices import cached_population
from simulation.population import Population

ATTACK_SETTINGS = "attack.json"
ATTACKS = ("boost", "target", "signflip")
DEFENCES = ("dp-clipping", "sum-bound", "verified-norm")
ATTACK_STEPS = 30
ATTACK_LR = 0.05
ATTACK_TEMPERATURE = 0.05

Attack = Literal["boost", "target", "signflip"]
Defence = Literal["dp-clipping", "sum-bound", "verified-norm"]


@dataclasses.dataclass(frozen=True)
class AttackTarget:
    """The targeted attack's goal: ``item`` ranked first for the query ``query``."""

    query: str
    query_vector: tuple[float, ...]
    item: int

    def rank(self, item_vectors: np.ndarray, adapter: QueryAdapter | None) -> int:
        """The item's 1-based rank for the query over the whole catalog."""
        query = np.asarray(self.query_vector, dtype=np.float32)
        if adapter is not None:
            query = adapter.apply_numpy(query[None, :])[0]
        scores = item_vectors @ query
        return int(np.sum(scores > scores[self.item])) + 1


@dataclasses.dataclass(frozen=True)
class AttackSettings:
    """Who attacks, how, how hard, and under which defence (see the module doc)."""

    kind: Attack
    fraction: float
    devices: tuple[int, ...]
    boost: float
    seed: int
    target: AttackTarget
    defence: Defence = "dp-clipping"


@dataclasses.dataclass(frozen=True)
class AttackPlan:
    """An attack as a command asks for it; ``settings`` fixes it on a population."""

    kind: Attack
    fraction: float
    boost: float | None = None
    defence: Defence = "dp-clipping"

    def settings(self, population: Population, *, seed: int) -> AttackSettings:
        if self.kind not in ATTACKS or self.defence not in DEFENCES:
            raise ValueError(f"attack {self.kind!r} / defence {self.defence!r}: unknown")
        return AttackSettings(
            kind=self.kind,
            fraction=self.fraction,
            devices=choose_attackers(len(population.devices), self.fraction, seed=seed),
            boost=self.boost if self.boost is not None else 1.0 / self.fraction,
            seed=seed,
            target=choose_target(population, seed=seed),
            defence=self.defence,
        )


def parse_attack(value: str) -> tuple[Attack, float, float | None]:
    """``KIND:FRACTION[:BOOST]`` -> (kind, fraction, boost or None); ValueError if bad."""
    parts = value.split(":")
    if len(parts) not in (2, 3) or parts[0] not in ATTACKS:
        raise ValueError(f"expected KIND:FRACTION[:BOOST] with KIND one of {', '.join(ATTACKS)}")
    try:
        fraction, *boost = (float(p) for p in parts[1:])
    except ValueError:
        raise ValueError(f"FRACTION and BOOST must be numbers, got {value!r}") from None
    if not 0 < fraction < 1:
        raise ValueError(f"FRACTION must be in (0, 1), got {parts[1]}")
    if boost and not (math.isfinite(boost[0]) and boost[0] > 0):
        raise ValueError(f"BOOST must be a finite number > 0, got {parts[2]}")
    kind: Attack = parts[0]  # type: ignore[assignment]
    return kind, fraction, boost[0] if boost else None


def choose_attackers(num_devices: int, fraction: float, *, seed: int) -> tuple[int, ...]:
    """A seeded ``fraction`` of the devices (at least one), as sorted partition ids."""
    count = max(1, round(fraction * num_devices))
    chosen = np.random.default_rng([seed, 32452843]).choice(num_devices, count, replace=False)
    return tuple(sorted(int(c) for c in chosen))


def choose_target(population: Population, *, seed: int, far: int = 100) -> AttackTarget:
    """A seeded training search's query, and a seeded item outside its base top ``far``."""
    rng = np.random.default_rng([seed, 86028121])
    searches = [s for d in population.devices for s in d.train]
    search = searches[int(rng.integers(len(searches)))]
    scores = population.item_vectors @ search.query_vector
    outside = np.argsort(-scores)[min(far, len(scores) - 1) :]
    vector = tuple(float(v) for v in search.query_vector)
    return AttackTarget(search.query, vector, int(rng.choice(outside)))


def write_attack_settings(run_dir: Path, settings: AttackSettings) -> None:
    path = Path(run_dir) / ATTACK_SETTINGS
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(json.dumps(dataclasses.asdict(settings)), encoding="utf-8")


def read_attack_settings(run_dir: Path) -> AttackSettings | None:
    path = Path(run_dir) / ATTACK_SETTINGS
    if not path.is_file():
        return None
    data = json.loads(path.read_text(encoding="utf-8"))
    target = data.pop("target")
    target = AttackTarget(target["query"], tuple(target["query_vector"]), target["item"])
    return AttackSettings(**(data | {"devices": tuple(data["devices"]), "target": target}))


def attack_summary(
    settings: AttackSettings, item_vectors: np.ndarray, adapter: QueryAdapter | None
) -> dict[str, object]:
    """The attack's figures for a run's report: who, how, and the target's rank."""
    return {
        "kind": settings.kind,
        "fraction": settings.fraction,
        "attackers": len(settings.devices),
        "boost": settings.boost,
        "defence": settings.defence,
        "target_query": settings.target.query,
        "target_item": settings.target.item,
        "target_rank_base": settings.target.rank(item_vectors, None),
        "target_rank": settings.target.rank(item_vectors, adapter),
    }


def malicious_update(
    settings: AttackSettings,
    honest: np.ndarray,
    weights: list[np.ndarray],
    item_vectors: np.ndarray,
    clipping_norm: float,
    own: Sequence[SearchExample] = (),
) -> np.ndarray:
    """The update part an attacker sends in place of its (clipped) ``honest`` one;
    ``own``: its own searches (``boost`` trains the adapter away from their clicks)."""
    if settings.kind == "signflip":
        update = -honest
    elif settings.kind == "boost":
        queries = np.stack([s.query_vector for s in own])
        update = _trained(weights, queries, [s.clicked for s in own], item_vectors, ascend=True)
    else:
        query = np.asarray([settings.target.query_vector])
        update = _trained(weights, query, [settings.target.item], item_vectors, ascend=False)
    update = settings.boost * update
    most = {"verified-norm": clipping_norm, "sum-bound": settings.boost * clipping_norm}
    limit = most.get(settings.defence, math.inf)
    norm = float(np.linalg.norm(update))
    return update * (limit / norm) if norm > limit else update


def _trained(
    weights: list[np.ndarray],
    queries: np.ndarray,
    goals: Sequence[int],
    item_vectors: np.ndarray,
    *,
    ascend: bool,
) -> np.ndarray:
    """The current adapter trained to rank each goal item first for its query over the
    catalog (``ascend``: to rank them as low as it can), minus the current adapter."""
    adapter = QueryAdapter.from_weights(weights)
    adapter.train()
    query = torch.from_numpy(np.ascontiguousarray(queries, dtype=np.float32))
    items = torch.from_numpy(np.ascontiguousarray(item_vectors, dtype=np.float32))
    goal = torch.tensor(list(goals))
    optimizer = torch.optim.Adam(adapter.parameters(), lr=ATTACK_LR)
    for _ in range(ATTACK_STEPS):
        optimizer.zero_grad()
        logits = adapter(query) @ items.T / ATTACK_TEMPERATURE
        loss = torch.nn.functional.cross_entropy(logits, goal)
        (-loss if ascend else loss).backward()
        optimizer.step()
    new = adapter.get_weights()
    return np.concatenate([(n - o).ravel() for n, o in zip(new, weights, strict=True)])


def attack_mod(msg: Message, ctxt: Context, call_next: ClientAppCallable) -> Message:
    """A malicious device's payload update becomes its attack (see the module doc)."""
    reply = call_next(msg, ctxt)
    run_dir = str(ctxt.run_config.get("run-dir", ""))
    settings = _settings(run_dir)
    if settings is None or reply.has_error() or PAYLOAD_RECORD not in reply.content:
        return reply
    if int(ctxt.node_config.get("partition-id", -1)) not in settings.devices:
        return reply
    spec = _spec(tuple(sorted(ctxt.run_config.items())))
    plan = PrivacyPlan.from_spec(spec)
    weights = parameters_to_ndarrays(recorddict_to_fitins(msg.content, keep_input=True).parameters)
    size = PayloadCodec.for_weights(weights, plan.clipping_norm, plan.stats_share).update_size
    record = reply.content.array_records[PAYLOAD_RECORD]
    key = next(iter(record.keys()))
    payload = record[key].numpy().astype(np.float64)
    population = cached_population(spec)
    own = population.devices[int(ctxt.node_config["partition-id"])].train
    update = malicious_update(
        settings, payload[:size], weights, population.item_vectors, plan.clipping_norm, own
    )
    payload[:size] = update
    record[key] = Array(payload.astype(np.float32))
    return reply


@functools.cache
def _settings(run_dir: str) -> AttackSettings | None:
    return read_attack_settings(Path(run_dir)) if run_dir else None


@functools.cache
def _spec(items: tuple) -> RunSpec:
    return RunSpec.from_run_config(dict(items), run_id=0)
