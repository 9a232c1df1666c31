import hashlib
import json
import os
import stat
from pathlib import Path

import pytest

from common.security.keyfiles import KeyFileError
from common.security.signing import (
    SIGNATURE_FILE,
    SIGNING_KEY_ENV,
    SignatureError,
    generate_signing_key,
    load_private_key,
    load_public_key,
    publisher,
    signer,
    verify_version,
)
from common.security.versions import MANIFEST, IntegrityError, write_version


@pytest.fixture()
def keys(tmp_path: Path):
    generate_signing_key(tmp_path / "sign.key", tmp_path / "sign.pub")
    return load_private_key(tmp_path / "sign.key"), load_public_key(tmp_path / "sign.pub")


def _publish(root: Path, private_key, payload: bytes = b"weights-1") -> Path:
    def write(folder: Path) -> None:
        (folder / "adapter.safetensors").write_bytes(payload)

    finalize = signer(private_key) if private_key is not None else None
    return write_version(root, write, {"round": 1}, finalize=finalize)


def test_private_key_is_owner_only_and_refused_when_open(tmp_path: Path, keys) -> None:
    mode = stat.S_IMODE((tmp_path / "sign.key").stat().st_mode)
    assert mode == 0o600
    os.chmod(tmp_path / "sign.key", 0o644)
    with pytest.raises(KeyFileError, match="too open"):
        load_private_key(tmp_path / "sign.key")


def test_signed_version_verifies(tmp_path: Path, keys) -> None:
    folder = _publish(tmp_path / "reg", keys[0])
    assert (folder / SIGNATURE_FILE).is_file()
    manifest = verify_version(folder, keys[1])
    assert manifest["round"] == 1 and "adapter.safetensors" in manifest["files"]


def test_tampered_file_is_refused(tmp_path: Path, keys) -> None:
    folder = _publish(tmp_path / "reg", keys[0])
    (folder / "adapter.safetensors").write_bytes(b"weights-evil")
    with pytest.raises(IntegrityError, match="sha256"):
        verify_version(folder, keys[1])


def test_tampered_manifest_is_refused(tmp_path: Path, keys) -> None:
    folder = _publish(tmp_path / "reg", keys[0])
    (folder / "adapter.safetensors").write_bytes(b"weights-evil")
    manifest = json.loads((folder / MANIFEST).read_text())

    manifest["files"]["adapter.safetensors"] = hashlib.sha256(b"weights-evil").hexdigest()
    (folder / MANIFEST).write_text(json.dumps(manifest, indent=2, sort_keys=True))
    with pytest.raises(SignatureError, match="manifest was altered"):
        verify_version(folder, keys[1])


def test_wrong_key_is_refused(tmp_path: Path, keys) -> None:
    generate_signing_key(tmp_path / "other.key", tmp_path / "other.pub")
    folder = _publish(tmp_path / "reg", load_private_key(tmp_path / "other.key"))
    with pytest.raises(SignatureError, match="signed by another key"):
        verify_version(folder, keys[1])


def test_unsigned_is_refused(tmp_path: Path, keys) -> None:
    folder = _publish(tmp_path / "reg", None)
    with pytest.raises(SignatureError, match="not signed"):
        verify_version(folder, keys[1])


def test_unlisted_file_is_refused(tmp_path: Path, keys) -> None:
    folder = _publish(tmp_path / "reg", keys[0])
    (folder / "extra.pkl").write_bytes(b"x")
    with pytest.raises(IntegrityError, match="not listed"):
        verify_version(folder, keys[1])


def test_publisher_signs_with_the_key_named_by_env(tmp_path: Path, keys, monkeypatch) -> None:
    monkeypatch.delenv(SIGNING_KEY_ENV, raising=False)
    assert publisher() is None
    monkeypatch.setenv(SIGNING_KEY_ENV, str(tmp_path / "sign.key"))
    folder = write_version(
        tmp_path / "reg", lambda f: (f / "a.bin").write_bytes(b"x"), {}, finalize=publisher()
    )
    assert verify_version(folder, keys[1])["files"] == {"a.bin": hashlib.sha256(b"x").hexdigest()}
