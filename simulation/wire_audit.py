"""Check every value the simulated devices sent against what the protocol allows.

A device may send, per round, nothing but SecAgg+'s messages: public keys (setup), key
shares encrypted for its neighbours (share keys), its masked payload and a weight of 1
(collect), the key shares it holds (unmask). ``check_wire`` reads the outer taps
(``simulation.wiretap``, what left the devices) and reports every ``Violation``:

- a record, key or message that the stage does not have (metrics of any kind included);
- bytes or strings that contain a device's private data (its query vectors, the vectors
  of the items it clicked, its user vector, as float32 or float64 bytes; item ids and query
  texts), or keys and shares of sizes other than the protocol's;
- a masked vector whose values are not spread uniformly over SecAgg+'s modulus, as masks
  make them.

``check_payloads`` reads the inner taps (what each device handed SecAgg+, before masking):
one vector of the payload's size, the update within the clipping norm and holding no
private vector as a row or a column of any weight, the statistics within their bound.
"""

from __future__ import annotations

from collections.abc import Iterable, Iterator
from dataclasses import dataclass
from typing import Any

import numpy as np
from flwr.common import bytes_to_ndarray
from flwr.common.secure_aggregation.secaggplus_constants import Key

from common.evaluation.protocol import device_user_vector
from common.federation.payload import PayloadCodec
from common.federation.privacy_plan import MODULUS
from common.federation.x25519_keys import bytes_to_public_key
from simulation.population import Population

STAGE_KEYS = {
    "setup": {Key.PUBLIC_KEY_1, Key.PUBLIC_KEY_2},
    "share_keys": {Key.DESTINATION_LIST, Key.CIPHERTEXT_LIST},
    "collect_masked_vectors": {Key.MASKED_PARAMETERS},
    "unmask": {Key.NODE_ID_LIST, Key.SHARE_LIST},
}
FIT_RECORDS = {"fitres.parameters", "fitres.num_examples", "fitres.metrics", "fitres.status"}
SECAGG_RECORD = "secaggplus_configs"
SIMILAR = 0.99  # cosine above which a weight row is taken for a private vector


@dataclass(frozen=True)
class Violation:
    node: int
    stage: str
    where: str
    reason: str


class PrivateData:
    """What a simulated device must never send, for ``node`` (its partition id)."""

    def __init__(self, population: Population) -> None:
        self.population = population
        self.item_ids = set(population.item_ids)
        self.queries = {s.query for d in population.devices for s in d.train + d.test if s.query}

    def vectors(self, node: int) -> np.ndarray:
        device = self.population.devices[node]
        searches = device.train + device.test
        rows = [np.asarray(s.query_vector, dtype=np.float32) for s in searches]
        rows += [self.population.item_vectors[s.clicked] for s in searches]
        rows.append(device_user_vector(device, self.population.item_vectors))
        return np.stack(rows).astype(np.float32)


def check_wire(entries: Iterable[dict[str, Any]], private: PrivateData) -> list[Violation]:
    """Every violation in the outer taps' entries (see the module doc)."""
    return [v for entry in entries for v in _wire_entry(entry, private)]


def _wire_entry(entry: dict[str, Any], private: PrivateData) -> Iterator[Violation]:
    node, stage = int(entry["node"]), str(entry["stage"])
    if entry["type"] != "train" or stage not in STAGE_KEYS:
        yield Violation(node, stage, entry["type"], "a message the protocol does not have")
        return
    vectors = private.vectors(node)
    for name, record in entry["records"].items():
        if name == SECAGG_RECORD:
            for key, value in record["items"].items():
                if key not in STAGE_KEYS[stage]:
                    yield Violation(node, stage, f"{name}.{key}", "a key the stage does not have")
                yield from _secagg_value(node, stage, key, value, vectors, private)
        elif name in FIT_RECORDS and stage == "collect_masked_vectors":
            yield from _fit_record(node, stage, name, record["items"])
        else:
            yield Violation(node, stage, name, "a record the stage does not have")


def _secagg_value(node, stage, key, value, vectors, private) -> Iterator[Violation]:
    where = f"{SECAGG_RECORD}.{key}"
    for blob in _bytes(value):
        if _holds_vectors(blob, vectors):
            yield Violation(node, stage, where, "bytes carry private vectors")
    for text in _strings(value):
        if text in private.item_ids or text in private.queries:
            yield Violation(node, stage, where, "a string names private items or queries")
    if key in (Key.PUBLIC_KEY_1, Key.PUBLIC_KEY_2) and not _is_public_key(value):
        yield Violation(node, stage, where, "not a public key")
    if key in (Key.CIPHERTEXT_LIST, Key.SHARE_LIST) and len({len(b) for b in value}) > 1:
        yield Violation(node, stage, where, "shares or ciphertexts of different sizes")
    if key == Key.MASKED_PARAMETERS and not _looks_masked(value):
        yield Violation(node, stage, where, "values not spread over the modulus: not masked")


def _fit_record(node: int, stage: str, name: str, items: dict) -> Iterator[Violation]:
    """On the wire the fit reply keeps only its weight (1) and status; SecAgg+ emptied its
    parameters, and metrics must be empty."""
    if name == "fitres.status":
        ok = set(items) <= {"code", "message"}
    elif name == "fitres.num_examples":
        ok = dict(items) == {"num_examples": 1}
    else:
        ok = not items
    if not ok:
        yield Violation(node, stage, name, f"holds {sorted(items)}, which the protocol does not")


def _is_public_key(value: Any) -> bool:
    try:
        bytes_to_public_key(value)
    except (TypeError, ValueError):
        return False
    return True


def _looks_masked(blobs: list[bytes]) -> bool:
    values = np.concatenate([bytes_to_ndarray(b).ravel() for b in blobs[1:]]).astype(np.float64)
    if len(values) < 100 or values.min() < 0 or values.max() >= MODULUS:
        return False
    mean = float(np.mean(values / MODULUS))
    return abs(mean - 0.5) < 6 * np.sqrt(1 / 12 / len(values))


def check_payloads(
    entries: Iterable[dict[str, Any]], private: PrivateData, codec: PayloadCodec
) -> list[Violation]:
    """Every violation in the inner taps' training replies (see the module doc)."""
    out = []
    for entry in entries:
        record = entry["records"].get("fitres.parameters")
        if entry["type"] != "train" or not record or not record["items"]:
            continue
        node, stage = int(entry["node"]), str(entry["stage"])
        out += list(_payload(node, stage, list(record["items"].values()), private, codec))
    return out


def _payload(node, stage, arrays, private, codec) -> Iterator[Violation]:
    if len(arrays) != 1 or np.asarray(arrays[0]).size != codec.size:
        yield Violation(node, stage, "payload", f"not one vector of {codec.size} values")
        return
    flat = np.asarray(arrays[0], dtype=np.float64).ravel()
    update, stats = flat[: codec.update_size], flat[codec.update_size :]
    if np.linalg.norm(update) > codec.clipping_norm * (1 + 1e-4):
        yield Violation(node, stage, "payload", "update above the clipping norm")
    if stats.size and (stats.min() < -1e-6 or stats.max() > codec.gamma * (1 + 1e-4)):
        yield Violation(node, stage, "payload", "statistics outside their bound")
    weights, _ = codec.decode(flat)
    if _weights_hold(weights, private.vectors(node)):
        yield Violation(node, stage, "payload", "a weight row or column is a private vector")


def _weights_hold(weights: list[np.ndarray], vectors: np.ndarray) -> bool:
    unit = vectors / np.maximum(np.linalg.norm(vectors, axis=1, keepdims=True), 1e-12)
    dim = unit.shape[1]
    for w in weights:
        w = np.atleast_2d(w)
        lines = [w[i] for i in range(w.shape[0]) if w.shape[1] == dim]
        lines += [w[:, j] for j in range(w.shape[1]) if w.shape[0] == dim]
        for line in lines:
            norm = np.linalg.norm(line)
            if norm > 1e-9 and np.max(unit @ (line / norm)) > SIMILAR:
                return True
    return False


def _holds_vectors(blob: bytes, vectors: np.ndarray) -> bool:
    return any(
        v.astype(dtype).tobytes() in blob for v in vectors for dtype in (np.float32, np.float64)
    )


def _bytes(value: Any) -> Iterator[bytes]:
    if isinstance(value, bytes):
        yield value
    elif isinstance(value, list):
        for v in value:
            yield from _bytes(v)


def _strings(value: Any) -> Iterator[str]:
    if isinstance(value, str):
        yield value
    elif isinstance(value, list):
        for v in value:
            yield from _strings(v)
