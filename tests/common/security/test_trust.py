"""TrustedVersions: only newer, verified versions are swapped in; refusals keep the held one."""

from __future__ import annotations

import os
import shutil
import threading
import time
from pathlib import Path

import pytest

from common.security.high_water import load_mark
from common.security.signing import generate_signing_key, load_private_key, load_public_key, signer
from common.security.trust import TrustedVersions
from common.security.versions import LATEST, IntegrityError, write_version

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

    point_latest_at(root, "v0001")  # LATEST is a hint, not an order to go back
    assert versions.refresh() is False
    assert (versions.version, versions.value, versions.last_error) == ("v0002", b"weights-2", None)
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
    root, loads = tmp_path / "reg", Loads()
    publish(root, keys[0], b"weights-1")
    publish(root, keys[0], b"weights-2")
    os.rename(root / "v0001", root / "v0003")  # an old signed version under a new number
    point_latest_at(root, "v0003")
    versions = TrustedVersions(root, keys[1], loads)
    assert versions.refresh() is True
    assert versions.version == "v0002" and loads.folders == ["v0002"]  # v0003 refused first
    os.remove(root / "v0002" / PAYLOAD)  # now nothing else is valid
    assert versions.refresh() is False
    assert versions.version == "v0002" and "v0002 no longer verifies" in versions.last_error


def test_the_newest_valid_version_is_served_whatever_latest_names(tmp_path: Path, keys) -> None:
    root = tmp_path / "reg"
    publish(root, keys[0], b"weights-1")
    publish(root, keys[0], b"weights-2")
    point_latest_at(root, "v0001")
    folder = publish(root, keys[0], b"weights-3")
    os.rename(folder, root / "newest")  # not a version name: never considered
    point_latest_at(root, "newest")
    versions = TrustedVersions(root, keys[1], Loads())
    assert versions.refresh() is True and versions.version == "v0002"


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


def test_copy_replay_of_an_old_signed_version_is_refused_and_newer_ones_still_taken(
    tmp_path: Path, keys
) -> None:
    root, mark = tmp_path / "reg", tmp_path / "mark.json"
    publish(root, keys[0], b"weights-1")
    publish(root, keys[0], b"weights-2")
    versions = TrustedVersions(root, keys[1], Loads(), state_file=mark)
    assert versions.refresh() is True and versions.version == "v0002"
    shutil.copytree(root / "v0001", root / "v0003")  # a validly signed v0001 under v0003
    point_latest_at(root, "v0003")
    assert versions.refresh() is False and versions.value == b"weights-2"
    assert "manifest is of version 'v0001', not v0003" in versions.last_error
    publish(root, keys[0], b"weights-4")  # the genuine next version is not refused as older
    assert versions.refresh() is True and (versions.version, versions.value) == (
        "v0004",
        b"weights-4",
    )
    assert versions.mark.highest == "v0004"


def test_a_downgraded_registry_is_not_followed_even_after_a_restart(tmp_path: Path, keys):
    root, mark = tmp_path / "reg", tmp_path / "mark.json"
    publish(root, keys[0], b"weights-1")
    publish(root, keys[0], b"weights-2")
    first = TrustedVersions(root, keys[1], Loads(), state_file=mark)
    assert first.refresh() is True and first.version == "v0002"
    shutil.rmtree(root / "v0002")  # the registry is rolled back to v0001
    point_latest_at(root, "v0001")
    assert first.refresh() is False and first.version == "v0002"
    assert "v0002 no longer verifies" in first.last_error

    restarted = TrustedVersions(root, keys[1], Loads(), state_file=mark)  # a restart
    assert restarted.refresh() is False and restarted.value is None
    assert "refused v0002" in restarted.last_error
    assert "only by an explicit rollback" in restarted.last_error


def test_after_a_restart_the_newest_still_valid_version_is_served(tmp_path: Path, keys) -> None:
    root, mark = tmp_path / "reg", tmp_path / "mark.json"
    publish(root, keys[0], b"weights-1")
    publish(root, keys[0], b"weights-2")
    versions = TrustedVersions(root, keys[1], Loads(), state_file=mark)
    assert versions.refresh() is True
    bad = publish(root, keys[0], b"weights-3")
    (bad / PAYLOAD).write_bytes(b"weights-evil")  # v0003 tampered: never accepted
    assert versions.refresh() is False and versions.version == "v0002"
    restarted = TrustedVersions(root, keys[1], Loads(), state_file=mark)
    assert restarted.refresh() is True
    assert (restarted.version, restarted.value) == ("v0002", b"weights-2")
    assert load_mark(mark).highest == "v0002" and load_mark(mark).pinned is None


def test_tampering_with_the_served_version_is_detected_on_reload(tmp_path: Path, keys) -> None:
    root = tmp_path / "reg"
    served = publish(root, keys[0], b"weights-1")
    versions = TrustedVersions(root, keys[1], Loads())
    assert versions.refresh() is True and versions.last_error is None
    (served / PAYLOAD).write_bytes(b"weights-evil")
    assert versions.refresh() is False
    assert versions.value == b"weights-1"  # the copy verified at load time
    assert "served version v0001 no longer verifies" in versions.last_error


def test_rollback_only_by_the_operator_and_it_survives_a_restart(tmp_path: Path, keys) -> None:
    root, mark = tmp_path / "reg", tmp_path / "mark.json"
    for payload in (b"weights-1", b"weights-2", b"weights-3"):
        publish(root, keys[0], payload)
    versions = TrustedVersions(root, keys[1], Loads(), state_file=mark)
    assert versions.refresh() is True and versions.version == "v0003"
    with pytest.raises(IntegrityError, match="is the version served"):
        versions.rollback_to("v0003")
    with pytest.raises(IntegrityError, match="above the highest accepted"):
        versions.rollback_to("v0009")
    shutil.rmtree(root / "v0002")
    with pytest.raises(IntegrityError, match="no version v0002"):
        versions.rollback_to("v0002")
    versions.rollback_to("v0001")
    assert (versions.version, versions.value) == ("v0001", b"weights-1")
    assert versions.refresh() is False and versions.version == "v0001"  # v0002/3 not retaken
    assert (load_mark(mark).highest, load_mark(mark).pinned) == ("v0003", "v0001")

    restarted = TrustedVersions(root, keys[1], Loads(), state_file=mark)
    assert restarted.refresh() is True and restarted.version == "v0001"
    publish(root, keys[0], b"weights-4")  # a new version above the mark ends the pin
    assert restarted.refresh() is True and restarted.version == "v0004"
    assert (load_mark(mark).highest, load_mark(mark).pinned) == ("v0004", None)


def test_a_damaged_mark_file_is_an_integrity_error(tmp_path: Path) -> None:
    mark = tmp_path / "mark.json"
    mark.write_text('{"format": "fedsearch-version-mark/1", "highest": "../v1"}')
    with pytest.raises(IntegrityError, match="damaged version mark"):
        TrustedVersions(tmp_path / "reg", None, Loads(), state_file=mark)


def test_after_a_restart_only_the_same_version_at_the_mark_is_served(tmp_path: Path, keys):
    root, mark = tmp_path / "reg", tmp_path / "mark.json"
    publish(root, keys[0], b"weights-1")
    assert TrustedVersions(root, keys[1], Loads(), state_file=mark).refresh() is True
    shutil.rmtree(root / "v0001")
    publish(root, keys[0], b"weights-other")  # another validly signed "v0001"
    restarted = TrustedVersions(root, keys[1], Loads(), state_file=mark)
    assert restarted.refresh() is False and restarted.value is None
    assert "not the v0001 accepted before" in restarted.last_error
