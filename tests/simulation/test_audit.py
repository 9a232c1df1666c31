"""``fedsearch audit``: its statistics, and two small audit simulations through ``flwr run``
that share the synthetic population: one with the devices' noise, one whose devices
silently drop it while the plan and the ledger still say they add it."""

from __future__ import annotations

import json
import math

import numpy as np
import pytest

import client.app
import simulation.apps
from common.cli import main
from common.config import config_from_dict
from common.federation.privacy_plan import PrivacyPlan
from common.federation.run_spec import RunSpec
from simulation.audit import (
    AuditReport,
    audit_run,
    audit_simulation,
    audit_verdict,
    format_audit,
    run_spec,
)
from simulation.audit_estimates import (
    EpsilonEstimate,
    _gdp_delta,
    auc,
    chance_of_any,
    empirical_epsilon,
    gdp_epsilon,
)
from simulation.broken_noise import silent_noise_mod
from simulation.canaries import read_canary_settings, with_canaries
from simulation.synthetic import synthetic_population
from simulation.wiretap import read_tap
from tests.simulation.conftest import small_federation_config

DEVICES, CANARIES, ROUNDS, DIM, RANK = 8, 8, 2, 96, 64


def _config(tmp):
    return small_federation_config(
        tmp,
        rank=RANK,
        rounds=ROUNDS,
        per_round=DEVICES,
        noise_multiplier=1.0,
        clipping_norm=0.5,
    )


@pytest.fixture(scope="module")
def audited(tmp_path_factory):
    population = synthetic_population(DEVICES, n_items=150, dim=DIM, seed=3)
    runs = {}
    for name, broken in (("noised", False), ("broken", True)):
        tmp = tmp_path_factory.mktemp(name)
        runs[name] = audit_simulation(
            _config(tmp),
            "marketplace",
            canaries=CANARIES,
            held_out=200,
            population=population,
            run_dir=tmp / "run",
            break_noise=broken,
        )
    return runs


def test_a_correctly_noised_run_passes_the_audit(audited, capsys):
    assert main(["audit", str(audited["noised"])]) == 0
    out = capsys.readouterr().out
    assert "PASS" in out and "FAIL" not in out
    assert "unit user" in out and "delta" in out and "readers of published versions" in out
    report = audit_run(audited["noised"])
    assert report.empirical.low <= report.ledger_epsilon
    assert report.noise_ratio == pytest.approx(1.0, abs=0.05)
    # one raw update gives the device's clicks away; that is why SecAgg+ and noise exist
    assert report.raw.rate > report.raw.chance
    assert 0 <= report.membership <= 1


def test_silently_broken_noise_fails_the_audit(audited, capsys):
    run = audited["broken"]
    rounds = [json.loads(line) for line in (run / "metrics.jsonl").read_text().splitlines()]
    assert all(math.isfinite(r["epsilon_user"]) for r in rounds)  # the ledger says DP is on
    assert main(["audit", str(run)]) == 1
    out = capsys.readouterr().out
    assert "FAIL: empirical epsilon" in out and "ledger" in out
    assert "FAIL: the sums the server unmasked carry 0% of the planned noise" in out
    report = audit_run(run)
    assert report.empirical.low > report.ledger_epsilon
    assert report.noise_ratio < 0.01


def _plain_payloads(run):
    return [
        (e["node"], e["round"], next(iter(e["records"]["fitres.parameters"]["items"].values())))
        for e in read_tap(run / "taps" / "plain")
        if e["type"] == "train" and e["records"].get("fitres.parameters")
    ]


def test_canaries_send_their_direction_through_the_protocol(audited):
    run = audited["noised"]
    settings = read_canary_settings(run)
    assert settings.devices == tuple(range(DEVICES, DEVICES + CANARIES))
    sent = [(n, p) for n, _, p in _plain_payloads(run) if n in settings.devices]
    assert sent
    for node, payload in sent:
        expected = settings.clipping_norm * settings.direction(settings.devices.index(node))
        np.testing.assert_allclose(payload[: settings.update_size], expected, atol=1e-6)
    # ... and the device noise on top, in what the server unmasked
    held = np.load(run / "taps" / "server" / "round-1.npy")
    truth = sum(p.astype(np.float64) for _, r, p in _plain_payloads(run) if int(r) == 1)
    assert np.std(held - truth) > 0.1 * run_spec(run).config.federation.clipping_norm


def test_the_broken_run_hands_the_server_the_exact_sum(audited):
    run = audited["broken"]
    held = np.load(run / "taps" / "server" / "round-1.npy")
    truth = sum(p.astype(np.float64) for _, r, p in _plain_payloads(run) if int(r) == 1)
    assert np.abs(held - truth).max() < 1e-3


def test_noise_removal_is_reachable_only_from_the_simulation():
    assert silent_noise_mod in simulation.apps.client_app._mods
    assert silent_noise_mod not in client.app.app._mods


def test_gaussian_dp_epsilon_meets_its_delta():
    for mu in (0.5, 1.0, 3.0):
        epsilon = gdp_epsilon(mu, 1e-5)
        assert _gdp_delta(mu, epsilon) == pytest.approx(1e-5, rel=1e-3)
    assert gdp_epsilon(0.0, 1e-5) == 0.0 and gdp_epsilon(-1.0, 1e-5) == 0.0
    assert gdp_epsilon(1.0, 1e-5) > gdp_epsilon(1.0, 1e-3) > gdp_epsilon(0.5, 1e-3)
    with pytest.raises(ValueError, match="delta"):
        gdp_epsilon(1.0, 0.0)


def test_empirical_epsilon_recovers_a_known_mu():
    rng = np.random.default_rng(0)
    spread = 0.01
    estimate = empirical_epsilon(
        rng.normal(2 * spread, spread, 400), rng.normal(0, spread, 2000), delta=1e-4
    )
    assert estimate.mu == pytest.approx(2.0, abs=0.2)
    assert estimate.low <= gdp_epsilon(2.0, 1e-4) <= estimate.high
    nothing = empirical_epsilon(rng.normal(0, spread, 400), rng.normal(0, spread, 2000), delta=1e-4)
    assert nothing.low == 0.0 and nothing.epsilon < estimate.low


def test_auc_and_chance():
    assert auc(np.array([2.0, 3.0]), np.array([0.0, 1.0])) == 1.0
    assert auc(np.array([1.0, 1.0]), np.array([1.0])) == 0.5
    assert chance_of_any(100, 10, 1) == pytest.approx(0.1)
    assert chance_of_any(100, 10, 0) == 0.0 and chance_of_any(12, 10, 5) == 1.0


def test_canary_devices_copy_real_data_under_their_own_ids():
    population = synthetic_population(4, n_items=20, dim=8)
    extended = with_canaries(population, 3)
    assert len(extended.devices) == 7 and len(population.devices) == 4
    assert [d.device_id for d in extended.devices[4:]] == [f"canary-{n:04d}" for n in range(3)]
    with pytest.raises(ValueError, match="canaries"):
        with_canaries(population, 0)


@pytest.mark.parametrize(
    ("argv", "message"),
    [
        ([], "RUN_DIR"),
        (["somewhere", "--population", "marketplace"], "RUN_DIR"),
        (["--population", "moon"], "--population"),
        (["--population", "marketplace", "--canaries", "1"], "--canaries"),
    ],
)
def test_audit_rejects_bad_input(argv, message, capsys):
    assert main(["audit", *argv]) == 2
    err = capsys.readouterr().err
    assert message in err and "Traceback" not in err


def test_audit_of_a_folder_without_a_run_says_so(tmp_path, capsys):
    assert main(["audit", str(tmp_path)]) == 2
    assert "no simulation" in capsys.readouterr().err


def _report(tmp_path, *, dp: bool, ledger: float | None, low: float):
    config = config_from_dict({"federation": {"dp": dp, "clients_per_round": 20}})
    plan = PrivacyPlan.from_spec(RunSpec(config, "marketplace", 100, tmp_path))
    estimate = EpsilonEstimate(low + 5, low, low + 10, 3.0, plan.delta, 0.95)
    report = AuditReport(tmp_path, plan.delta, plan.against_whom(), ledger, (20, 1000), estimate)
    audit_verdict(report, plan)
    return format_audit(report)


def test_the_verdict_compares_the_interval_with_the_ledger(tmp_path):
    assert "FAIL: empirical epsilon" in _report(tmp_path, dp=True, ledger=4.0, low=4.5)
    passed = _report(tmp_path, dp=True, ledger=4.0, low=3.5)
    assert passed.endswith("PASS: no check failed") and "delta 1.0e-03, unit user" in passed
    leak = _report(tmp_path, dp=False, ledger=None, low=20.0)
    assert "LEAK: no user-level DP" in leak and "FAIL" not in leak and "PASS" not in leak
    assert "nothing bounds" in leak
    assert "PASS" in _report(tmp_path, dp=False, ledger=None, low=0.0)


def test_a_run_without_canaries_or_recorded_payloads_still_gets_its_membership_audit(audited):
    run = audited["noised"]
    hidden = [run / "canaries.json", run / "wiretap.json"]
    for path in hidden:
        path.rename(path.with_suffix(".hidden"))
    try:
        report = audit_run(run)
        text = format_audit(report)
    finally:
        for path in hidden:
            path.with_suffix(".hidden").rename(path)
    assert report.empirical is None and report.raw is None and report.membership is not None
    assert "the run has no canaries" in text and "recorded no payloads" in text
    assert text.endswith("PASS: no check failed")
