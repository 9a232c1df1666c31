"""App (FAB) signatures: every file covered, one key trusted, domain-separated."""

from __future__ import annotations

import base64
import json
from pathlib import Path

import pytest
from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PrivateKey

from common.security.app_signing import (
    APP_SIGNATURE_FILE,
    AppSignatureError,
    sign_app,
    verify_app_files,
)
from common.security.signing import SignatureError, key_id, verify_version
from common.security.versions import write_version


@pytest.fixture()
def key() -> Ed25519PrivateKey:
    return Ed25519PrivateKey.generate()


def _app(folder: Path, key: Ed25519PrivateKey) -> dict[str, bytes]:
    (folder / "pkg").mkdir(parents=True)
    (folder / "pyproject.toml").write_text("[project]\nname = 'x'\n")
    (folder / "pkg" / "mod.py").write_text("VALUE = 1\n")
    sign_app(folder, key)
    return {
        p.relative_to(folder).as_posix(): p.read_bytes() for p in folder.rglob("*") if p.is_file()
    }


def test_a_signed_app_verifies_and_lists_every_file(tmp_path, key):
    files = _app(tmp_path, key)
    verify_app_files(files, key.public_key())
    signed = json.loads(files[APP_SIGNATURE_FILE])["files"]
    assert sorted(signed) == ["pkg/mod.py", "pyproject.toml"]


@pytest.mark.parametrize(
    ("change", "reason"),
    [
        (lambda f: f.update({"pkg/mod.py": b"import os; os.system('x')\n"}), "altered"),
        (lambda f: f.update({"pkg/evil.py": b"print(1)\n"}), "not covered"),
        (lambda f: f.pop("pkg/mod.py"), "missing"),
        (lambda f: f.pop(APP_SIGNATURE_FILE), "not signed"),
    ],
    ids=["tampered", "extra", "removed", "unsigned"],
)
def test_a_changed_app_is_refused_naming_why(tmp_path, key, change, reason):
    files = _app(tmp_path, key)
    change(files)
    with pytest.raises(AppSignatureError, match=reason):
        verify_app_files(files, key.public_key())


def test_an_app_signed_by_another_key_is_refused(tmp_path, key):
    files = _app(tmp_path, Ed25519PrivateKey.generate())
    with pytest.raises(AppSignatureError, match="another key"):
        verify_app_files(files, key.public_key())


def test_an_edited_file_list_breaks_the_signature(tmp_path, key):
    files = _app(tmp_path, key)
    record = json.loads(files[APP_SIGNATURE_FILE])
    record["files"]["pkg/evil.py"] = record["files"]["pkg/mod.py"]
    files[APP_SIGNATURE_FILE] = json.dumps(record).encode()
    files["pkg/evil.py"] = files["pkg/mod.py"]
    with pytest.raises(AppSignatureError, match="does not match its file list"):
        verify_app_files(files, key.public_key())


def test_app_and_version_signatures_do_not_pass_for_each_other(tmp_path, key):
    """The same key signs model versions and apps; neither signature passes for the other."""
    version = write_version(tmp_path / "reg", lambda f: (f / "a.bin").write_bytes(b"w"), {})
    sign_app(version, key)  # an app signature over the version's files
    app_signature = json.loads((version / APP_SIGNATURE_FILE).read_text())["signature"]
    (version / APP_SIGNATURE_FILE).unlink()
    record = {
        "algorithm": "ed25519",
        "key_id": key_id(key.public_key()),
        "signature": app_signature,
    }
    (version / "signature.json").write_text(json.dumps(record))
    with pytest.raises(SignatureError, match="does not match"):
        verify_version(version, key.public_key())

    listing = {"a.bin": "0" * 64}
    as_version = base64.b64encode(key.sign(json.dumps(listing).encode())).decode()
    files = {
        "a.bin": b"w",
        APP_SIGNATURE_FILE: json.dumps(
            {
                "algorithm": "ed25519",
                "key_id": key_id(key.public_key()),
                "files": listing,
                "signature": as_version,
            }
        ).encode(),
    }
    with pytest.raises(AppSignatureError, match="does not match its file list"):
        verify_app_files(files, key.public_key())
