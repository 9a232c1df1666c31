"""Devices that drop out, on purpose: dropout tests and benchmarks.

``write_fault_settings(run_dir, fraction=0.3, stages=FIT_STAGES)`` makes exactly
``round(fraction x cohort)`` of each round's sampled devices fail, each at one of
``stages`` drawn at random (a SecAgg+ stage name, or ``"train"`` for a plain training
message): the device replies with an error and does nothing more that round, as if it had
lost its connection. ``silent_s`` > 0 makes it first stay silent that many seconds (the
server's ``federation.stage_timeout_s`` must give up on it); ``rounds`` limits the faults to
those rounds (empty: every round).

The server side (``fault_cohort``, the simulation ServerApp's cohort hook) draws the
failing devices and their stages from ``seed`` and the round, and writes them to
``<run_dir>/faults/round-<n>.json`` (the cohort's node ids and the ``fates``: node id to
stage) before the round's first message; each device's
``fault_mod`` reads its own fate there. Without settings both pass through untouched.
"""

from __future__ import annotations

import functools
import json
import time
from collections.abc import Sequence
from pathlib import Path
from typing import Any

from flwr.app import Context, Message
from flwr.clientapp.typing import ClientAppCallable
from flwr.common.secure_aggregation.secaggplus_constants import RECORD_KEY_CONFIGS, Key, Stage

from common.federation.run_spec import RunSpec
from common.files import atomic_write
from common.privacy.keystream import KeystreamRandom

FAULT_SETTINGS = "faults.json"
FIT_STAGES = (Stage.SETUP, Stage.SHARE_KEYS, Stage.COLLECT_MASKED_VECTORS, Stage.UNMASK)


class SimulatedDropout(RuntimeError):
    """The device drops out of this stage of the round (a simulated fault)."""


def write_fault_settings(
    run_dir: Path,
    *,
    fraction: float,
    stages: Sequence[str] = ("unmask",),
    seed: int = 0,
    silent_s: float = 0.0,
    rounds: Sequence[int] = (),
) -> None:
    if not 0 <= fraction < 1:
        raise ValueError(f"fraction must be in [0, 1), got {fraction}")
    if not stages:
        raise ValueError("stages: name at least one stage")
    if silent_s < 0:
        raise ValueError(f"silent_s must be >= 0, got {silent_s}")
    settings = {"fraction": fraction, "stages": list(stages), "seed": seed}
    settings |= {"silent_s": silent_s, "rounds": [int(r) for r in rounds]}
    atomic_write(Path(run_dir) / FAULT_SETTINGS, json.dumps(settings))


def fault_cohort(spec: RunSpec, server_round: int, nodes: Sequence[int]) -> None:
    """Draw this round's failing devices and their stages (see the module doc)."""
    settings = _settings(str(spec.run_dir))
    if settings is None or (settings["rounds"] and server_round not in settings["rounds"]):
        return
    count = round(settings["fraction"] * len(nodes))
    draw = KeystreamRandom.from_seed("fault", settings["seed"], server_round)
    order = sorted(nodes, key=lambda _: float(draw.uniform(1)[0]))
    stages = settings["stages"]
    fates = {str(node): stages[int(draw.uniform(1)[0] * len(stages))] for node in order[:count]}
    folder = spec.run_dir / "faults"
    folder.mkdir(exist_ok=True)
    record = {"cohort": list(nodes), "fates": fates}
    atomic_write(folder / f"round-{server_round}.json", json.dumps(record))


def fault_mod(msg: Message, ctxt: Context, call_next: ClientAppCallable) -> Message:
    run_dir = str(ctxt.run_config.get("run-dir", ""))
    settings = _settings(run_dir)
    if settings is not None and _fate(run_dir, msg.metadata.group_id, ctxt.node_id) == _stage(msg):
        time.sleep(settings["silent_s"])
        raise SimulatedDropout(f"simulated dropout at {_stage(msg)}")
    return call_next(msg, ctxt)


def _fate(run_dir: str, group_id: str, node_id: int) -> str | None:
    path = Path(run_dir) / "faults" / f"round-{group_id}.json"
    if not path.is_file():
        return None
    return json.loads(path.read_text(encoding="utf-8"))["fates"].get(str(node_id))


def _stage(msg: Message) -> str:
    configs = msg.content.config_records.get(RECORD_KEY_CONFIGS) if msg.has_content() else None
    if configs is not None and Key.STAGE in configs:
        return str(configs[Key.STAGE])
    return str(msg.metadata.message_type)


@functools.cache
def _settings(run_dir: str) -> dict[str, Any] | None:
    path = Path(run_dir) / FAULT_SETTINGS
    if not run_dir or not path.is_file():
        return None
    return json.loads(path.read_text(encoding="utf-8"))
