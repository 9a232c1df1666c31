"""``fedsearch simulate`` / ``bench-federation`` input errors and the refusal to overspend,
all before any data is loaded or any simulation starts."""

from __future__ import annotations

import pytest

from common.cli import main
from common.config import ConfigError, config_from_dict
from common.federation.run_spec import RunSpec
from server.federation.ledger import PrivacyBudgetError
from simulation.bench import (
    bench_config,
    bytes_per_device_round,
    local_update_seconds,
    traffic_config,
)
from simulation.engine import check_device_policy, simulate
from simulation.synthetic import synthetic_population


@pytest.mark.parametrize(
    ("argv", "message"),
    [
        (["--clients", "1"], "--clients"),
        (["--rounds", "0"], "--rounds"),
        (["--per-round", "0"], "--per-round"),
        (["--set", "federation.noise_multiplier=-1"], "federation.noise_multiplier"),
    ],
)
def test_simulate_rejects_bad_input_with_one_line(argv, message, capsys):
    assert main(["simulate", "--population", "marketplace", *argv]) == 2
    err = capsys.readouterr().err
    assert message in err and "Traceback" not in err and len(err.strip().splitlines()) == 1


def test_bench_rejects_bad_input(capsys):
    assert main(["bench-federation", "--shoppers", "1"]) == 2
    assert "--shoppers" in capsys.readouterr().err


def test_refuses_to_start_when_the_rounds_would_overspend(tmp_path):
    config = config_from_dict(
        {
            "paths": {"work_dir": str(tmp_path / "work")},
            "federation": {"rounds": 500, "clients_per_round": 3, "epsilon_user": 2.0},
        }
    )
    with pytest.raises(PrivacyBudgetError, match="federation.rounds: 500 more rounds"):
        simulate(config, "marketplace", population=synthetic_population(4), run_dir=tmp_path / "r")
    assert not (tmp_path / "r").exists()


def test_refuses_a_run_its_simulated_devices_would_refuse(tmp_path):
    """Without SecAgg+ the devices' default policy refuses every round: say so up front
    instead of running rounds that are all dropped."""
    settings = {"secagg": False, "noise": "server"}
    config = config_from_dict(
        {"paths": {"work_dir": str(tmp_path / "work")}, "federation": settings}
    )
    with pytest.raises(ConfigError, match="refuse every round: .*SecAgg.*device.require_secagg"):
        simulate(config, "marketplace", population=synthetic_population(4), run_dir=tmp_path / "r")
    assert not (tmp_path / "r").exists()


def test_traffic_helper(tmp_path):
    import pickle

    for node, size in ((0, 100), (0, 50), (1, 10)):
        entry = {"node": node, "type": "train", "round": "1", "bytes": size}
        (tmp_path / f"{node}-{size}.pkl").write_bytes(pickle.dumps(entry))
    figures = bytes_per_device_round(tmp_path)
    assert figures == {"mean": 80.0, "max": 150.0, "samples": 2}


def test_local_update_timing_with_and_without_record_level_dp(recwarn):
    config = config_from_dict({"adapter": {"rank": 4, "shown_negatives": 4, "random_negatives": 4}})
    times = local_update_seconds(config, synthetic_population(3, dim=16), devices=2)
    assert set(times) == {"record_dp", "no_record_dp"} and all(t > 0 for t in times.values())
    assert not [w for w in recwarn if "Secure RNG" in str(w.message)]  # quiet benchmark


def test_resume_keeps_the_runs_own_settings(tmp_path, capsys):
    assert main(["simulate", "--resume", str(tmp_path), "--rounds", "5"]) == 2
    assert "drop --rounds" in capsys.readouterr().err
    assert main(["simulate", "--resume", str(tmp_path)]) == 2
    assert "not a simulation run folder" in capsys.readouterr().err
    assert main(["simulate"]) == 2
    assert "--population: required" in capsys.readouterr().err


def test_the_benchmarks_traffic_runs_pass_the_simulated_devices_policy(tmp_path):
    """Both runs of ``bench-federation``'s traffic figures start (the plain one once failed
    at the end of the benchmark: the devices' default policy requires SecAgg+)."""
    config = bench_config(config_from_dict({}), tmp_path, rounds=3)
    for secagg in (True, False):
        spec = RunSpec(traffic_config(config, secagg=secagg), "marketplace", 100, tmp_path)
        check_device_policy(spec)
