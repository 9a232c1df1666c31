"""Rounds that survive faults: devices dropping at every SecAgg+ stage, and silent ones."""

from __future__ import annotations

import json

import pytest

from common.federation.privacy_plan import PrivacyPlan
from common.privacy.accounting import epsilon_at
from server.federation.ledger import PopulationLedger
from simulation.engine import simulate
from simulation.faults import FIT_STAGES
from simulation.synthetic import synthetic_population
from tests.simulation.conftest import small_federation_config

ROUNDS = 3


def _faults(run_dir) -> dict[int, dict]:
    return {
        int(path.stem.split("-")[1]): json.loads(path.read_text())
        for path in (run_dir / "faults").glob("round-*.json")
    }


def test_rounds_complete_when_30_percent_drop_at_random_stages(tmp_path):
    config = small_federation_config(
        tmp_path, rank=4, rounds=ROUNDS, per_round=12, warm_start=False
    )
    population = synthetic_population(16, n_items=60, dim=16, seed=2)
    result = simulate(
        config,
        "marketplace",
        population=population,
        run_dir=tmp_path / "run",
        dropout=0.3,
        dropout_stages=FIT_STAGES,
    )
    faults = _faults(result.run_dir)
    assert sorted(faults) == list(range(1, ROUNDS + 1))
    stages = {stage for f in faults.values() for stage in f["fates"].values()}
    assert {"setup", "share_keys"} & stages, stages  # dropouts before the keys were shared
    assert len(stages) >= 3, stages
    plan = PrivacyPlan.from_spec(result.spec)
    for entry in result.rounds:
        assert "fit" in entry, entry  # every round aggregated and was charged
        fit, drawn = entry["fit"], faults[entry["round"]]
        dropped = len(drawn["fates"])
        assert fit["failures"] == dropped == round(0.3 * len(drawn["cohort"])) > 0
        masked = sum(stage != "unmask" for stage in drawn["fates"].values())
        assert fit["devices"] == len(drawn["cohort"]) - masked >= plan.min_devices
    ledger = PopulationLedger(
        next((tmp_path / "work" / "ledgers").glob("*.json")),
        delta=plan.delta,
        epsilon_budget=plan.epsilon_budget,
    )
    assert [e["round"] for e in ledger.entries] == list(range(1, ROUNDS + 1))
    assert result.rounds[-1]["epsilon_user"] == pytest.approx(
        epsilon_at(ledger.total_rdp(), plan.delta)
    )


def test_a_silent_device_times_out_and_the_round_goes_on(tmp_path):
    config = small_federation_config(
        tmp_path, rank=4, rounds=2, per_round=8, warm_start=False, stage_timeout_s=20.0
    )
    population = synthetic_population(10, n_items=60, dim=16, seed=2)
    result = simulate(
        config,
        "marketplace",
        population=population,
        run_dir=tmp_path / "run",
        dropout=0.15,
        dropout_stages=("share_keys",),
        dropout_silent_s=45.0,
        dropout_rounds=(2,),  # round 1 starts the devices (under load, may time out itself)
    )
    first, second = result.rounds
    assert len(_faults(result.run_dir)[2]["fates"]) == second["fit"]["failures"] == 1
    assert second["elapsed_s"] - first["elapsed_s"] < 45.0  # it gave up on the silent one
