"""The device's SuperExec: Flower's, plus reaping of the ClientApp processes it started.

flwr 1.41's SuperExec starts one ClientApp process per run and never waits for it, so each
finished run leaves a ``<defunct>`` process behind. ``fedsearch device join`` runs the
SuperNode with ``--isolation process`` and this SuperExec beside it
(``python -m client.superexec`` with ``flower-superexec``'s arguments); a daemon thread
waits for every child that has exited. It reaps only exited children, so nothing that is
still running loses its exit status.
"""

from __future__ import annotations

import os
import threading
import time

import psutil

REAP_INTERVAL_S = 1.0


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


def run_superexec() -> None:
    from flwr.supercore.cli import flower_superexec

    threading.Thread(target=_reap_forever, name="reaper", daemon=True).start()
    flower_superexec()


if __name__ == "__main__":
    run_superexec()
