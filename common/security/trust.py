"""The newest trusted version of a registry, swapped in only forwards.

``TrustedVersions(root, public_key, load, state_file=...)`` holds one loaded version of the
registry at ``root`` (folders ``v0001``, ``v0002``, ... as written by
``common.security.versions``). ``refresh()`` takes the newest folder that verifies, trying
them newest first (``LATEST`` is only a hint for humans: a newer valid version is served
even when ``LATEST`` names an older one). A folder is taken only if

- its number is above the high-water mark, the highest version ever accepted, which
  ``state_file`` keeps across restarts (``common.security.high_water``); after a restart
  the version at the mark itself is served again if it still verifies and is the same
  version (manifest digest) as before;
- its manifest is signed by ``public_key``; with no key only the sha256 checks below are
  made, which is enough where nobody untrusted can write to the registry;
- every file matches the sha256 the manifest lists;
- the manifest's own ``version`` is the folder's name, so an old signed version copied
  under a higher number is not taken for a new one;
- ``load(folder, manifest)`` builds the value (it may refuse, raising ``IntegrityError``,
  ``ValueError`` or ``OSError``, e.g. for weights of the wrong shape).

Going back is an operator's explicit act: ``rollback_to(name)`` serves an older version
that verifies and pins it (persisted) until a version above the mark is published.

The value is built aside and swapped in by one assignment, so a reader sees the old
version or the new one, never a mix. A refused folder is remembered by name and not tried
again, except an unsigned one (``UnsignedVersionError``): a deployment's operator signs
versions after the ServerApp publishes them (``server.deploy.signer``). Each ``refresh``
also re-verifies the served folder: if it was altered on disk,
``last_error`` says so (the loaded, verified copy keeps being served, and after a restart
the altered folder is refused). ``refresh`` runs under a lock, so a polling thread and an
on-demand reload can share one instance; ``on_swap`` is called with each new value under
that lock, in version order.
"""

from __future__ import annotations

import logging
import threading
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Generic, TypeVar

from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PublicKey

from common.security.high_water import VersionMark, load_mark, manifest_digest, save_mark
from common.security.signing import UnsignedVersionError, verify_version
from common.security.versions import IntegrityError, list_versions, verify_files, version_number

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
        state_file: Path | None = None,
    ) -> None:
        self.root = Path(root)
        self.public_key = public_key
        self.state_file = None if state_file is None else Path(state_file)
        self.last_error: str | None = None
        self._load = load
        self._on_swap = on_swap
        self._mark = load_mark(self.state_file)
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

    @property
    def mark(self) -> VersionMark:
        """The persisted high-water mark (and rollback pin)."""
        return self._mark

    def refresh(self) -> bool:
        """Take the newest trusted version above the mark; True if one was swapped in."""
        with self._lock:
            self._recheck_held()
            for folder in self._candidates():
                if self._try(folder):
                    return True
            return False

    def rollback_to(self, name: str) -> None:
        """Serve version ``name`` (older than the mark) and pin it; the operator's command.

        Raises ``IntegrityError`` (or ``ValueError`` for a bad name) if it does not verify.
        """
        if version_number(name) > self._mark.floor:
            raise IntegrityError(f"{name} is above the highest accepted version: reload instead")
        if name == self.version:
            raise IntegrityError(f"{name} is the version served")
        with self._lock:
            folder = self.root / name
            if not folder.is_dir():
                raise IntegrityError(f"no version {name} in {self.root}")
            candidate = self._verify_and_load(folder)
            self._mark = self._mark.rolled_back_to(name, candidate.manifest)
            save_mark(self.state_file, self._mark)
            self._refused.discard(name)
            log.warning("operator rollback: %s -> %s", self.version, name)
            self._swap(candidate)

    def _candidates(self) -> list[Path]:
        """Folders to try, newest first: those above the mark, then (nothing held yet, as
        after a restart) the version the mark says was being served."""
        floor = self._mark.floor
        found = [
            folder
            for folder in reversed(list_versions(self.root))
            if version_number(folder.name) > floor and folder.name not in self._refused
        ]
        serving = self._mark.serving
        if self._held is None and serving is not None and serving not in self._refused:
            found.append(self.root / serving)
        return found

    def _try(self, folder: Path) -> bool:
        try:
            candidate = self._verify_and_load(folder, self._expected_digest(folder.name))
        except (IntegrityError, ValueError, OSError) as exc:
            if not isinstance(exc, UnsignedVersionError):  # may be signed later: try again
                self._refused.add(folder.name)
            self.last_error = f"refused {folder.name}: {exc}"
            if folder.name == self._mark.serving and self._held is None:
                self.last_error += (
                    f"; versions below {folder.name} are served only by an explicit rollback"
                )
            log.warning("%s; keeping %s", self.last_error, self.version)
            return False
        if version_number(candidate.name) > self._mark.floor:
            self._mark = self._mark.accepted(candidate.name, candidate.manifest)
            save_mark(self.state_file, self._mark)
        self._swap(candidate)
        return True

    def _swap(self, candidate: HeldVersion[_T]) -> None:
        log.info("version %s -> %s", self.version, candidate.name)
        self._held, self.last_error = candidate, None
        if self._on_swap is not None:
            self._on_swap(candidate.value)

    def _recheck_held(self) -> None:
        """Re-verify the served folder; an alteration on disk is reported, not served."""
        held = self._held
        if held is None:
            return
        try:
            manifest = self._verify(self.root / held.name)
            if manifest != held.manifest:
                raise IntegrityError("its manifest differs from the one verified at load")
        except (IntegrityError, ValueError, OSError) as exc:
            self.last_error = (
                f"the served version {held.name} no longer verifies on disk ({exc}); "
                "serving the copy verified when it was loaded"
            )
            log.error("%s", self.last_error)

    def _verify(self, folder: Path) -> dict[str, Any]:
        if self.public_key is not None:
            return verify_version(folder, self.public_key)
        return verify_files(folder)

    def _expected_digest(self, name: str) -> str | None:
        """After a restart, the version at the mark must be the very one accepted before."""
        mark = self._mark
        return mark.digest if self._held is None and name == mark.serving else None

    def _verify_and_load(self, folder: Path, digest: str | None = None) -> HeldVersion[_T]:
        version_number(folder.name)
        manifest = self._verify(folder)
        if manifest.get("version") != folder.name:
            raise IntegrityError(
                f"the manifest is of version {manifest.get('version')!r}, not {folder.name}"
            )
        if digest is not None and manifest_digest(manifest) != digest:
            raise IntegrityError(f"not the {folder.name} accepted before (another manifest)")
        return HeldVersion(folder.name, self._load(folder, manifest), manifest)


def check_base_model(folder: Path, manifest: dict[str, Any], base_model: str | None) -> None:
    """Refuse a version trained on another base encoder than ``base_model`` (None: any)."""
    trained_on = manifest.get("base_model")
    if base_model and trained_on and trained_on != base_model:
        raise IntegrityError(
            f"{folder.name} was trained on base model {trained_on!r}, but this runs "
            f"{base_model!r}: use the same encoder (paths.encoder_dir, encoder.*)"
        )
