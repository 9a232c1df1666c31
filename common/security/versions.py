"""Versioned artifact folders: ``<root>/v0001/`` with files and a ``manifest.json``.

A version is written into a temporary folder and renamed into place in one step, so a
reader never sees half a version. The manifest records the sha256 of every file;
``verify_files`` checks them before anything is loaded. ``<root>/LATEST`` names the newest.
"""

from __future__ import annotations

import hashlib
import json
import os
import re
import shutil
import tempfile
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

from common.files import atomic_write

MANIFEST = "manifest.json"
LATEST = "LATEST"
_VERSION_RE = re.compile(r"v(\d{4,})")


class IntegrityError(RuntimeError):
    """A version folder is incomplete or a file does not match its recorded sha256."""


def sha256_file(path: Path) -> str:
    digest = hashlib.sha256()
    with path.open("rb") as fh:
        for chunk in iter(lambda: fh.read(1 << 20), b""):
            digest.update(chunk)
    return digest.hexdigest()


def version_number(name: str) -> int:
    """The number of a version name: ``version_number("v0007") == 7``.

    Raises ``ValueError`` for anything that is not ``v`` and at least four digits.
    """
    match = _VERSION_RE.fullmatch(name)
    if match is None:
        raise ValueError(f"version {name!r} is not of the form v0001")
    return int(match.group(1))


def list_versions(root: Path) -> list[Path]:
    """Complete version folders under ``root``, oldest first."""
    if not root.is_dir():
        return []
    found = [
        p for p in root.iterdir() if _VERSION_RE.fullmatch(p.name) and (p / MANIFEST).is_file()
    ]
    return sorted(found, key=lambda p: version_number(p.name))


def latest_version(root: Path) -> Path | None:
    """The folder named by ``<root>/LATEST``, else the highest-numbered version, else None."""
    pointer = root / LATEST
    if pointer.is_file():
        candidate = root / pointer.read_text(encoding="utf-8").strip()
        if (candidate / MANIFEST).is_file():
            return candidate
    versions = list_versions(root)
    return versions[-1] if versions else None


def write_version(
    root: Path,
    write_files: Callable[[Path], None],
    manifest: dict[str, Any],
    *,
    finalize: Callable[[Path], None] | None = None,
) -> Path:
    """Create the next version folder under ``root``.

    ``write_files(folder)`` writes the payload; the manifest gets ``version``,
    ``created_at`` and ``files`` (name -> sha256) added. ``finalize(folder)`` runs after the
    manifest is written (for example to sign it) and before the folder is published.
    """
    root.mkdir(parents=True, exist_ok=True)
    staging = Path(tempfile.mkdtemp(prefix=".staging-", dir=root))
    try:
        write_files(staging)
        files = {
            p.relative_to(staging).as_posix(): sha256_file(p)
            for p in sorted(staging.rglob("*"))
            if p.is_file()
        }
        versions = list_versions(root)
        number = version_number(versions[-1].name) + 1 if versions else 1
        name = f"v{number:04d}"
        full = {**manifest, "version": name, "created_at": time.time(), "files": files}
        (staging / MANIFEST).write_text(json.dumps(full, indent=2, sort_keys=True), "utf-8")
        if finalize is not None:
            finalize(staging)
        target = root / name
        os.replace(staging, target)
    except BaseException:
        shutil.rmtree(staging, ignore_errors=True)
        raise
    atomic_write(root / LATEST, name)
    return target


def read_manifest(folder: Path) -> dict[str, Any]:
    path = folder / MANIFEST
    if not path.is_file():
        raise IntegrityError(f"{folder}: no {MANIFEST}")
    try:
        manifest: dict[str, Any] = json.loads(path.read_text(encoding="utf-8"))
    except json.JSONDecodeError as exc:
        raise IntegrityError(f"{path}: not valid JSON ({exc})") from exc
    return manifest


def verify_files(folder: Path) -> dict[str, Any]:
    """Check every file listed in the manifest against its sha256; return the manifest."""
    manifest = read_manifest(folder)
    files = manifest.get("files")
    if not isinstance(files, dict) or not files:
        raise IntegrityError(f"{folder}: manifest lists no files")
    for name, expected in files.items():
        path = folder / name
        if not path.is_file():
            raise IntegrityError(f"{folder}: {name} is missing")
        if sha256_file(path) != expected:
            raise IntegrityError(f"{folder}: {name} does not match its sha256")
    return manifest
