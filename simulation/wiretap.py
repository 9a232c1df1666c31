"""Record what each simulated device sends: a Flower mod for the privacy tests and the
traffic benchmark.

``wiretap(folder)`` returns a mod; placed outermost in the ClientApp it sees exactly the
replies that leave the device (after clipping and SecAgg+ masking), placed innermost it
sees the client's plain reply. Each reply becomes one pickle in ``folder`` (the mod runs in
Ray worker processes): node, message type, SecAgg+ stage, round, size in bytes and, with
``keep_content``, every record's entries.
"""

from __future__ import annotations

import pickle
import uuid
from pathlib import Path
from typing import Any

from flwr.app import ArrayRecord, ConfigRecord, Context, Message, MetricRecord
from flwr.clientapp.typing import ClientAppCallable, Mod
from flwr.common.secure_aggregation.secaggplus_constants import RECORD_KEY_CONFIGS, Key


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
