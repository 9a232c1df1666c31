"""Ed25519 signatures on the Flower app (FAB) sent to devices.

The operator signs the staged app folder (``fedsearch deploy run``): ``APP_SIGNATURE_FILE``
inside it lists the sha256 of every other file and an Ed25519 signature over that list.
Flower packs ``.json`` files, so the signature travels inside the FAB; a device checks the
FAB's files against it, with the deployment's public key, before any of its code is
imported (``client.app_guard``). The signed bytes start with ``APP_DOMAIN``, so an app
signature can never pass for a model-version signature (those sign a manifest, which
starts with ``{``) or the other way round.
"""

from __future__ import annotations

import base64
import hashlib
import io
import json
import zipfile
from collections.abc import Mapping
from pathlib import Path

from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PrivateKey, Ed25519PublicKey

from common.security.signing import ALGORITHM, ALTERED, SignatureError, key_id, signature_problem

APP_SIGNATURE_FILE = "fedsearch-app-signature.json"
APP_DOMAIN = b"fedsearch-app-signature/v1\n"
FAB_INFO_DIR = ".info/"  # Flower's own metadata inside a FAB (hash list), not app files


class AppSignatureError(SignatureError):
    """An app is unsigned, signed by another key, or a file was altered, added or removed."""


def _signed_bytes(files: Mapping[str, str]) -> bytes:
    return APP_DOMAIN + json.dumps(dict(sorted(files.items())), separators=(",", ":")).encode()


def sign_app(folder: Path, private_key: Ed25519PrivateKey) -> dict[str, str]:
    """Write ``folder/APP_SIGNATURE_FILE`` over every other file under ``folder``; returns
    the signed list (relative POSIX path -> sha256)."""
    folder = Path(folder)
    files = {
        path.relative_to(folder).as_posix(): hashlib.sha256(path.read_bytes()).hexdigest()
        for path in sorted(folder.rglob("*"))
        if path.is_file() and path.name != APP_SIGNATURE_FILE
    }
    if not files:
        raise ValueError(f"{folder}: no files to sign")
    record = {
        "algorithm": ALGORITHM,
        "key_id": key_id(private_key.public_key()),
        "files": files,
        "signature": base64.b64encode(private_key.sign(_signed_bytes(files))).decode("ascii"),
    }
    (folder / APP_SIGNATURE_FILE).write_text(json.dumps(record, indent=2), "utf-8")
    return files


def verify_app_files(files: Mapping[str, bytes], public_key: Ed25519PublicKey) -> None:
    """Check an app's files (relative path -> content, the signature file among them)
    against its signature; raises ``AppSignatureError`` naming what is wrong."""
    if APP_SIGNATURE_FILE not in files:
        raise AppSignatureError(f"the app is not signed (no {APP_SIGNATURE_FILE})")
    try:
        record = json.loads(files[APP_SIGNATURE_FILE])
        signed = {str(k): str(v) for k, v in dict(record["files"]).items()}
        signature = base64.b64decode(record["signature"], validate=True)
    except (ValueError, KeyError, TypeError) as exc:
        raise AppSignatureError(f"malformed {APP_SIGNATURE_FILE} ({exc})") from exc
    if record.get("algorithm") != ALGORITHM:
        raise AppSignatureError(f"algorithm {record.get('algorithm')!r}, expected {ALGORITHM}")
    problem = signature_problem(public_key, signature, _signed_bytes(signed), record.get("key_id"))
    if problem == ALTERED:
        raise AppSignatureError(
            f"the app's signature does not match its file list ({APP_SIGNATURE_FILE} altered)"
        )
    if problem:
        raise AppSignatureError(f"the app is {problem}")
    present = {name for name in files if name != APP_SIGNATURE_FILE}
    if extra := sorted(present - signed.keys()):
        raise AppSignatureError(f"files not covered by the app's signature: {extra}")
    if missing := sorted(signed.keys() - present):
        raise AppSignatureError(f"signed files missing from the app: {missing}")
    altered = [
        name for name in sorted(present) if hashlib.sha256(files[name]).hexdigest() != signed[name]
    ]
    if altered:
        raise AppSignatureError(f"files altered since the app was signed: {altered}")


def fab_files(fab: bytes) -> dict[str, bytes]:
    """The app files of a FAB (a zip), Flower's ``.info/`` metadata left out."""
    try:
        with zipfile.ZipFile(io.BytesIO(fab)) as archive:
            return {
                info.filename: archive.read(info)
                for info in archive.infolist()
                if not info.is_dir() and not info.filename.startswith(FAB_INFO_DIR)
            }
    except zipfile.BadZipFile as exc:
        raise AppSignatureError(f"the FAB is not a zip archive ({exc})") from exc


def verify_fab(fab: bytes, public_key: Ed25519PublicKey) -> int:
    """Verify a FAB's app files against its signature; returns how many files it holds."""
    files = fab_files(fab)
    verify_app_files(files, public_key)
    return len(files) - 1
