"""The device verifies the app (FAB) before flwr installs or imports any of it.

The FABs here are built by flwr's own builder (what ``flwr run`` sends) from the app that
``fedsearch deploy run`` stages and signs. The pins on flwr 1.41's internals fail here if
an upgrade moves them.
"""

from __future__ import annotations

import json
from pathlib import Path

import pytest
from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PrivateKey
from flwr.cli.build import build_fab_from_disk

from client import app_guard
from client.app_guard import (
    APP_KEY_ENV,
    CLIENTAPP_SCRIPT,
    AppGuardError,
    guard_clientapp,
    trusted_app_key,
    use_guarded_clientapp,
    verified_install,
)
from common.config import REPO_ROOT
from common.security.app_signing import APP_SIGNATURE_FILE, AppSignatureError
from common.security.signing import generate_signing_key
from server.deploy.app_bundle import sign_staged_app, stage_app


@pytest.fixture(scope="module")
def staged(tmp_path_factory) -> tuple[Path, Ed25519PrivateKey]:
    key = Ed25519PrivateKey.generate()
    app = stage_app(REPO_ROOT, tmp_path_factory.mktemp("deploy") / "app")
    sign_staged_app(app, key)
    return app, key


class _Install:
    def __init__(self) -> None:
        self.calls: list[bytes] = []

    def __call__(self, fab, *args, **kwargs) -> Path:
        self.calls.append(fab)
        return Path("installed")


def test_a_signed_fab_as_flwr_builds_it_is_installed(staged):
    app, key = staged
    fab = build_fab_from_disk(app)
    install = _Install()
    assert verified_install(install, key.public_key())(fab, skip_prompt=True) == Path("installed")
    assert install.calls == [fab]


def _rebuilt(app: Path, tmp_path: Path, change) -> bytes:
    copy = tmp_path / "app"
    copy.mkdir()
    for path in app.rglob("*"):
        if path.is_file():
            (copy / path.relative_to(app)).parent.mkdir(parents=True, exist_ok=True)
            (copy / path.relative_to(app)).write_bytes(path.read_bytes())
    change(copy)
    return build_fab_from_disk(copy)


@pytest.mark.parametrize(
    ("change", "reason"),
    [
        (lambda a: (a / APP_SIGNATURE_FILE).unlink(), "not signed"),
        (lambda a: (a / "client" / "app.py").write_text("import os\nos.system('id')\n"), "altered"),
        (lambda a: (a / "client" / "backdoor.py").write_text("print('hi')\n"), "not covered"),
    ],
    ids=["unsigned", "altered", "extra-module"],
)
def test_an_unsigned_or_altered_fab_is_refused_before_install(
    staged, tmp_path, change, reason, caplog
):
    app, key = staged
    fab = _rebuilt(app, tmp_path, change)
    install = _Install()
    with pytest.raises(AppSignatureError, match=reason):
        verified_install(install, key.public_key())(fab, skip_prompt=True)
    assert install.calls == []  # nothing extracted, nothing importable


def test_a_fab_signed_by_another_publisher_is_refused(staged, tmp_path):
    app, _ = staged
    other = Ed25519PrivateKey.generate()
    fab = _rebuilt(app, tmp_path, lambda a: sign_staged_app(a, other))
    install = _Install()
    with pytest.raises(AppSignatureError, match="another key"):
        verified_install(install, Ed25519PrivateKey.generate().public_key())(fab)
    assert install.calls == []


def test_the_signature_lists_the_fab_files_exactly(staged):
    """The staged pyproject.toml is what flwr's builder writes into the FAB, byte for byte."""
    app, _ = staged
    signed = json.loads((app / APP_SIGNATURE_FILE).read_text())["files"]
    assert "pyproject.toml" in signed and "client/app.py" in signed
    assert "deploy" not in {Path(name).parts[0] for name in signed}


def test_flwr_clientapp_runner_is_guarded(monkeypatch, staged):
    """Pin: flwr 1.41's ClientApp runner installs FABs with install_from_fab."""
    from flwr.cli import install
    from flwr.supernode.runtime import run_clientapp as runner

    _, key = staged
    monkeypatch.setattr(runner, "install_from_fab", install.install_from_fab)
    guard_clientapp(key.public_key())
    assert runner.install_from_fab is not install.install_from_fab
    assert runner.install_from_fab.__name__ == "install_verified"
    with pytest.raises(AppSignatureError, match="not a zip"):
        runner.install_from_fab(b"not a fab", skip_prompt=True)
    with pytest.raises(AppGuardError, match="needs updating"):
        guard_clientapp(key.public_key())  # already wrapped: not flwr's function any more


def test_the_superexec_starts_the_guarded_clientapp(monkeypatch, tmp_path):
    """Pin: flwr 1.41's SubprocessExecutor takes the ClientApp command from its table."""
    from flwr.supercore.constant import TaskType
    from flwr.supercore.superexec.executor import subprocess_executor
    from flwr.supercore.superexec.executor.types import ExecutionSpec

    generate_signing_key(tmp_path / "s.key", tmp_path / "s.pub")
    monkeypatch.setitem(subprocess_executor.TASK_TYPE_TO_COMMAND, TaskType.CLIENT_APP, "x")
    monkeypatch.delenv(APP_KEY_ENV, raising=False)
    started: list[list[str]] = []
    monkeypatch.setattr(
        subprocess_executor.subprocess, "Popen", lambda args, **kw: started.append(args)
    )
    script = use_guarded_clientapp(tmp_path / "s.pub")
    spec = ExecutionSpec(
        task_type=TaskType.CLIENT_APP, runtime_api_address="127.0.0.1:9094", token="t",
        insecure=True, root_certificates_path=None, runtime_dependency_install=False,
        parent_pid=None, suppress_output=False, task_id=1,
    )  # fmt: skip
    subprocess_executor.SubprocessExecutor().launch(spec)
    assert started[0][0] == script and Path(script).name == CLIENTAPP_SCRIPT
    assert trusted_app_key() is not None  # exported to the ClientApp processes


def test_no_trusted_key_means_no_app_runs(monkeypatch, tmp_path):
    monkeypatch.delenv(APP_KEY_ENV, raising=False)
    with pytest.raises(AppGuardError, match="no publisher key"):
        trusted_app_key()
    with pytest.raises(FileNotFoundError):
        use_guarded_clientapp(tmp_path / "missing.pub")
    assert app_guard.CLIENTAPP_SCRIPT == "fedsearch-clientapp"
