"""Run a child process with its output passed through to ours and its last lines kept, so a
command can explain how the child ended (``fedsearch device join``, ``deploy run``), and
keep a helper process running beside it (``started_beside``).

The child runs in a process group of its own; SIGINT and SIGTERM are handed on to it, and
when it ends, whatever it started and left behind (Flower's SuperExec, ClientApp
processes) is stopped with it, so no orphan keeps running or holds the output open.
"""

from __future__ import annotations

import collections
import contextlib
import os
import signal
import subprocess
import sys
import threading
import time
from collections.abc import Callable, Iterator

GRACE_S = 5.0


def run_passing_through(
    command: list[str],
    env: dict[str, str],
    *,
    keep_lines: int = 400,
    on_line: Callable[[str], None] | None = None,
) -> tuple[int, str]:
    """Run ``command``, writing its stdout and stderr to our stdout as they come (and to
    ``on_line``, line by line). Returns (exit status, its last ``keep_lines`` lines)."""
    proc = subprocess.Popen(
        command,
        env=env,
        stdout=subprocess.PIPE,
        stderr=subprocess.STDOUT,
        text=True,
        start_new_session=True,
    )
    tail: collections.deque[str] = collections.deque(maxlen=keep_lines)
    reader = threading.Thread(target=_pump, args=(proc, tail, on_line), daemon=True)
    reader.start()
    handed_on = (signal.SIGINT, signal.SIGTERM)
    previous = {sig: signal.signal(sig, lambda sig, _: proc.send_signal(sig)) for sig in handed_on}
    try:
        status = proc.wait()
    finally:
        for sig, handler in previous.items():
            signal.signal(sig, handler)
        _stop_group(proc.pid)
    reader.join(timeout=GRACE_S)
    return status, "".join(tail)


@contextlib.contextmanager
def started_beside(command: list[str], env: dict[str, str]) -> Iterator[subprocess.Popen[bytes]]:
    """``command`` runs, in a process group of its own and with its output on ours, while
    the block runs; then it and whatever it started are stopped and waited for."""
    proc = subprocess.Popen(command, env=env, start_new_session=True)
    try:
        yield proc
    finally:
        with contextlib.suppress(ProcessLookupError):
            os.killpg(proc.pid, signal.SIGTERM)
        try:
            proc.wait(timeout=GRACE_S)
        except subprocess.TimeoutExpired:
            proc.kill()
            proc.wait()
        _stop_group(proc.pid)


def _pump(
    proc: subprocess.Popen[str],
    tail: collections.deque[str],
    on_line: Callable[[str], None] | None,
) -> None:
    assert proc.stdout is not None  # started with stdout=PIPE
    for line in proc.stdout:
        sys.stdout.write(line)
        sys.stdout.flush()
        tail.append(line)
        if on_line is not None:
            on_line(line)


def _stop_group(pgid: int) -> None:
    """SIGTERM what is left of the child's process group, SIGKILL after ``GRACE_S``."""
    for sig in (signal.SIGTERM, signal.SIGKILL):
        try:
            os.killpg(pgid, sig)
        except ProcessLookupError:
            return
        deadline = time.monotonic() + GRACE_S
        while time.monotonic() < deadline:
            try:
                os.killpg(pgid, 0)
            except ProcessLookupError:
                return
            time.sleep(0.1)
