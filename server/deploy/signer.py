"""The operator's signer: the deployment's signing key never reaches a ServerApp.

A ServerApp runs in the SuperLink's process tree, and anyone who can reach the SuperLink's
Control API (127.0.0.1) can submit one. So the SuperLink's environment names no signing
key: the ServerApp publishes each version unsigned, and the operator's ``fedsearch deploy
run`` process, which loaded the key (encrypted at rest when ``deploy init`` ran with
``$FEDSEARCH_SIGNING_PASSPHRASE``), signs

- the app it sends to devices (``server.deploy.app_bundle.sign_staged_app``), and
- the versions its own run publishes (``RunSigner``): those whose manifest names its run
  folder, whose files match their sha256, and only while no other run is active on the
  SuperLink (a concurrent ServerApp could otherwise forge a version in its name).

The search service and devices refuse unsigned versions and pick each one up once it is
signed (``common.security.trust``).
"""

from __future__ import annotations

import getpass
import os
import sys
import threading
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PrivateKey
from flwr.common.config import parse_config_args

from common.security.signing import (
    SIGNATURE_FILE,
    SignatureError,
    is_encrypted_key,
    load_private_key,
    sign_version,
)
from common.security.versions import IntegrityError, list_versions, read_manifest, verify_files
from server.deploy.app_bundle import server_run_spec

PASSPHRASE_ENV = "FEDSEARCH_SIGNING_PASSPHRASE"
POLL_S = 2.0
ACTIVE_STATUSES = ("pending", "starting", "running")


def passphrase_from_env() -> bytes | None:
    """``$FEDSEARCH_SIGNING_PASSPHRASE`` as bytes, None when unset or empty."""
    value = os.environ.get(PASSPHRASE_ENV, "")
    return value.encode() if value else None


def operator_key(path: Path) -> Ed25519PrivateKey:
    """The signing key; an encrypted one is opened with ``$FEDSEARCH_SIGNING_PASSPHRASE``,
    else a passphrase typed at the terminal."""
    passphrase = None
    if is_encrypted_key(path):
        passphrase = passphrase_from_env()
        if passphrase is None:
            if not sys.stdin.isatty():
                raise SignatureError(
                    f"{path} is encrypted: set ${PASSPHRASE_ENV} or run from a terminal"
                )
            passphrase = getpass.getpass(f"passphrase of {path}: ").encode()
    return load_private_key(path, passphrase)


def run_target(app_dir: Path, run_config: str | None, run_id: int) -> tuple[Path, str]:
    """Where the ServerApp of run ``run_id`` publishes (registry) and the run name its
    manifests carry, worked out as the ServerApp does (``RunSpec.from_run_config``)."""
    given = parse_config_args([run_config]) if run_config else {}
    spec = server_run_spec(app_dir, given, run_id)
    return spec.config.paths.registry, spec.run_dir.name


@dataclass
class RunSigner:
    """Signs the unsigned versions of one run in ``registry``; ``others_active()`` returns
    the ids of other active runs (signing waits while there are any)."""

    key: Ed25519PrivateKey
    registry: Path
    run_name: str
    others_active: Callable[[], list[str]] = lambda: []
    signed: list[str] = field(default_factory=list)
    held_back: str = ""

    def sign_pending(self) -> list[str]:
        """Sign this run's unsigned versions now; returns their names."""
        pending = [
            folder
            for folder in list_versions(self.registry)
            if not (folder / SIGNATURE_FILE).exists() and self._ours(folder)
        ]
        if pending and (others := self.others_active()):
            self.held_back = (
                f"not signing {', '.join(f.name for f in pending)}: run(s) "
                f"{', '.join(others)} also active on the SuperLink; they are signed once it "
                "is the only one"
            )
            return []
        done = []
        for folder in pending:
            try:
                verify_files(folder)
            except IntegrityError as exc:
                self.held_back = f"not signing {folder.name}: {exc}"
                continue
            sign_version(folder, self.key)
            done.append(folder.name)
        self.signed += done
        return done

    def _ours(self, folder: Path) -> bool:
        try:
            manifest: dict[str, Any] = read_manifest(folder)
        except IntegrityError:
            return False
        return manifest.get("run") == self.run_name


def sign_while(signer: RunSigner, done: threading.Event, report: Callable[[str], None]) -> None:
    """Sign ``signer``'s versions every ``POLL_S`` until ``done``, then once more."""
    while True:
        finished = done.wait(POLL_S)
        for name in signer.sign_pending():
            report(f"signed {name}")
        if signer.held_back:
            report(signer.held_back)
            signer.held_back = ""
        if finished:
            return
