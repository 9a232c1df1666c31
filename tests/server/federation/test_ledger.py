"""The population's ledger: rounds of every run compose; over-budget plans are refused."""

from __future__ import annotations

import json

import numpy as np
import pytest

from common.privacy.accounting import epsilon_at, gaussian_rdp
from server.federation.ledger import PopulationLedger, PrivacyBudgetError

ROUND = gaussian_rdp(0.1, 1.0)


def _ledger(tmp_path, budget=8.0):
    return PopulationLedger.for_population(
        tmp_path, "retail/shop a", delta=1e-5, epsilon_budget=budget
    )


def test_rounds_compose_across_runs_and_persist(tmp_path):
    first = _ledger(tmp_path)
    for r in (1, 2):
        first.charge(run="run-1", round_number=r, mechanism={"noise": "devices"}, rdp=ROUND)
    again = _ledger(tmp_path)  # a new run on the same population continues the ledger
    assert again.rounds == 2 and again.path.name == "retail_shop_a.json"
    eps = again.charge(run="run-2", round_number=1, mechanism={}, rdp=ROUND)
    assert eps == pytest.approx(epsilon_at(3 * ROUND, 1e-5))
    summary = json.loads(again.path.read_text())["summary"]
    assert summary["runs"] == 2 and summary["rounds"] == 3 and summary["delta"] == 1e-5
    assert summary["unit"].startswith("user")


def test_a_plan_over_budget_is_refused_with_what_fits(tmp_path):
    ledger = _ledger(tmp_path, budget=4.0)
    fits = ledger.max_rounds(ROUND)
    assert 0 < fits < 100
    assert ledger.check_plan(ROUND, fits) <= 4.0
    with pytest.raises(PrivacyBudgetError, match=rf"federation.rounds.*at most {fits} more"):
        ledger.check_plan(ROUND, fits + 1)


def test_a_ledger_from_other_orders_is_refused(tmp_path):
    ledger = _ledger(tmp_path)
    ledger.charge(run="r", round_number=1, mechanism={}, rdp=ROUND)
    state = json.loads(ledger.path.read_text())
    state["orders"] = [2, 3]
    ledger.path.write_text(json.dumps(state))
    with pytest.raises(Exception, match="other RDP orders"):
        _ledger(tmp_path)


def test_no_rounds_is_zero_and_no_noise_is_infinite(tmp_path):
    ledger = _ledger(tmp_path)
    assert ledger.epsilon() == 0.0
    assert ledger.epsilon(np.full(len(ROUND), np.inf)) == np.inf


def test_a_refund_removes_only_that_rounds_charge(tmp_path):
    ledger = _ledger(tmp_path)
    for r in (1, 2):
        ledger.charge(run="run-1", round_number=r, mechanism={}, rdp=ROUND)
    assert ledger.refund(run="run-1", round_number=2) == pytest.approx(epsilon_at(ROUND, 1e-5))
    assert [e["round"] for e in _ledger(tmp_path).entries] == [1]  # persisted
    with pytest.raises(ValueError, match="no charge for run run-1 round 2"):
        ledger.refund(run="run-1", round_number=2)
