"""The device runs only ClientApp code signed by the deployment's publisher key.

flwr 1.41's ``flwr-clientapp`` pulls the run's FAB from the SuperNode, installs it with
``install_from_fab`` (imported into ``flwr.supernode.runtime.run_clientapp``) and only then
imports the ClientApp from the installed folder. ``fedsearch-clientapp``
(``run_guarded_clientapp``) is ``flwr-clientapp`` with that one function wrapped: the
FAB's files are first checked against the app signature inside it
(``common.security.app_signing``) with the key named by ``$FEDSEARCH_TRUSTED_APP_KEY``
(the device's ``signing.pub``). An unsigned, altered or foreign FAB raises before it is
installed, so none of its code is ever imported; Flower's ClientApp runner logs the error
and reports the task failed, and the run fails on this device.

``use_guarded_clientapp`` makes the device's SuperExec (``client.superexec``) start
``fedsearch-clientapp`` instead of ``flwr-clientapp``. Both hooks depend on flwr 1.41's
internals (pinned); ``tests/client/test_app_guard.py`` fails if an upgrade moves them.
"""

from __future__ import annotations

import os
import sys
from collections.abc import Callable
from logging import ERROR, INFO
from pathlib import Path
from typing import Any

from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PublicKey

from common.security.app_signing import AppSignatureError, verify_fab
from common.security.signing import SignatureError, key_id, load_public_key

APP_KEY_ENV = "FEDSEARCH_TRUSTED_APP_KEY"
CLIENTAPP_SCRIPT = "fedsearch-clientapp"


class AppGuardError(RuntimeError):
    """The guard cannot be installed: no trusted key, or flwr's hooks moved."""


def verified_install(
    install: Callable[..., Path], public_key: Ed25519PublicKey
) -> Callable[..., Path]:
    """``install`` (flwr's ``install_from_fab``) run only on a FAB that verifies."""
    from flwr.common.logger import log

    def install_verified(fab_file: bytes | Path, *args: Any, **kwargs: Any) -> Path:
        content = fab_file if isinstance(fab_file, bytes) else Path(fab_file).read_bytes()
        try:
            count = verify_fab(content, public_key)
        except AppSignatureError as exc:
            log(ERROR, "fedsearch: refusing the app sent to this device: %s", exc)
            raise
        log(INFO, "fedsearch: app verified (%d files, key %s)", count, key_id(public_key))
        return install(fab_file, *args, **kwargs)

    return install_verified


def trusted_app_key(path: str | Path | None = None) -> Ed25519PublicKey:
    """The publisher key apps must be signed with: ``path``, else ``$FEDSEARCH_TRUSTED_APP_KEY``."""
    path = path or os.environ.get(APP_KEY_ENV, "")
    if not path:
        raise AppGuardError(f"${APP_KEY_ENV} names no publisher key: no app can be verified")
    return load_public_key(Path(path))


def guard_clientapp(public_key: Ed25519PublicKey) -> None:
    """Wrap ``install_from_fab`` in flwr's ClientApp runner (this process only)."""
    from flwr.cli import install
    from flwr.supernode.runtime import run_clientapp as runner

    if getattr(runner, "install_from_fab", None) is not install.install_from_fab:
        raise AppGuardError(
            "flwr.supernode.runtime.run_clientapp no longer installs FABs with "
            "flwr.cli.install.install_from_fab: the app guard needs updating for this flwr"
        )
    runner.install_from_fab = verified_install(install.install_from_fab, public_key)


def use_guarded_clientapp(key_path: Path) -> str:
    """Make this process's SuperExec start ``fedsearch-clientapp`` (verifying apps with the
    key at ``key_path``, exported to it as ``$FEDSEARCH_TRUSTED_APP_KEY``) for ClientApps.
    Returns the script's path."""
    from flwr.supercore.constant import TaskType
    from flwr.supercore.superexec.executor import subprocess_executor

    trusted_app_key(key_path)  # fail now if the key is unusable
    script = Path(sys.executable).with_name(CLIENTAPP_SCRIPT)
    if not script.is_file():
        raise AppGuardError(f"{script} not found: reinstall fedsearch (pip install -e .)")
    commands = getattr(subprocess_executor, "TASK_TYPE_TO_COMMAND", None)
    if not isinstance(commands, dict) or TaskType.CLIENT_APP not in commands:
        raise AppGuardError(
            "flwr's SubprocessExecutor no longer takes its commands from TASK_TYPE_TO_COMMAND: "
            "the app guard needs updating for this flwr"
        )
    os.environ[APP_KEY_ENV] = str(Path(key_path).resolve())
    commands[TaskType.CLIENT_APP] = str(script)
    return str(script)


def run_guarded_clientapp() -> None:
    """``fedsearch-clientapp``: ``flwr-clientapp`` that refuses unsigned apps."""
    from flwr.supernode.cli.flwr_clientapp import flwr_clientapp

    try:
        guard_clientapp(trusted_app_key())
    except (AppGuardError, FileNotFoundError, SignatureError) as exc:
        sys.exit(f"{CLIENTAPP_SCRIPT}: {exc}")
    flwr_clientapp()


if __name__ == "__main__":
    run_guarded_clientapp()
