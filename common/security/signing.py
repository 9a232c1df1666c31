"""Ed25519 signatures on model versions (DESIGN decision 7).

The server signs the exact bytes of a version's ``manifest.json``; the manifest holds the
sha256 of every file, so one signature covers the whole version. ``verify_version`` checks
the signature, then every file, and refuses files the manifest does not list.

Publish signed::

    write_version(root, write_files, manifest, finalize=signer(load_private_key(path)))

Load only verified versions, keeping the one held when a newer one is refused::

    loader = TrustedLoader(root, load_public_key(path), load=my_load_fn)
    loader.refresh()
"""

from __future__ import annotations

import base64
import hashlib
import json
import logging
import os
from collections.abc import Callable
from pathlib import Path
from typing import Any, Generic, TypeVar

from cryptography.exceptions import InvalidSignature
from cryptography.hazmat.primitives import serialization
from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PrivateKey, Ed25519PublicKey

from common.security.keyfiles import read_owner_only, write_owner_only
from common.security.versions import MANIFEST, IntegrityError, latest_version, verify_files

SIGNATURE_FILE = "signature.json"
ALGORITHM = "ed25519"
SIGNING_KEY_ENV = "FEDSEARCH_SIGNING_KEY"

log = logging.getLogger(__name__)
T = TypeVar("T")


class SignatureError(IntegrityError):
    """A version is unsigned, signed by another key, or its manifest was altered."""


def generate_signing_key(private_path: Path, public_path: Path) -> Ed25519PublicKey:
    """Create an Ed25519 key pair: private key PEM (mode 0600) and public key PEM."""
    private_key = Ed25519PrivateKey.generate()
    pem = private_key.private_bytes(
        serialization.Encoding.PEM,
        serialization.PrivateFormat.PKCS8,
        serialization.NoEncryption(),
    )
    write_owner_only(Path(private_path), pem)
    public_key = private_key.public_key()
    Path(public_path).write_bytes(
        public_key.public_bytes(
            serialization.Encoding.PEM, serialization.PublicFormat.SubjectPublicKeyInfo
        )
    )
    return public_key


def load_private_key(path: Path) -> Ed25519PrivateKey:
    """Load the signing key; the file must be readable by its owner only."""
    key = serialization.load_pem_private_key(read_owner_only(Path(path)), password=None)
    if not isinstance(key, Ed25519PrivateKey):
        raise SignatureError(f"{path}: not an Ed25519 private key")
    return key


def load_public_key(path: Path) -> Ed25519PublicKey:
    path = Path(path)
    if not path.is_file():
        raise FileNotFoundError(f"public key not found: {path}")
    key = serialization.load_pem_public_key(path.read_bytes())
    if not isinstance(key, Ed25519PublicKey):
        raise SignatureError(f"{path}: not an Ed25519 public key")
    return key


def key_id(public_key: Ed25519PublicKey) -> str:
    """Short fingerprint of a public key (sha256 of its raw bytes, 16 hex digits)."""
    raw = public_key.public_bytes(serialization.Encoding.Raw, serialization.PublicFormat.Raw)
    return hashlib.sha256(raw).hexdigest()[:16]


def sign_version(folder: Path, private_key: Ed25519PrivateKey) -> None:
    """Sign ``folder/manifest.json`` as it is on disk, writing ``signature.json`` beside it."""
    manifest_bytes = (Path(folder) / MANIFEST).read_bytes()
    record = {
        "algorithm": ALGORITHM,
        "key_id": key_id(private_key.public_key()),
        "signature": base64.b64encode(private_key.sign(manifest_bytes)).decode("ascii"),
    }
    (Path(folder) / SIGNATURE_FILE).write_text(json.dumps(record, indent=2), "utf-8")


def signer(private_key: Ed25519PrivateKey) -> Callable[[Path], None]:
    """A ``finalize=`` hook for ``common.security.versions.write_version``: signs the version."""

    def finalize(folder: Path) -> None:
        sign_version(folder, private_key)

    return finalize


def publisher(private_key_path: str | Path = "") -> Callable[[Path], None] | None:
    """The ``finalize=`` hook signing with the key at ``private_key_path``, else the key named
    by ``$FEDSEARCH_SIGNING_KEY`` (set by ``fedsearch deploy superlink``); None if neither."""
    path = str(private_key_path) or os.environ.get(SIGNING_KEY_ENV, "")
    return signer(load_private_key(Path(path))) if path else None


def verify_version(folder: Path, public_key: Ed25519PublicKey) -> dict[str, Any]:
    """Check the manifest's signature and the sha256 of every file; return the manifest.

    Raises ``SignatureError`` (unsigned, other key, altered manifest) or ``IntegrityError``
    (a file missing, altered, or not listed in the manifest).
    """
    folder = Path(folder)
    manifest_path = folder / MANIFEST
    if not manifest_path.is_file():
        raise IntegrityError(f"{folder}: no {MANIFEST}")
    manifest_bytes = manifest_path.read_bytes()
    _check_signature(folder, manifest_bytes, public_key)
    signed = json.loads(manifest_bytes)
    manifest = verify_files(folder)
    if manifest != signed:
        raise SignatureError(f"{folder}: {MANIFEST} changed while it was being verified")
    extra = sorted(
        p.relative_to(folder).as_posix()
        for p in folder.rglob("*")
        if p.is_file() and p.relative_to(folder).as_posix() not in manifest["files"]
    )
    extra = [name for name in extra if name not in (MANIFEST, SIGNATURE_FILE)]
    if extra:
        raise IntegrityError(f"{folder}: files not listed in the signed manifest: {extra}")
    return manifest


def _check_signature(folder: Path, manifest_bytes: bytes, public_key: Ed25519PublicKey) -> None:
    path = folder / SIGNATURE_FILE
    if not path.is_file():
        raise SignatureError(f"{folder}: version is not signed (no {SIGNATURE_FILE})")
    try:
        record = json.loads(path.read_text(encoding="utf-8"))
        signature = base64.b64decode(record["signature"], validate=True)
    except (ValueError, KeyError, TypeError) as exc:
        raise SignatureError(f"{path}: malformed signature file ({exc})") from exc
    if record.get("algorithm") != ALGORITHM:
        raise SignatureError(f"{path}: algorithm {record.get('algorithm')!r}, expected ed25519")
    try:
        public_key.verify(signature, manifest_bytes)
    except InvalidSignature:
        expected = key_id(public_key)
        if record.get("key_id") != expected:
            raise SignatureError(
                f"{folder}: signed by another key (key id {record.get('key_id')}, "
                f"trusted key id {expected})"
            ) from None
        raise SignatureError(
            f"{folder}: signature does not match {MANIFEST} (the manifest was altered)"
        ) from None


class TrustedLoader(Generic[T]):
    """Holds the newest verified version of a registry; refuses and keeps it otherwise.

    ``load(folder, manifest)`` turns a verified folder into the object to serve (for example
    a ``QueryAdapter``). ``refresh()`` verifies the registry's latest version and swaps it in
    only if it verifies, loads, and is newer than the one held (no rollback).
    """

    def __init__(
        self,
        root: Path,
        public_key: Ed25519PublicKey,
        load: Callable[[Path, dict[str, Any]], T],
    ) -> None:
        self.root = Path(root)
        self.public_key = public_key
        self._load = load
        self.value: T | None = None
        self.manifest: dict[str, Any] | None = None
        self.last_error: str | None = None
        self._refused: set[Path] = set()

    @property
    def version(self) -> str | None:
        return None if self.manifest is None else str(self.manifest["version"])

    def refresh(self) -> bool:
        """Try the registry's latest version; True if a new version was swapped in."""
        folder = latest_version(self.root)
        if folder is None or folder in self._refused:
            return False
        if self.manifest is not None and folder.name == self.version:
            return False
        try:
            manifest = verify_version(folder, self.public_key)
            _check_not_older(folder, manifest, self.manifest)
            value = self._load(folder, manifest)
        except (IntegrityError, ValueError, OSError) as exc:
            self._refused.add(folder)
            self.last_error = str(exc)
            log.warning("refused model version %s, keeping %s: %s", folder, self.version, exc)
            return False
        self.value, self.manifest, self.last_error = value, manifest, None
        return True


def _check_not_older(
    folder: Path, manifest: dict[str, Any], current: dict[str, Any] | None
) -> None:
    name = str(manifest.get("version", ""))
    if name != folder.name:
        raise SignatureError(f"{folder}: folder name does not match the signed version {name!r}")
    if current is not None and _number(name) <= _number(str(current["version"])):
        raise SignatureError(f"{folder}: {name} is not newer than {current['version']}")


def _number(version: str) -> int:
    try:
        return int(version.lstrip("v"))
    except ValueError as exc:
        raise SignatureError(f"version {version!r} is not of the form v0001") from exc
