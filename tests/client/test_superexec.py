"""The device's SuperExec reaps the processes it started once they exit."""

from __future__ import annotations

import subprocess
import sys
import time

import psutil

from client.superexec import reap_exited_children


def _zombies() -> set[int]:
    return {c.pid for c in psutil.Process().children() if c.status() == psutil.STATUS_ZOMBIE}


def test_exited_children_are_reaped_and_running_ones_left_alone():
    done = subprocess.Popen([sys.executable, "-c", "pass"])
    running = subprocess.Popen([sys.executable, "-c", "import time; time.sleep(30)"])
    try:
        deadline = time.monotonic() + 20
        while done.pid not in _zombies() and time.monotonic() < deadline:
            time.sleep(0.05)
        assert done.pid in _zombies()  # exited, nobody waited: <defunct>
        assert reap_exited_children() == [done.pid]
        assert done.pid not in _zombies()
        assert running.poll() is None and reap_exited_children() == []
    finally:
        running.kill()
        running.wait()
