"""``fedsearch device sync``: bring the newest published model version to the device and
verify it there.

The source is the search service (``GET /models``, ``/models/{version}/{file}``) or a
registry folder. Versions newer than the device's newest copy are fetched into
``<device>/registry/`` (each into a staging folder first, renamed when complete; a local
copy that no longer verifies is dropped and fetched again); then the
device's own ``TrustedVersions`` (``client.sdk.verified_adapters``: the deployment's
signing key, sha256 of every file, the high-water mark in ``adapter-version.json``)
decides what it holds. A fetched version that does not verify is reported, and the device
keeps the version it had.
"""

from __future__ import annotations

import json
import shutil
from dataclasses import dataclass
from pathlib import Path

import httpx
from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PublicKey

from client.device import Device
from client.sdk import ADAPTER_MARK_FILE, verified_adapters
from common.security.signing import SIGNATURE_FILE, load_public_key, verify_version
from common.security.versions import (
    MANIFEST,
    IntegrityError,
    list_versions,
    read_manifest,
    version_number,
)


@dataclass(frozen=True)
class SyncResult:
    """What a sync fetched, the version the device now holds ("" none) and, if the newest
    was refused, why."""

    fetched: list[str]
    held: str
    refused: str | None


def sync_device(
    device: Device, source: str, *, transport: httpx.BaseTransport | None = None
) -> SyncResult:
    """Fetch the versions of ``source`` (URL or folder) newer than the device's, verify."""
    registry = device.registry_dir
    registry.mkdir(parents=True, exist_ok=True)
    public_key = load_public_key(device.signing_pub)
    have = _drop_bad_copies(registry, public_key)
    if source.startswith(("http://", "https://")):
        fetched = _fetch_http(source, registry, have, transport)
    else:
        fetched = _copy_folder(Path(source), registry, have)
    versions = verified_adapters(
        registry,
        public_key,
        state_file=device.folder / ADAPTER_MARK_FILE,
        base_model=device.base_model(),
    )
    versions.refresh()
    return SyncResult(fetched, versions.version or "", versions.last_error)


def _drop_bad_copies(registry: Path, public_key: Ed25519PublicKey) -> int:
    """Remove local copies that no longer verify (they are fetched again); the number of
    the newest one that does (0: none)."""
    have = 0
    for folder in list_versions(registry):
        try:
            verify_version(folder, public_key)
        except (IntegrityError, OSError, ValueError):
            shutil.rmtree(folder)
            continue
        have = max(have, version_number(folder.name))
    return have


def _copy_folder(source: Path, registry: Path, have: int) -> list[str]:
    if not source.is_dir():
        raise FileNotFoundError(f"registry folder not found: {source}")
    fetched = []
    for folder in list_versions(source):
        if version_number(folder.name) > have:
            names = [MANIFEST, SIGNATURE_FILE, *read_manifest(folder).get("files", {})]
            files = {n: (folder / n).read_bytes() for n in names if (folder / n).is_file()}
            _install(registry, folder.name, files)
            fetched.append(folder.name)
    return fetched


def _fetch_http(
    endpoint: str, registry: Path, have: int, transport: httpx.BaseTransport | None
) -> list[str]:
    fetched = []
    with httpx.Client(base_url=endpoint, timeout=30.0, transport=transport) as http:
        listing = _get(http, "/models").json()
        for name in listing["versions"]:
            if version_number(name) <= have:
                continue
            manifest = _get(http, f"/models/{name}/{MANIFEST}").content
            files = {MANIFEST: manifest}
            signature = http.get(f"/models/{name}/{SIGNATURE_FILE}")
            if signature.status_code == 200:
                files[SIGNATURE_FILE] = signature.content
            listed = _listed_files(manifest)
            files |= {n: _get(http, f"/models/{name}/{n}").content for n in listed}
            _install(registry, name, files)
            fetched.append(name)
    return fetched


def _listed_files(manifest: bytes) -> list[str]:
    names = list(json.loads(manifest).get("files", {}))
    if any("/" in n or n.startswith(".") for n in names):
        raise ValueError(f"manifest lists a file outside its folder: {names}")
    return names


def _get(http: httpx.Client, path: str) -> httpx.Response:
    try:
        response = http.get(path)
    except httpx.HTTPError as exc:
        raise ConnectionError(f"search service unreachable: {exc}") from exc
    if response.status_code != 200:
        raise ConnectionError(f"GET {path}: {response.status_code} {response.text[:200]}")
    return response


def _install(registry: Path, name: str, files: dict[str, bytes]) -> None:
    """Write a version's files into a staging folder, then rename it into place."""
    staging = registry / f".incoming-{name}"
    if staging.exists():
        shutil.rmtree(staging)
    staging.mkdir()
    for file_name, data in files.items():
        (staging / file_name).write_bytes(data)
    staging.rename(registry / name)
