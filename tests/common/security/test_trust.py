"""TrustedVersions: only newer, verified versions are swapped in; refusals keep the held one."""

from __future__ import annotations

import os
import threading
import time
from pathlib import Path

import pytest

from common.security.signing import generate_signing_key, load_private_key, load_public_key, signer
from common.security.trust import TrustedVersions
from common.security.versions import LATEST, write_version

PAYLOAD = "adapter.safetensors"


@pytest.fixture()
def keys(tmp_path: Path):
    generate_signing_key(tmp_path / "sign.key", tmp_path / "sign.pub")
    return load_private_key(tmp_path / "sign.key"), load_public_key(tmp_path / "sign.pub")


@pytest.fixture()
def other_private_key(tmp_path: Path):
    generate_signing_key(tmp_path / "other.key", tmp_path / "other.pub")
    return load_private_key(tmp_path / "other.key")


def publish(root: Path, private_key, payload: bytes) -> Path:
    finalize = signer(private_key) if private_key is not None else None
    return write_version(
        root, lambda f: (f / PAYLOAD).write_bytes(payload), {"round": 1}, finalize=finalize
    )


class Loads:
    """A ``load`` that records which folders it was handed."""

    def __init__(self) -> None:
        self.folders: list[str] = []

    def __call__(self, folder: Path, manifest: dict) -> bytes:
        self.folders.append(folder.name)
        return (folder / PAYLOAD).read_bytes()


def point_latest_at(root: Path, name: str) -> None:
    (root / LATEST).write_text(name, encoding="utf-8")


def test_newer_versions_are_swapped_in(tmp_path: Path, keys) -> None:
    root, loads = tmp_path / "reg", Loads()
    versions = TrustedVersions(root, keys[1], loads)
    assert versions.refresh() is False and versions.value is None  # empty registry
    assert versions.version is None and versions.last_error is None

    publish(root, keys[0], b"weights-1")
    assert versions.refresh() is True
    assert (versions.version, versions.value) == ("v0001", b"weights-1")
    assert versions.held.manifest["round"] == 1 and PAYLOAD in versions.held.manifest["files"]

    publish(root, keys[0], b"weights-2")
    assert versions.refresh() is True
    assert (versions.version, versions.value) == ("v0002", b"weights-2")
    assert loads.folders == ["v0001", "v0002"]


def test_equal_and_older_versions_are_not_swapped_in(tmp_path: Path, keys) -> None:
    root, loads = tmp_path / "reg", Loads()
    publish(root, keys[0], b"weights-1")
    publish(root, keys[0], b"weights-2")
    versions = TrustedVersions(root, keys[1], loads)
    assert versions.refresh() is True and versions.version == "v0002"

    assert versions.refresh() is False  # the latest is the one held: nothing to do
    assert versions.last_error is None and loads.folders == ["v0002"]

    point_latest_at(root, "v0001")  # a rollback
    assert versions.refresh() is False
    assert (versions.version, versions.value) == ("v0002", b"weights-2")
    assert "v0001" in versions.last_error and "not newer" in versions.last_error
    assert loads.folders == ["v0002"]


def test_a_refused_folder_is_remembered_and_the_held_version_kept(tmp_path: Path, keys) -> None:
    root, loads = tmp_path / "reg", Loads()
    publish(root, keys[0], b"weights-1")
    versions = TrustedVersions(root, keys[1], loads)
    assert versions.refresh() is True

    bad = publish(root, keys[0], b"weights-2")
    (bad / PAYLOAD).write_bytes(b"weights-evil")
    assert versions.refresh() is False
    assert (versions.version, versions.value) == ("v0001", b"weights-1")
    assert "v0002" in versions.last_error and "sha256" in versions.last_error

    (bad / PAYLOAD).write_bytes(b"weights-2")  # repaired in place: still not trusted again
    assert versions.refresh() is False and versions.version == "v0001"
    assert loads.folders == ["v0001"]  # a refused version is never handed to load()

    publish(root, keys[0], b"weights-3")
    assert versions.refresh() is True
    assert (versions.version, versions.value, versions.last_error) == ("v0003", b"weights-3", None)


def test_a_version_signed_by_another_key_is_refused(tmp_path: Path, keys, other_private_key):
    root = tmp_path / "reg"
    publish(root, keys[0], b"weights-1")
    versions = TrustedVersions(root, keys[1], Loads())
    assert versions.refresh() is True
    publish(root, other_private_key, b"weights-2")
    assert versions.refresh() is False
    assert versions.value == b"weights-1" and "another key" in versions.last_error
    publish(root, None, b"weights-3")
    assert versions.refresh() is False and "not signed" in versions.last_error


def test_a_folder_whose_manifest_names_another_version_is_refused(tmp_path: Path, keys) -> None:
    root = tmp_path / "reg"
    publish(root, keys[0], b"weights-1")
    versions = TrustedVersions(root, keys[1], Loads())
    assert versions.refresh() is True
    publish(root, keys[0], b"weights-2")
    os.rename(root / "v0001", root / "v0003")  # an old signed version under a new number
    point_latest_at(root, "v0003")
    assert versions.refresh() is False
    assert versions.version == "v0001"
    assert "manifest is of version 'v0001', not v0003" in versions.last_error


def test_a_latest_pointer_that_is_not_a_version_name_is_refused(tmp_path: Path, keys) -> None:
    root = tmp_path / "reg"
    folder = publish(root, keys[0], b"weights-1")
    os.rename(folder, root / "newest")
    point_latest_at(root, "newest")
    versions = TrustedVersions(root, keys[1], Loads())
    assert versions.refresh() is False and versions.value is None
    assert "not of the form v0001" in versions.last_error


def test_without_a_key_only_the_sha256_of_every_file_is_checked(tmp_path: Path) -> None:
    root = tmp_path / "reg"
    publish(root, None, b"weights-1")  # unsigned
    versions = TrustedVersions(root, None, Loads())
    assert versions.refresh() is True and versions.value == b"weights-1"
    bad = publish(root, None, b"weights-2")
    (bad / PAYLOAD).write_bytes(b"weights-evil")
    assert versions.refresh() is False
    assert versions.value == b"weights-1" and "sha256" in versions.last_error


def test_a_version_load_refuses_is_remembered(tmp_path: Path) -> None:
    root, calls = tmp_path / "reg", []

    def load(folder: Path, manifest: dict) -> bytes:
        calls.append(folder.name)
        raise ValueError("weights of the wrong shape")

    publish(root, None, b"weights-1")
    versions = TrustedVersions(root, None, load)
    assert versions.refresh() is False and versions.refresh() is False
    assert calls == ["v0001"] and "wrong shape" in versions.last_error


def test_on_swap_gets_each_new_value(tmp_path: Path) -> None:
    root, swapped = tmp_path / "reg", []
    versions = TrustedVersions(root, None, Loads(), on_swap=swapped.append)
    for payload in (b"weights-1", b"weights-2"):
        publish(root, None, payload)
        versions.refresh()
        versions.refresh()
    assert swapped == [b"weights-1", b"weights-2"]


def test_concurrent_refreshes_load_a_version_once(tmp_path: Path) -> None:
    root, loads = tmp_path / "reg", []

    def slow_load(folder: Path, manifest: dict) -> str:
        loads.append(folder.name)
        time.sleep(0.1)
        return folder.name

    publish(root, None, b"weights-1")
    versions = TrustedVersions(root, None, slow_load)
    results: list[bool] = []
    threads = [
        threading.Thread(target=lambda: results.append(versions.refresh())) for _ in range(8)
    ]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join()
    assert sorted(results) == [False] * 7 + [True]
    assert loads == ["v0001"] and versions.value == "v0001"
