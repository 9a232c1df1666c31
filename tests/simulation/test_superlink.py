"""A command stopped with SIGTERM (``kill``, ``timeout``) stops the SuperLink it started.

The SuperLink runs in a session of its own (so that Ctrl-C in a terminal reaches the
command, which then stops it in order); by default SIGTERM kills the command at once and
leaves the SuperLink, Flower's simulation runtime and Ray running. ``fedsearch``'s ``main``
runs every command inside ``sigterm_unwinds``; a small script does the same here.
"""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import psutil

from simulation.superlink import PID_FILE

ROOT = Path(__file__).resolve().parents[2]
SCRIPT = """
import sys, time
from contextlib import nullcontext
from pathlib import Path
from common.cli import sigterm_unwinds
from simulation.superlink import LocalSuperLink
with sigterm_unwinds() if sys.argv[2] == "unwinds" else nullcontext():
    with LocalSuperLink(Path(sys.argv[1])):
        print("ready", flush=True)
        time.sleep(120)
"""


def alive(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    return True


def start_and_terminate(home: Path, mode: str) -> tuple[int, int, str]:
    """Start the script, SIGTERM it once its SuperLink listens; (SuperLink pid, exit
    status, stderr)."""
    process = subprocess.Popen(
        [sys.executable, "-c", SCRIPT, str(home), mode],
        cwd=ROOT,
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
    )
    try:
        assert process.stdout is not None
        assert process.stdout.readline().strip() == "ready"
        link = int((home / PID_FILE).read_text())
        assert alive(link)
        process.send_signal(signal.SIGTERM)
        _, stderr = process.communicate(timeout=60)
    finally:
        process.kill()
    return link, process.returncode, stderr


def gone_within(pid: int, seconds: float) -> bool:
    deadline = time.monotonic() + seconds
    while alive(pid):
        if time.monotonic() > deadline:
            return False
        time.sleep(0.2)
    return True


def test_sigterm_stops_the_superlink_the_command_started(tmp_path: Path) -> None:
    link, status, stderr = start_and_terminate(tmp_path / "unwinds", "unwinds")
    assert status != 0 and "Terminated" in stderr
    assert gone_within(link, 15)


def test_without_it_the_superlink_outlives_the_command(tmp_path: Path) -> None:
    link, status, _ = start_and_terminate(tmp_path / "plain", "plain")
    try:
        assert status == -signal.SIGTERM
        assert not gone_within(link, 3)
    finally:
        os.killpg(link, signal.SIGKILL)  # the SuperLink leads its own process group


SIMULATION = """
import sys
from pathlib import Path
from common.cli import sigterm_unwinds
from simulation.engine import simulate
from simulation.synthetic import synthetic_population
from tests.simulation.conftest import small_federation_config
home = Path(sys.argv[1])
config = small_federation_config(home, rank=2, rounds=500, per_round=4)
population = synthetic_population(8, n_items=60, dim=16, seed=2)
with sigterm_unwinds():
    simulate(config, "marketplace", population=population, run_dir=home / "run")
"""


def test_sigterm_mid_run_stops_the_simulation_runtime_and_ray(tmp_path: Path) -> None:
    """Flower's SuperExec starts the simulation runtime (and Ray) in a session of its own:
    stopping the SuperLink's process group alone left them running."""
    process = subprocess.Popen(
        [sys.executable, "-c", SIMULATION, str(tmp_path)],
        cwd=ROOT,
        env={**os.environ, "PYTHONPATH": str(ROOT)},
        stderr=subprocess.PIPE,
        text=True,
    )
    try:
        metrics = tmp_path / "run" / "metrics.jsonl"
        deadline = time.monotonic() + 120
        while not (metrics.is_file() and metrics.read_text().count("\n") >= 1):
            assert process.poll() is None and time.monotonic() < deadline
            time.sleep(0.5)
        started = psutil.Process(process.pid).children(recursive=True)
        names = " ".join(" ".join(p.cmdline()) for p in started)
        assert "flwr-simulation" in names and "raylet" in names
        process.send_signal(signal.SIGTERM)
        _, stderr = process.communicate(timeout=60)
    finally:
        process.kill()
    assert "Terminated" in stderr
    assert [p.pid for p in started if not gone_within(p.pid, 20)] == []
