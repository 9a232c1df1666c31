"""The newest trusted version of a registry, swapped in only forwards.

``TrustedVersions(root, public_key, load)`` holds one loaded version of the registry at
``root`` (folders ``v0001``, ``v0002``, ... as written by ``common.security.versions``).
``refresh()`` looks at the registry's latest folder and takes it only if

- its number is higher than the held one's (an equal one is held already, an older one
  would be a rollback);
- its manifest is signed by ``public_key``; with no key only the sha256 checks below are
  made, which is enough where nobody untrusted can write to the registry;
- every file matches the sha256 the manifest lists;
- the manifest's own ``version`` is the folder's name, so an old signed version copied
  under a higher number is not taken for a new one;
- ``load(folder, manifest)`` builds the value (it may refuse, raising ``IntegrityError``,
  ``ValueError`` or ``OSError``, e.g. for weights of the wrong shape).

The value is built aside and swapped in by one assignment, so a reader sees the old
version or the new one, never a mix. A refused folder is remembered by name and not tried
again; the held version stays and ``last_error`` says why until the next swap.
``refresh`` runs under a lock, so a polling thread and an on-demand reload can share one
instance; ``on_swap`` is called with each new value under that lock, in version order.
"""

from __future__ import annotations

import logging
import threading
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Generic, TypeVar

from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PublicKey

from common.security.signing import verify_version
from common.security.versions import IntegrityError, latest_version, verify_files, version_number

log = logging.getLogger(__name__)
_T = TypeVar("_T")


@dataclass(frozen=True)
class HeldVersion(Generic[_T]):
    """A verified, loaded version: its folder name, the loaded value and its manifest."""

    name: str
    value: _T
    manifest: dict[str, Any]


class TrustedVersions(Generic[_T]):
    """Holds the newest version of ``root`` that verified and loaded; see the module."""

    def __init__(
        self,
        root: Path,
        public_key: Ed25519PublicKey | None,
        load: Callable[[Path, dict[str, Any]], _T],
        *,
        on_swap: Callable[[_T], None] | None = None,
    ) -> None:
        self.root = Path(root)
        self.public_key = public_key
        self.last_error: str | None = None
        self._load = load
        self._on_swap = on_swap
        self._held: HeldVersion[_T] | None = None
        self._refused: set[str] = set()
        self._lock = threading.Lock()

    @property
    def held(self) -> HeldVersion[_T] | None:
        return self._held

    @property
    def value(self) -> _T | None:
        held = self._held
        return None if held is None else held.value

    @property
    def version(self) -> str | None:
        held = self._held
        return None if held is None else held.name

    def refresh(self) -> bool:
        """Take the registry's latest version if it is newer and trusted; True if swapped."""
        with self._lock:
            folder = latest_version(self.root)
            if folder is None or folder.name in self._refused or folder.name == self.version:
                return False
            try:
                candidate = self._verify_and_load(folder)
            except (IntegrityError, ValueError, OSError) as exc:
                self._refused.add(folder.name)
                self.last_error = f"refused {folder.name}: {exc}"
                log.warning("%s; keeping %s", self.last_error, self.version)
                return False
            log.info("version %s -> %s", self.version, candidate.name)
            self._held, self.last_error = candidate, None
            if self._on_swap is not None:
                self._on_swap(candidate.value)
            return True

    def _verify_and_load(self, folder: Path) -> HeldVersion[_T]:
        number = version_number(folder.name)
        if self._held is not None and number <= version_number(self._held.name):
            raise IntegrityError(f"not newer than the held {self._held.name}")
        if self.public_key is not None:
            manifest = verify_version(folder, self.public_key)
        else:
            manifest = verify_files(folder)
        if manifest.get("version") != folder.name:
            raise IntegrityError(
                f"the manifest is of version {manifest.get('version')!r}, not {folder.name}"
            )
        return HeldVersion(folder.name, self._load(folder, manifest), manifest)
