"""Devices that drop out, on purpose: a Flower mod for dropout tests and benchmarks.

``write_fault_settings(run_dir, fraction=0.2, stages=("unmask",))`` makes a seeded
``fraction`` of the devices that receive a message of one of ``stages`` fail it (a
SecAgg+ stage name, or ``"train"`` for a plain training message): the device replies with
an error and does nothing, as if it had lost its connection. Which devices drop is drawn
afresh each round from ``seed``. Without settings the mod passes messages
through untouched.
"""

from __future__ import annotations

import functools
import json
from collections.abc import Sequence
from pathlib import Path
from typing import Any

from flwr.app import Context, Message
from flwr.clientapp.typing import ClientAppCallable
from flwr.common.secure_aggregation.secaggplus_constants import RECORD_KEY_CONFIGS, Key

from common.privacy.keystream import KeystreamRandom

FAULT_SETTINGS = "faults.json"


class SimulatedDropout(RuntimeError):
    """The device drops out of this stage of the round (a simulated fault)."""


def write_fault_settings(
    run_dir: Path, *, fraction: float, stages: Sequence[str] = ("unmask",), seed: int = 0
) -> None:
    if not 0 <= fraction < 1:
        raise ValueError(f"fraction must be in [0, 1), got {fraction}")
    settings = {"fraction": fraction, "stages": list(stages), "seed": seed}
    (Path(run_dir) / FAULT_SETTINGS).write_text(json.dumps(settings), encoding="utf-8")


def fault_mod(msg: Message, ctxt: Context, call_next: ClientAppCallable) -> Message:
    settings = _settings(str(ctxt.run_config.get("run-dir", "")))
    if settings is not None and _stage(msg) in settings["stages"]:
        device = ctxt.node_config.get("partition-id", ctxt.node_id)
        draw = KeystreamRandom.from_seed(
            "fault", settings["seed"], msg.metadata.group_id, _stage(msg), device
        )
        if draw.uniform(1)[0] < settings["fraction"]:
            raise SimulatedDropout(f"simulated dropout at {_stage(msg)}")
    return call_next(msg, ctxt)


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
