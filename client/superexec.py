"""The device's SuperExec: Flower's, starting only verified apps and reaping what it started.

flwr 1.41's SuperExec starts one ClientApp process per run and never waits for it, so each
finished run leaves a ``<defunct>`` process behind. ``fedsearch device join`` runs the
SuperNode with ``--isolation process`` and this SuperExec beside it
(``python -m client.superexec`` with ``flower-superexec``'s arguments); a daemon thread
waits for every child that has exited. It reaps only exited children, so nothing that is
still running loses its exit status.

``--trusted-app-key PATH`` (the device's ``signing.pub``; required) makes it start
``fedsearch-clientapp`` instead of ``flwr-clientapp``: every app is verified against that
publisher key before any of its code is imported (``client.app_guard``).
"""

from __future__ import annotations

import os
import sys
import threading
import time
from pathlib import Path

import psutil

REAP_INTERVAL_S = 1.0
TRUSTED_KEY_FLAG = "--trusted-app-key"


def reap_exited_children() -> list[int]:
    """Wait for this process's children that have exited; return their pids."""
    reaped = []
    for child in psutil.Process().children():
        try:
            if child.status() != psutil.STATUS_ZOMBIE:
                continue
            pid, _ = os.waitpid(child.pid, os.WNOHANG)
        except (psutil.NoSuchProcess, ChildProcessError):
            continue
        if pid:
            reaped.append(pid)
    return reaped


def _reap_forever() -> None:
    while True:
        reap_exited_children()
        time.sleep(REAP_INTERVAL_S)


def pop_trusted_key(argv: list[str]) -> tuple[Path, list[str]]:
    """``--trusted-app-key PATH`` out of ``argv``; the rest is for Flower's SuperExec."""
    if TRUSTED_KEY_FLAG not in argv[:-1]:
        raise SystemExit(f"client.superexec: {TRUSTED_KEY_FLAG} PATH is required")
    at = argv.index(TRUSTED_KEY_FLAG)
    return Path(argv[at + 1]), argv[:at] + argv[at + 2 :]


def run_superexec() -> None:
    from flwr.supercore.cli import flower_superexec

    from client.app_guard import use_guarded_clientapp

    key, sys.argv = pop_trusted_key(sys.argv)
    try:
        use_guarded_clientapp(key)
    except (OSError, ValueError, RuntimeError) as exc:  # AppGuardError, SignatureError
        raise SystemExit(f"client.superexec: {exc}") from exc
    threading.Thread(target=_reap_forever, name="reaper", daemon=True).start()
    flower_superexec()


if __name__ == "__main__":
    run_superexec()
