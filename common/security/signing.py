"""Ed25519 signatures on model versions.

The server signs the exact bytes of a version's ``manifest.json``; the manifest holds the
sha256 of every file, so one signature covers the whole version. ``verify_version`` checks
the signature, then every file, and refuses files the manifest does not list.

Publish signed::

    write_version(root, write_files, manifest, finalize=signer(load_private_key(path)))

``common.security.trust.TrustedVersions`` loads only versions that verify, keeping the one
it holds when a newer one is refused.
"""

from __future__ import annotations

import base64
import hashlib
import json
import os
from collections.abc import Callable
from pathlib import Path
from typing import Any

from cryptography.exceptions import InvalidSignature
from cryptography.hazmat.primitives import serialization
from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PrivateKey, Ed25519PublicKey

from common.files import atomic_write
from common.security.keyfiles import read_owner_only, write_owner_only
from common.security.versions import MANIFEST, IntegrityError, verify_files

SIGNATURE_FILE = "signature.json"
ALGORITHM = "ed25519"
SIGNING_KEY_ENV = "FEDSEARCH_SIGNING_KEY"


class SignatureError(IntegrityError):
    """A version is unsigned, signed by another key, or its manifest was altered."""


class UnsignedVersionError(SignatureError):
    """A version has no signature (yet: a deployment's operator signs it after publishing)."""


def generate_signing_key(
    private_path: Path, public_path: Path, *, passphrase: bytes | None = None
) -> Ed25519PublicKey:
    """Create an Ed25519 key pair: private key PEM (mode 0600; encrypted with
    ``passphrase`` if given, by ``cryptography``'s best available scheme) and public key PEM."""
    private_key = Ed25519PrivateKey.generate()
    encryption: serialization.KeySerializationEncryption = (
        serialization.BestAvailableEncryption(passphrase)
        if passphrase
        else serialization.NoEncryption()
    )
    pem = private_key.private_bytes(
        serialization.Encoding.PEM, serialization.PrivateFormat.PKCS8, encryption
    )
    write_owner_only(Path(private_path), pem)
    public_key = private_key.public_key()
    Path(public_path).write_bytes(
        public_key.public_bytes(
            serialization.Encoding.PEM, serialization.PublicFormat.SubjectPublicKeyInfo
        )
    )
    return public_key


def is_encrypted_key(path: Path) -> bool:
    """Whether the private key file at ``path`` needs a passphrase."""
    return b"ENCRYPTED" in read_owner_only(Path(path)).split(b"\n", 1)[0]


def load_private_key(path: Path, passphrase: bytes | None = None) -> Ed25519PrivateKey:
    """Load the signing key (``passphrase`` if it is encrypted); the file must be readable
    by its owner only."""
    try:
        key = serialization.load_pem_private_key(
            read_owner_only(Path(path)), password=passphrase or None
        )
    except TypeError as exc:  # encrypted without a passphrase, or the other way round
        raise SignatureError(f"{path}: {exc}") from exc
    except ValueError as exc:
        raise SignatureError(f"{path}: cannot load the key (wrong passphrase?)") from exc
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
    atomic_write(Path(folder) / SIGNATURE_FILE, json.dumps(record, indent=2))


def signer(private_key: Ed25519PrivateKey) -> Callable[[Path], None]:
    """A ``finalize=`` hook for ``common.security.versions.write_version``: signs the version."""

    def finalize(folder: Path) -> None:
        sign_version(folder, private_key)

    return finalize


def publisher(private_key_path: str | Path = "") -> Callable[[Path], None] | None:
    """The ``finalize=`` hook signing with the key at ``private_key_path``, else the key named
    by ``$FEDSEARCH_SIGNING_KEY`` (set by a simulation's own SuperLink, never by a
    deployment's: there the operator's ``fedsearch deploy run`` signs); None if neither."""
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
        raise UnsignedVersionError(f"{folder}: version is not signed (no {SIGNATURE_FILE})")
    try:
        record = json.loads(path.read_text(encoding="utf-8"))
        signature = base64.b64decode(record["signature"], validate=True)
    except (ValueError, KeyError, TypeError) as exc:
        raise SignatureError(f"{path}: malformed signature file ({exc})") from exc
    if record.get("algorithm") != ALGORITHM:
        raise SignatureError(f"{path}: algorithm {record.get('algorithm')!r}, expected ed25519")
    problem = signature_problem(public_key, signature, manifest_bytes, record.get("key_id"))
    if problem == ALTERED:
        raise SignatureError(
            f"{folder}: signature does not match {MANIFEST} (the manifest was altered)"
        )
    if problem:
        raise SignatureError(f"{folder}: {problem}")


ALTERED = "altered"


def signature_problem(
    public_key: Ed25519PublicKey, signature: bytes, message: bytes, signer_key_id: Any
) -> str | None:
    """None if ``signature`` over ``message`` verifies with ``public_key``; else
    "signed by another key (...)" when ``signer_key_id`` names another key, or ``ALTERED``."""
    try:
        public_key.verify(signature, message)
    except InvalidSignature:
        expected = key_id(public_key)
        if signer_key_id != expected:
            return f"signed by another key (key id {signer_key_id}, trusted key id {expected})"
        return ALTERED
    return None
