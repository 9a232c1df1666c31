"""Which global adapter version the search service runs, and swapping to a newer one.

A version is a registry folder (``common.security.versions``) holding ``adapter.safetensors``. It is
verified (``verify_model_version``: the one place that decides what is trusted) and loaded
aside into a new ``ModelState``; only then does the watcher hand it to ``on_swap``, which
replaces one reference. Until a version is published the service runs the identity adapter
(version ``"base"``).
"""

from __future__ import annotations

import logging
import threading
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PublicKey

from common.model.adapter import WEIGHTS_FILE, QueryAdapter
from common.security.signing import verify_version
from common.security.versions import IntegrityError, latest_version, verify_files

log = logging.getLogger(__name__)

BASE_VERSION = "base"


@dataclass(frozen=True)
class ModelState:
    """One adapter version, immutable once built; ``adapter`` None is the identity."""

    version: str = BASE_VERSION
    adapter: QueryAdapter | None = None
    manifest: dict[str, Any] = field(default_factory=dict, hash=False)
    loaded_at: float = field(default_factory=time.time)

    def adapt(self, queries: np.ndarray) -> np.ndarray:
        if self.adapter is None:
            return np.asarray(queries, dtype=np.float32)
        return self.adapter.apply_numpy(queries)

    def describe(self) -> dict[str, Any]:
        keys = ("round", "created_at", "base_model", "privacy", "metrics")
        return {
            "version": self.version,
            "loaded_at": self.loaded_at,
            **{k: self.manifest[k] for k in keys if k in self.manifest},
        }


def verify_model_version(folder: Path, public_key: Ed25519PublicKey | None) -> dict[str, Any]:
    """Check a version before loading: its Ed25519 signature (when a key is configured) and
    the sha256 of every file. Returns the manifest; raises ``IntegrityError``."""
    if public_key is not None:
        return verify_version(folder, public_key)
    return verify_files(folder)


def load_model_state(
    folder: Path, dim: int, public_key: Ed25519PublicKey | None = None
) -> ModelState:
    """Verify and load a version aside, warmed up, ready to be swapped in."""
    manifest = verify_model_version(folder, public_key)
    path = folder / WEIGHTS_FILE
    if not path.is_file():
        raise IntegrityError(f"{folder}: no {WEIGHTS_FILE}")
    adapter = QueryAdapter.load(path)
    if adapter.dim != dim:
        raise IntegrityError(f"{folder}: adapter dim {adapter.dim}, index dim {dim}")
    adapter.apply_numpy(np.zeros((1, dim), dtype=np.float32))
    return ModelState(version=folder.name, adapter=adapter, manifest=manifest)


def _version_number(name: str) -> int:
    return int(name[1:]) if name.startswith("v") and name[1:].isdigit() else 0


@dataclass
class ReloadResult:
    swapped: bool
    version: str
    error: str | None = None


class ModelWatcher:
    """Polls the registry for a newer version; verifies, loads aside, then calls ``on_swap``.

    A refused version (bad signature, altered file, wrong dim) is remembered and skipped; the
    service keeps the version it holds. Versions never go backwards.
    """

    def __init__(
        self,
        registry: Path,
        dim: int,
        *,
        current: Callable[[], ModelState],
        on_swap: Callable[[ModelState], None],
        public_key: Ed25519PublicKey | None = None,
        poll_interval_s: float = 5.0,
    ) -> None:
        self.registry = Path(registry)
        self.dim = dim
        self.public_key = public_key
        self.poll_interval_s = poll_interval_s
        self.last_error: str | None = None
        self._current = current
        self._on_swap = on_swap
        self._refused: set[str] = set()
        self._lock = threading.Lock()
        self._stop = threading.Event()
        self._thread: threading.Thread | None = None

    def check(self) -> ReloadResult:
        """Swap in the registry's latest version if it is newer and verifies."""
        with self._lock:
            held = self._current().version
            folder = latest_version(self.registry)
            if folder is None or folder.name in self._refused:
                return ReloadResult(False, held, self.last_error)
            if _version_number(folder.name) <= _version_number(held):
                return ReloadResult(False, held)
            try:
                state = load_model_state(folder, self.dim, self.public_key)
            except (IntegrityError, ValueError, OSError) as exc:
                self._refused.add(folder.name)
                self.last_error = f"refused {folder.name}: {exc}"
                log.warning("%s; keeping %s", self.last_error, held)
                return ReloadResult(False, held, self.last_error)
            self._on_swap(state)
            self.last_error = None
            log.info("model version %s -> %s", held, state.version)
            return ReloadResult(True, state.version)

    def start(self) -> None:
        if self._thread is None:
            self._thread = threading.Thread(target=self._run, name="model-watcher", daemon=True)
            self._thread.start()

    def stop(self) -> None:
        self._stop.set()
        if self._thread is not None:
            self._thread.join(timeout=10)
            self._thread = None

    def _run(self) -> None:
        while not self._stop.wait(self.poll_interval_s):
            try:
                self.check()
            except Exception:  # a broken registry must not kill the watcher
                log.exception("model registry check failed")
