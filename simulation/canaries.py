"""Canary devices for the one-shot empirical privacy estimate (Andrew et al., ICLR 2024).

``with_canaries(population, count)`` appends ``count`` canary devices to a population: each
is sampled like any other device and trains on a copy of a real device's searches, but
``canary_mod`` (innermost in the simulation's ClientApp, inside the device's privacy chain)
replaces the update part of its payload by its own fixed random unit direction scaled to
the clipping norm, which then goes through SecAgg+'s quantization, the device's noise share
and masking like any payload. ``write_canary_settings`` switches the mod on for a run; the
settings also fix ``held_out`` further directions that no device ever sends
(``CanarySettings.direction``: inserted ones first).
"""

from __future__ import annotations

import dataclasses
import functools
import json
from pathlib import Path

import numpy as np
from flwr.app import Array, Context, Message
from flwr.clientapp.typing import ClientAppCallable

from simulation.population import Population

CANARY_SETTINGS = "canaries.json"
PAYLOAD_RECORD = "fitres.parameters"


@dataclasses.dataclass(frozen=True)
class CanarySettings:
    """Which devices are canaries, their update size and norm, and the directions' seed."""

    devices: tuple[int, ...]
    held_out: int
    update_size: int
    clipping_norm: float
    seed: int

    @property
    def inserted(self) -> int:
        return len(self.devices)

    def direction(self, index: int) -> np.ndarray:
        """Canary ``index``'s unit direction (the first ``inserted`` are sent)."""
        rng = np.random.default_rng([self.seed, 7919, index])
        vector = rng.standard_normal(self.update_size)
        return vector / np.sqrt(np.sum(vector * vector))


def with_canaries(population: Population, count: int, *, seed: int = 0) -> Population:
    """``population`` with ``count`` canary devices appended (copies of real devices' data)."""
    if count < 1:
        raise ValueError(f"canaries: need at least 1, got {count}")
    real = population.devices
    donors = np.random.default_rng([seed, 104729]).integers(len(real), size=count)
    canaries = [
        dataclasses.replace(real[int(d)], device_id=f"canary-{n:04d}") for n, d in enumerate(donors)
    ]
    return dataclasses.replace(population, devices=[*real, *canaries])


def write_canary_settings(run_dir: Path, settings: CanarySettings) -> None:
    if settings.held_out < 2 or not settings.devices:
        raise ValueError("canaries: need at least one inserted and two held-out directions")
    data = dataclasses.asdict(settings) | {"devices": list(settings.devices)}
    path = Path(run_dir) / CANARY_SETTINGS
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(json.dumps(data), encoding="utf-8")


def read_canary_settings(run_dir: Path) -> CanarySettings | None:
    path = Path(run_dir) / CANARY_SETTINGS
    if not path.is_file():
        return None
    data = json.loads(path.read_text(encoding="utf-8"))
    return CanarySettings(**(data | {"devices": tuple(data["devices"])}))


def canary_mod(msg: Message, ctxt: Context, call_next: ClientAppCallable) -> Message:
    """A canary device's payload update becomes its direction times the clipping norm."""
    reply = call_next(msg, ctxt)
    settings = _settings(str(ctxt.run_config.get("run-dir", "")))
    if settings is None or reply.has_error() or PAYLOAD_RECORD not in reply.content:
        return reply
    node = int(ctxt.node_config.get("partition-id", -1))
    if node not in settings.devices:
        return reply
    record = reply.content.array_records[PAYLOAD_RECORD]
    key = next(iter(record.keys()))
    payload = record[key].numpy().copy()
    canary = settings.direction(settings.devices.index(node)) * settings.clipping_norm
    payload[: settings.update_size] = canary.astype(payload.dtype)
    record[key] = Array(payload)
    return reply


@functools.cache
def _settings(run_dir: str) -> CanarySettings | None:
    return read_canary_settings(Path(run_dir)) if run_dir else None
