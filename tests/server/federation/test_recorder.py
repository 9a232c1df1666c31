"""After each round: charge, then publish (or not), then one line of metrics."""

from __future__ import annotations

import json
import logging

import numpy as np
import pytest

from common.config import ConfigError, config_from_dict
from common.federation.privacy_plan import PrivacyPlan
from common.federation.run_spec import RunSpec
from common.model.adapter import QueryAdapter
from common.security.versions import list_versions, verify_files
from server.federation.app import open_ledger
from server.federation.recorder import METRICS_FILE, RunRecorder
from server.federation.secure_aggregation import fit_workflow
from server.federation.strategy import RoundLog


def _spec(tmp_path, **federation):
    settings = {"clients_per_round": 10, "epsilon_user": 50.0, **federation}
    config = config_from_dict({"paths": {"work_dir": str(tmp_path)}, "federation": settings})
    return RunSpec(config, "retail", 100, tmp_path / "run", population_id="shop")


def _recorder(spec, log):
    plan = PrivacyPlan.from_spec(spec)
    ledger = open_ledger(spec, plan)
    return RunRecorder(spec, plan, log, ledger, payload_size=1000, promote="always")


def _lines(spec):
    return [json.loads(x) for x in (spec.run_dir / METRICS_FILE).read_text().splitlines()]


def test_an_aggregated_round_is_charged_then_published(tmp_path):
    spec = _spec(tmp_path)
    log = RoundLog(fit={1: {"devices": 10.0, "trained": 9.6, "personal.nDCG@10": 0.3}})
    weights = QueryAdapter(8, 2).get_weights()
    entry = _recorder(spec, log).record(1, weights)
    assert entry["epsilon_user"] > 0
    (folder,) = list_versions(spec.config.paths.registry)
    manifest = verify_files(folder)
    assert manifest["population"] == "shop" and manifest["privacy"]["rounds"] == 1
    assert manifest["privacy"]["epsilon"] == pytest.approx(entry["epsilon_user"])
    assert (tmp_path / "ledgers" / "shop.json").is_file()
    assert _lines(spec)[0]["published"] == str(folder)


def test_a_dropped_round_is_neither_charged_nor_published(tmp_path):
    spec = _spec(tmp_path)
    entry = _recorder(spec, RoundLog()).record(1, QueryAdapter(8, 2).get_weights())
    assert entry["dropped"] and "epsilon_user" not in entry
    assert not list_versions(spec.config.paths.registry)
    assert not (tmp_path / "ledgers" / "shop.json").exists()


def test_a_round_of_declines_is_charged_but_not_published(tmp_path, caplog):
    spec = _spec(tmp_path)
    log = RoundLog(fit={1: {"devices": 10.0, "failures": 0.0, "trained": 1.2, "declined": 8.9}})
    recorder = _recorder(spec, log)
    with caplog.at_level(logging.INFO, logger="server.federation.recorder"):
        entry = recorder.record(1, QueryAdapter(8, 2).get_weights())
    needed = recorder.plan.min_devices
    assert entry["not_published"] == f"too few devices trained: 1.2 (noised) < {needed}"
    assert entry["epsilon_user"] > 0
    assert not list_versions(spec.config.paths.registry)
    (line,) = [r.getMessage() for r in caplog.records if "recorded" in r.getMessage()]
    assert "trained 1.2, declined 8.9 (noised), failed 0" in line
    assert "NOT published: too few devices trained" in line


def test_secagg_refuses_cohorts_that_could_wrap_its_sums(tmp_path):
    spec = _spec(tmp_path, clients_per_round=10, epsilon_user=50.0)
    fit_workflow(spec, PrivacyPlan.from_spec(spec))
    big = RunSpec(spec.config, "retail", 10_000_000, tmp_path / "r")
    huge = config_from_dict({"federation": {"clients_per_round": 5_000_000}})
    with pytest.raises(ConfigError, match="federation.clients_per_round"):
        plan = PrivacyPlan.from_spec(RunSpec(huge, "retail", 10_000_000, tmp_path / "r"))
        fit_workflow(big, plan)
    assert np.isfinite(PrivacyPlan.from_spec(spec).round_rdp(100)).all()


def test_a_round_is_charged_once_and_refunded_when_its_sum_stayed_masked(tmp_path):
    spec = _spec(tmp_path)
    recorder = _recorder(spec, RoundLog())
    first = recorder.charge(1)
    assert recorder.charge(1) == first and recorder.ledger.rounds == 1  # before unmask
    recorder.refund(1)  # too few shares came back: nothing released
    assert recorder.ledger.rounds == 0
    recorder.record(1, QueryAdapter(8, 2).get_weights())
    assert _lines(spec)[-1]["dropped"] and recorder.ledger.rounds == 0


def test_under_dp_ftrl_dropped_and_masked_rounds_stay_charged(tmp_path):
    """The tree's node of a round nothing came back from is still released later."""
    spec = _spec(tmp_path, mechanism="dp-ftrl", noise="server")
    recorder = _recorder(spec, RoundLog())
    assert recorder.plan.epoch_rounds == 10
    recorder.charge(1)
    recorder.refund(1)
    entry = recorder.record(2, QueryAdapter(8, 2).get_weights())
    assert entry["dropped"] and entry["epsilon_user"] > 0
    entries = recorder.ledger.entries
    assert [e["round"] for e in entries] == [1, 2]
    assert entries[0]["mechanism"]["mechanism"] == "dp-ftrl"
    unit = recorder.plan.round_rdp(1000, 1)
    assert recorder.ledger.total_rdp() == pytest.approx(2 * unit)
    recorder.record(3, QueryAdapter(8, 2).get_weights())  # a third leaf completes no node
    assert recorder.ledger.total_rdp() == pytest.approx(2 * unit)


def test_a_resumed_recorder_appends_to_the_recorded_rounds(tmp_path):
    spec = _spec(tmp_path)
    _recorder(spec, RoundLog()).record(1, QueryAdapter(8, 2).get_weights())
    plan = PrivacyPlan.from_spec(spec)
    again = RunRecorder(spec, plan, RoundLog(), None, payload_size=1000, resume=True)
    again.record(2, QueryAdapter(8, 2).get_weights())
    assert [line["round"] for line in _lines(spec)] == [1, 2]
