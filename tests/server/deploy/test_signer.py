"""The signing key stays with the operator: the SuperLink (and every ServerApp it launches)
never sees it; ``deploy run`` signs the app and its own run's versions."""

from __future__ import annotations

import json
import os
import threading
from pathlib import Path

import pytest

from common.cli import main
from common.security.app_signing import APP_SIGNATURE_FILE, verify_app_files
from common.security.signing import (
    SIGNATURE_FILE,
    SIGNING_KEY_ENV,
    SignatureError,
    load_public_key,
    verify_version,
)
from common.security.trust import TrustedVersions
from common.security.versions import write_version
from server.deploy import commands
from server.deploy.layout import Deployment, superlink_command
from server.deploy.signer import (
    PASSPHRASE_ENV,
    RunSigner,
    operator_key,
    run_target,
    sign_while,
)
from tests.server.deploy.test_app_bundle import REPO


@pytest.fixture()
def dep(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Deployment:
    monkeypatch.delenv(PASSPHRASE_ENV, raising=False)
    assert main(["deploy", "init", "--dir", str(tmp_path / "deploy")]) == 0
    return Deployment(tmp_path / "deploy")


def _version(registry: Path, run: str, payload: bytes = b"w") -> Path:
    return write_version(registry, lambda f: (f / "a.bin").write_bytes(payload), {"run": run})


def test_the_superlink_environment_names_no_signing_key(dep):
    env = dep.env()
    assert SIGNING_KEY_ENV not in env
    key_dir = str(dep.signing_key.parent)
    assert not [k for k, v in env.items() if key_dir in v and k != "PATH"]
    assert not [part for part in superlink_command(dep) if key_dir in part]


def test_the_signer_signs_its_own_run_only_and_waits_for_other_runs(dep, tmp_path):
    registry = tmp_path / "registry"
    ours, theirs = _version(registry, "run-7"), _version(registry, "run-8")
    active = [["8"]]
    signer = RunSigner(operator_key(dep.signing_key), registry, "run-7", lambda: active[0])
    assert signer.sign_pending() == [] and "8 also active" in signer.held_back
    active[0] = []
    assert signer.sign_pending() == ["v0001"]
    public = load_public_key(dep.signing_pub)
    verify_version(ours, public)
    assert not (theirs / SIGNATURE_FILE).exists()
    altered = _version(registry, "run-7")
    (altered / "a.bin").write_bytes(b"swapped after publishing")
    assert signer.sign_pending() == [] and "does not match" in signer.held_back
    assert signer.sign_pending() == []  # nothing signed twice


def test_an_unsigned_version_is_served_once_the_operator_signs_it(dep, tmp_path):
    registry = tmp_path / "registry"
    folder = _version(registry, "run-1")
    held = TrustedVersions(registry, load_public_key(dep.signing_pub), lambda f, m: m["run"])
    assert not held.refresh() and "not signed" in (held.last_error or "")
    RunSigner(operator_key(dep.signing_key), registry, "run-1").sign_pending()
    assert held.refresh() and held.version == folder.name


def test_the_run_target_is_where_the_serverapp_publishes(tmp_path):
    config_file = tmp_path / "run.toml"
    config_file.write_text(f'[paths]\nwork_dir = "{tmp_path / "work"}"\n')
    run_config = f'num-devices=3 config-file="{config_file}" run-dir="{tmp_path / "r9"}"'
    assert run_target(REPO, run_config, 4) == (tmp_path / "work" / "registry", "r9")
    assert run_target(REPO, f'config-file="{config_file}"', 4)[1] == "run-4"


def test_an_encrypted_key_needs_its_passphrase(tmp_path, monkeypatch):
    monkeypatch.setenv(PASSPHRASE_ENV, "correct horse")
    assert main(["deploy", "init", "--dir", str(tmp_path / "d")]) == 0
    dep = Deployment(tmp_path / "d")
    assert b"ENCRYPTED" in dep.signing_key.read_bytes()
    assert operator_key(dep.signing_key) is not None
    monkeypatch.setenv(PASSPHRASE_ENV, "wrong")
    with pytest.raises(SignatureError, match="wrong passphrase"):
        operator_key(dep.signing_key)
    monkeypatch.delenv(PASSPHRASE_ENV)
    monkeypatch.setattr("sys.stdin", open(os.devnull))  # noqa: SIM115 - not a terminal
    with pytest.raises(SignatureError, match=PASSPHRASE_ENV):
        operator_key(dep.signing_key)


def test_deploy_run_signs_the_app_and_the_versions_of_its_run(dep, tmp_path, monkeypatch):
    """``flwr run`` replaced by a stand-in that starts run 5 and publishes while it runs."""
    config_file = tmp_path / "run.toml"
    config_file.write_text(f'[paths]\nwork_dir = "{tmp_path / "work"}"\n')
    registry = tmp_path / "work" / "registry"
    run_config = f'num-devices=3 config-file="{config_file}" run-dir="{tmp_path / "run"}"'
    monkeypatch.setattr("server.deploy.signer.POLL_S", 0.05)
    monkeypatch.setattr(commands, "active_runs", lambda d: [5])
    monkeypatch.setattr(commands, "run_status", lambda d, r: "finished:completed")

    def flwr_run(command, env, *, on_line=None, **kw):
        assert SIGNING_KEY_ENV not in env
        on_line("Successfully started run 5\n")
        _version(registry, "run")  # the ServerApp publishes, unsigned
        _version(registry, "someone-else")
        for _ in range(100):
            if (registry / "v0001" / SIGNATURE_FILE).exists():
                break
            threading.Event().wait(0.05)
        _version(registry, "run")  # the last round, signed after the run ends
        return 0, "Successfully started run 5\n"

    monkeypatch.setattr(commands, "run_passing_through", flwr_run)
    argv = ["deploy", "run", "--dir", str(dep.root), "--run-config", run_config]
    assert main(argv) == 0
    public = load_public_key(dep.signing_pub)
    for name in ("v0001", "v0003"):
        verify_version(registry / name, public)
    assert not (registry / "v0002" / SIGNATURE_FILE).exists()
    app = dep.root / "app"
    files = {p.relative_to(app).as_posix(): p.read_bytes() for p in app.rglob("*") if p.is_file()}
    verify_app_files(files, public)
    assert json.loads(files[APP_SIGNATURE_FILE])["files"]


def test_sign_while_signs_once_more_after_the_run(dep, tmp_path):
    done = threading.Event()
    done.set()
    registry = tmp_path / "registry"
    _version(registry, "run-2")
    said: list[str] = []
    signer = RunSigner(operator_key(dep.signing_key), registry, "run-2")
    sign_while(signer, done, said.append)
    assert said == ["signed v0001"]


def test_deploy_sign_signs_a_run_started_without_streaming(dep, tmp_path, monkeypatch, capsys):
    config_file = tmp_path / "run.toml"
    config_file.write_text(f'[paths]\nwork_dir = "{tmp_path / "work"}"\n')
    registry = tmp_path / "work" / "registry"
    (dep.root / "app").mkdir()
    (dep.root / "app" / "pyproject.toml").write_bytes((REPO / "pyproject.toml").read_bytes())
    _version(registry, "run-3")
    monkeypatch.setattr(commands, "active_runs", lambda d: [])
    run_config = f'num-devices=3 config-file="{config_file}"'
    argv = ["deploy", "sign", "--dir", str(dep.root), "--run-id", "3", "--run-config", run_config]
    assert main(argv) == 0
    assert "run 3: signed v0001" in capsys.readouterr().out
    verify_version(registry / "v0001", load_public_key(dep.signing_pub))
