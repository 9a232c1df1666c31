"""The user-level privacy ledger against an independent Opacus accountant."""

from __future__ import annotations

import math

import pytest
from opacus.accountants import RDPAccountant

from common.config import ConfigError
from server.federation.ledger import PrivacyBudgetError, PrivacyLedger


def _opacus_epsilon(sigma: float, q: float, steps: int, delta: float) -> float:
    accountant = RDPAccountant()
    for _ in range(steps):
        accountant.step(noise_multiplier=sigma, sample_rate=q)
    return accountant.get_epsilon(delta)


@pytest.mark.parametrize(("sigma", "q", "delta"), [(0.7, 0.2, 0.01), (1.1, 0.05, 1 / 4300)])
def test_epsilon_grows_per_round_and_matches_opacus(sigma, q, delta):
    ledger = PrivacyLedger(noise_multiplier=sigma, sample_rate=q, delta=delta, epsilon_budget=1e9)
    previous = 0.0
    for server_round in range(1, 6):
        entry = ledger.record_round(server_round)
        assert entry["epsilon"] > previous
        assert entry["epsilon"] == pytest.approx(_opacus_epsilon(sigma, q, server_round, delta))
        previous = entry["epsilon"]
    assert ledger.epsilon() == pytest.approx(previous)


def test_refuses_a_plan_over_budget_and_reports_the_rounds_that_fit():
    ledger = PrivacyLedger(noise_multiplier=0.7, sample_rate=0.2, delta=0.01, epsilon_budget=8.0)
    fit = ledger.max_rounds()
    assert ledger.epsilon(fit) <= 8.0 < ledger.epsilon(fit + 1)
    ledger.check_plan(fit)
    with pytest.raises(PrivacyBudgetError, match=f"at most {fit} rounds") as info:
        ledger.check_plan(fit + 1)
    assert isinstance(info.value, ConfigError)
    assert "federation.rounds" in str(info.value)
    for server_round in range(1, fit + 1):
        ledger.record_round(server_round)
    with pytest.raises(PrivacyBudgetError):
        ledger.record_round(fit + 1)
    assert ledger.rounds == fit


def test_no_noise_is_infinite_epsilon():
    ledger = PrivacyLedger(noise_multiplier=0.0, sample_rate=0.5, delta=0.01, epsilon_budget=8.0)
    assert ledger.epsilon(0) == 0.0
    assert math.isinf(ledger.epsilon(1))
    with pytest.raises(PrivacyBudgetError):
        ledger.check_plan(1)


def test_state_dict_round_trip():
    ledger = PrivacyLedger(noise_multiplier=1.0, sample_rate=0.1, delta=1e-3, epsilon_budget=8.0)
    ledger.record_round(1)
    ledger.record_round(2)
    again = PrivacyLedger.from_state_dict(ledger.state_dict())
    assert again.rounds == 2
    assert again.epsilon() == pytest.approx(ledger.epsilon())
    assert again.summary()["epsilon"] == pytest.approx(ledger.summary()["epsilon"])


@pytest.mark.parametrize(
    "kwargs", [{"sample_rate": 0.0}, {"sample_rate": 1.5}, {"delta": 0.0}, {"noise_multiplier": -1}]
)
def test_bad_parameters_are_refused(kwargs):
    args = {"noise_multiplier": 1.0, "sample_rate": 0.1, "delta": 1e-3, "epsilon_budget": 8.0}
    with pytest.raises(ValueError):
        PrivacyLedger(**{**args, **kwargs})
