"""Record what each simulated device sends: Flower mods for the privacy tests and the
traffic benchmark.

``wiretap(folder)`` returns a mod; placed outermost in the ClientApp it sees exactly the
replies that leave the device (after clipping and SecAgg+ masking), placed innermost it
sees the client's plain reply. Each reply becomes one pickle in ``folder`` (the mod runs in
Ray worker processes): node, message type, SecAgg+ stage, round, size in bytes and, with
``keep_content``, every record's entries.

A simulation switches its taps on with ``write_tap_settings(run_dir, folder)``; the
simulation's ClientApp carries ``run_tap("wire")`` outermost and ``run_tap("plain")``
innermost, which record into ``folder/wire`` and ``folder/plain`` when the run's folder
holds those settings (and name that position: the privacy audit records the plain
payloads only) and pass messages through untouched otherwise. On the server side,
``server_tap`` saves each round's noised payload sum, exactly what the server holds, as
``folder/server/round-<n>.npy``.
"""

from __future__ import annotations

import functools
import json
import pickle
import uuid
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import numpy as np
from flwr.app import ArrayRecord, ConfigRecord, Context, Message, MetricRecord
from flwr.clientapp.typing import ClientAppCallable, Mod
from flwr.common.secure_aggregation.secaggplus_constants import RECORD_KEY_CONFIGS, Key

from common.federation.run_spec import RunSpec

TAP_SETTINGS = "wiretap.json"


def write_tap_settings(
    run_dir: Path,
    folder: Path,
    *,
    keep_content: bool = True,
    positions: Sequence[str] = ("wire", "plain"),
) -> None:
    """Switch the taps of the run in ``run_dir`` on, recording into ``folder``; the device
    taps only at ``positions`` (the server's sums are always recorded)."""
    settings = {"folder": str(folder), "keep_content": keep_content, "positions": list(positions)}
    (Path(run_dir) / TAP_SETTINGS).write_text(json.dumps(settings), encoding="utf-8")


def run_tap(position: str) -> Mod:
    """A tap that records into ``<folder>/<position>`` when the run's settings ask for it."""

    def mod(msg: Message, ctxt: Context, call_next: ClientAppCallable) -> Message:
        tap = _tap_for(str(ctxt.run_config.get("run-dir", "")), position)
        return tap(msg, ctxt, call_next) if tap is not None else call_next(msg, ctxt)

    return mod


@functools.cache
def _tap_for(run_dir: str, position: str) -> Mod | None:
    path = Path(run_dir) / TAP_SETTINGS
    if not run_dir or not path.is_file():
        return None
    settings = json.loads(path.read_text(encoding="utf-8"))
    if position not in settings.get("positions", ("wire", "plain")):
        return None
    return wiretap(Path(settings["folder"]) / position, keep_content=settings["keep_content"])


def server_tap(spec: RunSpec, server_round: int, total: np.ndarray) -> None:
    """Save the round's payload sum when the run's taps are on (``SumObserver``)."""
    path = spec.run_dir / TAP_SETTINGS
    if not path.is_file():
        return
    folder = Path(json.loads(path.read_text(encoding="utf-8"))["folder"]) / "server"
    folder.mkdir(parents=True, exist_ok=True)
    np.save(folder / f"round-{server_round}.npy", np.asarray(total, dtype=np.float64))


def wiretap(folder: Path, *, keep_content: bool = True) -> Mod:
    folder = Path(folder)
    folder.mkdir(parents=True, exist_ok=True)

    def mod(msg: Message, ctxt: Context, call_next: ClientAppCallable) -> Message:
        stage = ""
        if msg.has_content() and RECORD_KEY_CONFIGS in msg.content.config_records:
            stage = str(msg.content.config_records[RECORD_KEY_CONFIGS].get(Key.STAGE, ""))
        reply = call_next(msg, ctxt)
        entry: dict[str, Any] = {
            "node": int(ctxt.node_config.get("partition-id", -1)),
            "type": msg.metadata.message_type,
            "stage": stage,
            "round": msg.metadata.group_id,
            "bytes": 0,
            "records": {},
        }
        if reply.has_content():
            entry["bytes"] = sum(r.count_bytes() for r in reply.content.values())
            if keep_content:
                entry["records"] = {k: _record(r) for k, r in reply.content.items()}
        with (folder / f"{uuid.uuid4().hex}.pkl").open("wb") as fh:
            pickle.dump(entry, fh)
        return reply

    return mod


def _record(record: Any) -> dict[str, Any]:
    if isinstance(record, ArrayRecord):
        return {"kind": "arrays", "items": {k: a.numpy() for k, a in record.items()}}
    if isinstance(record, MetricRecord):
        return {"kind": "metrics", "items": dict(record)}
    if isinstance(record, ConfigRecord):
        return {"kind": "config", "items": dict(record)}
    return {"kind": type(record).__name__, "items": {}}


def read_tap(folder: Path) -> list[dict[str, Any]]:
    """Every recorded reply in ``folder``."""
    out = []
    for path in sorted(Path(folder).glob("*.pkl")):
        with path.open("rb") as fh:
            out.append(pickle.load(fh))
    return out
