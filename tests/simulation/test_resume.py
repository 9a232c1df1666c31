"""kill -9 of the server mid-run, then the README's ``fedsearch simulate --resume RUN_DIR``:
the run finishes as if it had never stopped, with the same epsilon, and the ledger charged
each round once."""

from __future__ import annotations

import json
import os
import shlex
import signal
import threading
import time
import tomllib
from pathlib import Path

import numpy as np
import pytest

from common.cli import main
from server.federation.resume import load_server_state
from simulation.engine import SimulationError, read_rounds, simulate
from simulation.faults import FAULT_SETTINGS
from simulation.superlink import PID_FILE
from simulation.synthetic import synthetic_population
from tests.simulation.conftest import small_federation_config

ROUNDS = 2
README = Path(__file__).resolve().parents[2] / "README.md"


def readme_command(start: str, run_dir: Path) -> list[str]:
    """The README's command line that begins with ``start``, RUN_DIR filled in, as argv."""
    (line,) = [x for x in README.read_text().splitlines() if x.startswith(start)]
    return shlex.split(line.split("#")[0].replace("RUN_DIR", shlex.quote(str(run_dir))))


VARYING = ("elapsed_s", "published")  # wall time; the run's own folder


def _config(tmp_path: Path):
    return small_federation_config(
        tmp_path, rank=4, rounds=ROUNDS, per_round=6, warm_start=False, average_decay=0.5
    )


def _population():
    return synthetic_population(12, n_items=60, dim=16, seed=4)


def _rows(rounds):
    return [{k: v for k, v in row.items() if k not in VARYING} for row in rounds]


def _final_arrays(run_dir: Path) -> list[np.ndarray]:
    state = load_server_state(run_dir)
    assert state is not None and state.round == ROUNDS
    return [*state.weights, *(state.average or [])]


def _ledger(tmp_path: Path) -> dict:
    (path,) = (tmp_path / "work" / "ledgers").glob("*.json")
    return json.loads(path.read_text())


def _server_groups(run_dir: Path) -> set[int]:
    """Process groups of the SuperLink and of the ServerApp it launched (which runs, with
    the simulation runtime and Ray, in a session of its own)."""
    home = run_dir / "flwr"
    port = tomllib.loads((home / "config.toml").read_text())["superlink"]["simulation"]
    address = port["address"].encode()
    groups = {os.getpgid(int((home / PID_FILE).read_text()))}
    for proc in Path("/proc").iterdir():
        try:
            args = (proc / "cmdline").read_bytes().split(b"\0")
            if b"--runtime-api-address" in args and address in args:
                groups.add(os.getpgid(int(proc.name)))
        except (OSError, ValueError):
            continue
    return groups


def _kill_server_during_round_2(run_dir: Path) -> None:
    """Wait until round 1 is recorded and a device of round 2 stays silent, then kill -9
    the server: the SuperLink's and the ServerApp's process groups."""
    deadline = time.monotonic() + 120
    metrics, fates = run_dir / "metrics.jsonl", run_dir / "faults" / "round-2.json"
    while not (fates.is_file() and metrics.is_file() and metrics.read_text().strip()):
        assert time.monotonic() < deadline, "round 1 was never recorded"
        time.sleep(0.2)
    time.sleep(2.0)  # the server now waits for the silent device's setup reply
    groups = _server_groups(run_dir)
    assert len(groups) == 2, groups
    for group in groups:
        os.killpg(group, signal.SIGKILL)


def test_a_killed_server_resumes_and_finishes_with_the_same_epsilon(tmp_path):
    first = tmp_path / "a" / "run"
    whole = simulate(
        _config(tmp_path / "a"),
        "marketplace",
        population=_population(),
        run_dir=first,
    )

    run_dir = tmp_path / "b" / "run"
    errors: list[BaseException] = []

    def interrupted() -> None:
        try:
            simulate(
                _config(tmp_path / "b"),
                "marketplace",
                population=_population(),
                run_dir=run_dir,
                dropout=0.2,  # one device of round 2 stays silent at setup...
                dropout_stages=("setup",),
                dropout_silent_s=600.0,  # ... longer than the stage timeout
                dropout_rounds=(2,),
            )
        except BaseException as error:  # noqa: BLE001 - the kill must surface here
            errors.append(error)

    runner = threading.Thread(target=interrupted)
    runner.start()
    _kill_server_during_round_2(run_dir)
    runner.join(timeout=120)
    assert not runner.is_alive()
    assert len(errors) == 1 and isinstance(errors[0], SimulationError), errors
    assert len((run_dir / "metrics.jsonl").read_text().splitlines()) == 1

    (run_dir / FAULT_SETTINGS).unlink()  # the silent device is back
    argv = readme_command("fedsearch simulate --resume", run_dir)
    assert main([*argv[1:], "--no-baselines"]) == 0
    resumed = read_rounds(run_dir)

    assert [r["round"] for r in resumed] == list(range(1, ROUNDS + 1))
    assert _rows(resumed) == _rows(whole.rounds)
    assert resumed[-1]["epsilon_user"] == pytest.approx(whole.final["epsilon_user"])
    assert (run_dir / "summary.md").is_file()  # the report, as for a run that never stopped
    for a, b in zip(_final_arrays(first), _final_arrays(run_dir), strict=True):
        np.testing.assert_array_equal(a, b)  # adapter and moving average
    ledger, reference = _ledger(tmp_path / "b"), _ledger(tmp_path / "a")
    assert [e["round"] for e in ledger["entries"]] == list(range(1, ROUNDS + 1))
    assert ledger["summary"]["epsilon"] == pytest.approx(reference["summary"]["epsilon"])
