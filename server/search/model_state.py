"""Which global adapter version the search service runs, and swapping to a newer one.

A version is a registry folder (``common.security.versions``) holding
``adapter.safetensors``. ``common.security.trust.TrustedVersions`` decides what is trusted
and loads it aside into a new ``ModelState``; only then is it handed to ``on_swap``, which
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

from common.model.adapter_numpy import ADAPTER_FILE, NumpyAdapter
from common.security.trust import TrustedVersions, check_base_model
from common.security.versions import IntegrityError

log = logging.getLogger(__name__)

BASE_VERSION = "base"


@dataclass(frozen=True)
class ModelState:
    """One adapter version, immutable once built; ``adapter`` None is the identity."""

    version: str = BASE_VERSION
    adapter: NumpyAdapter | None = None
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


def load_model_state(
    folder: Path, manifest: dict[str, Any], dim: int, base_model: str | None = None
) -> ModelState:
    """Load a verified version aside, warmed up, ready to be swapped in; ``base_model``: the
    encoder version the service runs, which the version must have been trained on."""
    check_base_model(folder, manifest, base_model)
    path = folder / ADAPTER_FILE
    if not path.is_file():
        raise IntegrityError(f"{folder}: no {ADAPTER_FILE}")
    try:
        adapter = NumpyAdapter.load(path)
        if adapter.dim != dim:
            raise ValueError(f"adapter dim {adapter.dim}, index dim {dim}")
        adapter.apply_numpy(np.zeros((1, dim), dtype=np.float32))
    except (ValueError, OSError) as exc:
        raise IntegrityError(f"{folder}: unusable {ADAPTER_FILE}: {exc}") from exc
    return ModelState(version=folder.name, adapter=adapter, manifest=manifest)


@dataclass
class ReloadResult:
    """What ``/admin/reload`` answers: whether it swapped, the version served, and the
    reason the registry's latest version was refused, if it was."""

    swapped: bool
    version: str
    error: str | None = None


class ModelWatcher:
    """Serves each newer trusted version of the registry, checked by a thread every
    ``poll_interval_s`` and on demand (``check``); ``on_swap`` receives the new state.
    ``state_file`` keeps the highest version accepted across restarts; going back is
    ``rollback`` only. ``base_model``: the service's encoder version; a version trained on
    another is refused."""

    def __init__(
        self,
        registry: Path,
        dim: int,
        *,
        on_swap: Callable[[ModelState], None],
        public_key: Ed25519PublicKey | None = None,
        poll_interval_s: float = 5.0,
        state_file: Path | None = None,
        base_model: str | None = None,
    ) -> None:
        self.versions: TrustedVersions[ModelState] = TrustedVersions(
            registry,
            public_key,
            lambda folder, manifest: load_model_state(folder, manifest, dim, base_model),
            on_swap=on_swap,
            state_file=state_file,
        )
        self.poll_interval_s = poll_interval_s
        self._stop = threading.Event()
        self._thread: threading.Thread | None = None

    def check(self) -> ReloadResult:
        """Swap in the registry's latest version if it is newer and verifies."""
        swapped = self.versions.refresh()
        version = self.versions.version or BASE_VERSION
        return ReloadResult(swapped, version, None if swapped else self.versions.last_error)

    def rollback(self, version: str) -> str | None:
        """Serve the older ``version`` and pin it (the operator's command); the reason it
        was refused, or None."""
        try:
            self.versions.rollback_to(version)
        except (IntegrityError, ValueError, OSError) as exc:
            return f"cannot roll back to {version}: {exc}"
        return None

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
