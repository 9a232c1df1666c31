"""The device's local store, encrypted at rest (AES-256-GCM).

Two files under the store folder, each one AES-GCM blob bound to its own name:

- ``searches.enc``: the search log (base query vector, shown ids and their vectors, click);
- ``state.enc``: the personal state (user vector, privacy accountant, training info).

The key comes from ``$FEDSEARCH_DEVICE_KEY`` (base64 of 32 bytes) or from a key file
readable by its owner only. Every write goes to a temporary file that is fsynced and then
renamed over the old one, so a crash mid-write leaves the previous content intact. A
read-modify-write holds an exclusive lock, so the SDK and the Flower client on the same
device never lose each other's updates.
"""

from __future__ import annotations

import base64
import binascii
import fcntl
import io
import json
import os
import time
import uuid
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from dataclasses import dataclass, field, replace
from pathlib import Path
from typing import Any

import numpy as np
from cryptography.exceptions import InvalidTag
from cryptography.hazmat.primitives.ciphers.aead import AESGCM

from common.files import atomic_write
from common.security.keyfiles import read_owner_only, write_owner_only

KEY_ENV = "FEDSEARCH_DEVICE_KEY"
KEY_BYTES = 32
MAGIC = b"FSDS1"
SEARCHES_FILE = "searches.enc"
STATE_FILE = "state.enc"
_LOCK_FILE = ".lock"


class DeviceStoreError(RuntimeError):
    """The store cannot be opened or read (no key, wrong key, altered or foreign file)."""


@dataclass(frozen=True)
class LoggedSearch:
    """One search as the device logged it; ``shown_vectors`` rows match ``shown``."""

    search_id: str
    query: str
    query_vector: np.ndarray
    shown: tuple[str, ...]
    shown_vectors: np.ndarray
    clicked: str | None = None
    timestamp: float = 0.0
    model_version: str = ""


@dataclass
class PersonalState:
    """What never leaves the device: user vector, privacy accountant, training info."""

    user_vector: np.ndarray | None = None
    accountant: dict[str, Any] = field(default_factory=dict)
    info: dict[str, Any] = field(default_factory=dict)


def generate_key() -> bytes:
    return AESGCM.generate_key(bit_length=KEY_BYTES * 8)


def write_key_file(path: Path) -> bytes:
    """Create a new random key in ``path`` (base64, mode 0600); refuse to overwrite one."""
    if Path(path).exists():
        raise DeviceStoreError(f"{path}: key file exists; refusing to overwrite it")
    key = generate_key()
    write_owner_only(Path(path), base64.b64encode(key) + b"\n")
    return key


def load_key(key_file: Path | None = None) -> bytes:
    """The store key from ``$FEDSEARCH_DEVICE_KEY``, else from ``key_file`` (owner-only)."""
    env = os.environ.get(KEY_ENV)
    if env:
        return _decode_key(env.encode("ascii", "replace"), f"${KEY_ENV}")
    if key_file is None:
        raise DeviceStoreError(
            f"no store key: set ${KEY_ENV} (base64 of 32 bytes) or give a key file"
        )
    return _decode_key(read_owner_only(Path(key_file)).strip(), str(key_file))


def _decode_key(text: bytes, where: str) -> bytes:
    try:
        key = base64.b64decode(text, validate=True)
    except binascii.Error as exc:
        raise DeviceStoreError(f"{where}: store key is not valid base64") from exc
    if len(key) != KEY_BYTES:
        raise DeviceStoreError(f"{where}: store key must be {KEY_BYTES} bytes, got {len(key)}")
    return key


class DeviceStore:
    """Encrypted search log and personal state in ``folder``."""

    def __init__(self, folder: Path, key: bytes, *, durable: bool = True) -> None:
        if len(key) != KEY_BYTES:
            raise DeviceStoreError(f"store key must be {KEY_BYTES} bytes, got {len(key)}")
        self.folder = Path(folder)
        self.folder.mkdir(parents=True, exist_ok=True, mode=0o700)
        self._aead = AESGCM(key)
        self.durable = durable  # False: writes skip the disk sync (simulated devices)

    @classmethod
    def open(cls, folder: Path, key_file: Path | None = None) -> DeviceStore:
        """Open with the key from the environment or ``key_file``; check it decrypts."""
        store = cls(folder, load_key(key_file))
        store.searches()
        store.load_state()
        return store

    # search log -------------------------------------------------------------------------

    def searches(self) -> list[LoggedSearch]:
        meta, arrays = self._read(SEARCHES_FILE, {"searches": []})
        return _searches_from(meta, arrays)

    def log_search(
        self,
        query: str,
        query_vector: np.ndarray,
        shown: list[str] | tuple[str, ...],
        shown_vectors: np.ndarray,
        *,
        model_version: str = "",
    ) -> LoggedSearch:
        """Append one search (no click yet) and return it with its new ``search_id``."""
        query_vector = np.asarray(query_vector, dtype=np.float32).ravel()
        vectors = np.asarray(shown_vectors, dtype=np.float32)
        if vectors.size != len(shown) * len(query_vector):
            raise ValueError(
                f"shown_vectors {vectors.shape}: expected {len(shown)} rows of {len(query_vector)}"
            )
        vectors = vectors.reshape(len(shown), len(query_vector))
        entry = LoggedSearch(
            search_id=uuid.uuid4().hex,
            query=query,
            query_vector=query_vector,
            shown=tuple(shown),
            shown_vectors=vectors,
            timestamp=time.time(),
            model_version=model_version,
        )
        self._update_searches(lambda log: [*log, entry])
        return entry

    def log_click(self, search_id: str, item_id: str) -> LoggedSearch:
        """Record that ``item_id`` (one of the shown ids) was clicked in ``search_id``."""
        found: list[LoggedSearch] = []

        def apply(log: list[LoggedSearch]) -> list[LoggedSearch]:
            out = []
            for entry in log:
                if entry.search_id == search_id:
                    if item_id not in entry.shown:
                        raise KeyError(f"item {item_id!r} was not shown in search {search_id}")
                    entry = replace(entry, clicked=item_id)
                    found.append(entry)
                out.append(entry)
            if not found:
                raise KeyError(f"unknown search_id {search_id!r}")
            return out

        self._update_searches(apply)
        return found[0]

    def add_searches(self, entries: list[LoggedSearch]) -> None:
        """Append many searches in one write (history import)."""
        self._update_searches(lambda log: [*log, *entries])

    def _update_searches(self, fn: Callable[[list[LoggedSearch]], list[LoggedSearch]]) -> None:
        with self._locked():
            self._write(SEARCHES_FILE, *_searches_to(fn(self.searches())))

    # personal state ---------------------------------------------------------------------

    def load_state(self) -> PersonalState:
        """The personal state; stores written before it lost its unused personal head
        (``head_len`` and ``head_<i>`` entries) read the same, the head ignored."""
        meta, arrays = self._read(STATE_FILE, {})
        if not meta:
            return PersonalState()
        return PersonalState(
            user_vector=arrays.get("user_vector"), accountant=meta["accountant"], info=meta["info"]
        )

    def save_state(self, state: PersonalState) -> None:
        with self._locked():
            self._write(STATE_FILE, *_state_to(state))

    def update_state(self, fn: Callable[[PersonalState], PersonalState]) -> PersonalState:
        """Read, change and write the personal state under the store lock."""
        with self._locked():
            state = fn(self.load_state())
            self._write(STATE_FILE, *_state_to(state))
        return state

    # encrypted files --------------------------------------------------------------------

    @contextmanager
    def _locked(self) -> Iterator[None]:
        with open(self.folder / _LOCK_FILE, "a+b") as fh:
            fcntl.flock(fh, fcntl.LOCK_EX)
            try:
                for stale in self.folder.glob(".*.tmp"):  # left by a writer that crashed
                    stale.unlink(missing_ok=True)
                yield
            finally:
                fcntl.flock(fh, fcntl.LOCK_UN)

    def _read(self, name: str, empty: dict[str, Any]) -> tuple[dict[str, Any], dict]:
        path = self.folder / name
        if not path.exists():
            return empty, {}
        blob = path.read_bytes()
        if not blob.startswith(MAGIC) or len(blob) < len(MAGIC) + 12 + 16:
            raise DeviceStoreError(f"{path}: not a fedsearch device store file")
        nonce = blob[len(MAGIC) : len(MAGIC) + 12]
        try:
            plain = self._aead.decrypt(nonce, blob[len(MAGIC) + 12 :], MAGIC + name.encode())
        except InvalidTag:
            raise DeviceStoreError(
                f"{path}: cannot decrypt: wrong store key (or the file was altered)"
            ) from None
        return _unpack(plain)

    def _write(self, name: str, meta: dict[str, Any], arrays: dict[str, np.ndarray]) -> None:
        nonce = os.urandom(12)
        blob = MAGIC + nonce + self._aead.encrypt(nonce, _pack(meta, arrays), MAGIC + name.encode())
        atomic_write(self.folder / name, blob, durable=self.durable)


def _pack(meta: dict[str, Any], arrays: dict[str, np.ndarray]) -> bytes:
    buffer = io.BytesIO()
    encoded = np.frombuffer(json.dumps(meta).encode("utf-8"), dtype=np.uint8)
    np.savez(buffer, __meta__=encoded, allow_pickle=True, **arrays)
    return buffer.getvalue()


def _unpack(plain: bytes) -> tuple[dict[str, Any], dict[str, np.ndarray]]:
    with np.load(io.BytesIO(plain), allow_pickle=False) as npz:
        arrays = {k: npz[k] for k in npz.files}
    meta = json.loads(arrays.pop("__meta__").tobytes().decode("utf-8"))
    return meta, arrays


def _searches_to(log: list[LoggedSearch]) -> tuple[dict[str, Any], dict[str, np.ndarray]]:
    meta = {
        "searches": [
            {
                "search_id": e.search_id,
                "query": e.query,
                "shown": list(e.shown),
                "clicked": e.clicked,
                "timestamp": e.timestamp,
                "model_version": e.model_version,
            }
            for e in log
        ]
    }
    if not log:
        return meta, {}
    return meta, {
        "query_vectors": np.stack([e.query_vector for e in log]).astype(np.float32),
        "shown_vectors": np.concatenate([e.shown_vectors for e in log]).astype(np.float32),
    }


def _searches_from(meta: dict[str, Any], arrays: dict[str, np.ndarray]) -> list[LoggedSearch]:
    out, offset = [], 0
    for i, item in enumerate(meta["searches"]):
        n = len(item["shown"])
        out.append(
            LoggedSearch(
                search_id=item["search_id"],
                query=item["query"],
                query_vector=arrays["query_vectors"][i],
                shown=tuple(item["shown"]),
                shown_vectors=arrays["shown_vectors"][offset : offset + n],
                clicked=item["clicked"],
                timestamp=item["timestamp"],
                model_version=item["model_version"],
            )
        )
        offset += n
    return out


def _state_to(state: PersonalState) -> tuple[dict[str, Any], dict[str, np.ndarray]]:
    arrays: dict[str, np.ndarray] = {}
    if state.user_vector is not None:
        arrays["user_vector"] = np.asarray(state.user_vector, dtype=np.float32)
    return {"accountant": state.accountant, "info": state.info}, arrays
