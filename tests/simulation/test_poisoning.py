"""Poisoning devices (``simulation.poisoning``): exactly the chosen devices' payloads change,
the emulated norm proofs bound what they move the sum by, and ``--attack`` refuses bad
values by name.

One seeded round on a small synthetic population, run clean and with a quarter of the
devices attacking (boosted 20x) under the defence: the cohort, the honest devices' payloads
and every device's noise share are the same in both runs, so the sums differ by the
attackers' payloads alone.
"""

from __future__ import annotations

import numpy as np
import pytest

from common.cli import main
from common.config import ConfigError
from common.federation.privacy_plan import PrivacyPlan
from common.model.adapter import QueryAdapter
from simulation.audit import audit_simulation
from simulation.engine import simulate
from simulation.poisoning import (
    AttackPlan,
    choose_attackers,
    malicious_update,
    parse_attack,
    read_attack_settings,
)
from simulation.synthetic import synthetic_population
from simulation.wiretap import read_tap
from tests.simulation.conftest import small_federation_config

PAYLOAD = "fitres.parameters"


@pytest.fixture(scope="module")
def runs(tmp_path_factory):
    population = synthetic_population(16, n_items=60, dim=16, seed=1)
    plans = {
        "clean": None,
        "defended": AttackPlan("boost", 0.25, 20.0, "verified-norm"),
    }
    out = {}
    for name, attack in plans.items():
        tmp = tmp_path_factory.mktemp(name)
        config = small_federation_config(tmp, rank=4, rounds=1, per_round=8, warm_start=False)
        result = simulate(
            config,
            "marketplace",
            population=population,
            run_dir=tmp / "run",
            wiretap=tmp / "tap",
            wiretap_positions=("plain",),
            attack=attack,
        )
        payloads = {
            e["node"]: next(iter(e["records"][PAYLOAD]["items"].values()))
            for e in read_tap(tmp / "tap" / "plain")
            if PAYLOAD in e["records"]
        }
        total = np.load(tmp / "tap" / "server" / "round-1.npy")
        out[name] = {"result": result, "payloads": payloads, "sum": total}
    return out


def test_the_attack_changes_exactly_the_chosen_devices_payloads(runs):
    settings = read_attack_settings(runs["defended"]["result"].run_dir)
    assert settings is not None and settings.devices == choose_attackers(16, 0.25, seed=0)
    clean, attacked = runs["clean"]["payloads"], runs["defended"]["payloads"]
    assert sorted(clean) == sorted(attacked)
    changed = {n for n in clean if not np.array_equal(clean[n], attacked[n])}
    sampled_attackers = set(settings.devices) & set(clean)
    assert sampled_attackers, "no attacker was sampled in the round: the test checks nothing"
    assert changed == sampled_attackers


def test_verified_norm_bounds_what_attackers_move_the_sum_by(runs):
    plan = PrivacyPlan.from_spec(runs["clean"]["result"].spec)
    settings = read_attack_settings(runs["defended"]["result"].run_dir)
    attackers = len(set(settings.devices) & set(runs["clean"]["payloads"]))
    moved = float(np.linalg.norm(runs["defended"]["sum"] - runs["clean"]["sum"]))
    # each attacker swaps a payload within payload_norm for one the proof lets through
    assert 0 < moved <= attackers * 2 * plan.payload_norm * (1 + 1e-3)


def test_without_verified_norms_an_attacker_skips_its_clipping():
    population = synthetic_population(8, n_items=60, dim=16, seed=2)
    weights = QueryAdapter(16, 4).get_weights()
    size = sum(w.size for w in weights)
    honest = np.full(size, 1.0 / np.sqrt(size))  # norm 1: the clipping norm
    own = population.devices[0].train
    for kind in ("boost", "signflip"):
        for defence, least, most in (
            ("dp-clipping", 5.0, np.inf),
            ("sum-bound", 5.0, 20.0 + 1e-6),
            ("verified-norm", 0.5, 1.0 + 1e-6),
        ):
            settings = AttackPlan(kind, 0.25, 20.0, defence).settings(population, seed=0)
            update = malicious_update(settings, honest, weights, population.item_vectors, 1.0, own)
            assert least <= np.linalg.norm(update) <= most, (kind, defence)


def test_attackers_are_seeded_and_the_targeted_update_reaches_its_goal():
    assert choose_attackers(200, 0.05, seed=3) == choose_attackers(200, 0.05, seed=3)
    assert choose_attackers(200, 0.05, seed=3) != choose_attackers(200, 0.05, seed=4)
    assert len(choose_attackers(200, 0.01, seed=0)) == 2
    population = synthetic_population(8, n_items=60, dim=16, seed=2)
    settings = AttackPlan("target", 0.1, 1.0).settings(population, seed=0)
    weights = QueryAdapter(16, 4).get_weights()
    before = settings.target.rank(population.item_vectors, QueryAdapter.from_weights(weights))
    update = malicious_update(settings, np.zeros(1), weights, population.item_vectors, 1.0)
    moved, start = [], 0
    for w in weights:
        moved.append(w + update[start : start + w.size].reshape(w.shape))
        start += w.size
    after = settings.target.rank(population.item_vectors, QueryAdapter.from_weights(moved))
    assert before > 10 and after == 1


@pytest.mark.parametrize(
    "value", ["flood:0.1", "boost", "boost:1.5", "boost:0", "target:x", "signflip:0.1:-2"]
)
def test_bad_attack_values_are_refused_naming_the_option(value, capsys):
    with pytest.raises(ValueError):
        parse_attack(value)
    assert main(["simulate", "--population", "marketplace", "--attack", value]) == 2
    err = capsys.readouterr().err
    assert "--attack" in err and "Traceback" not in err


def test_defence_without_attack_is_refused(capsys):
    argv = ["simulate", "--population", "marketplace", "--defence", "verified-norm"]
    assert main(argv) == 2
    assert "--defence" in capsys.readouterr().err


def test_the_sum_bound_defence_switches_the_servers_check_on(tmp_path, monkeypatch):
    import simulation.engine as engine

    seen = []

    def stop(spec, population, **_):
        seen.append(spec.config.federation.sum_bound)
        raise RuntimeError("stop before the run")

    monkeypatch.setattr(engine, "prepare_run", stop)
    config = small_federation_config(tmp_path, rank=4, rounds=1, per_round=4)
    population = synthetic_population(8, n_items=60, dim=16, seed=1)
    for defence in ("dp-clipping", "sum-bound"):
        with pytest.raises(RuntimeError, match="stop before the run"):
            simulate(
                config,
                "marketplace",
                population=population,
                run_dir=tmp_path / defence,
                attack=AttackPlan("boost", 0.25, defence=defence),
            )
    assert seen == [False, True]


def test_attacks_and_audits_refuse_adaptive_clipping(tmp_path):
    """Both are sized to a fixed clipping norm: they say so before anything runs."""
    config = small_federation_config(
        tmp_path, rank=4, rounds=1, per_round=2, adaptive_clipping=True
    )
    with pytest.raises(ConfigError, match="federation.adaptive_clipping: attacks"):
        simulate(config, "marketplace", attack=AttackPlan("boost", 0.1, 20.0))
    with pytest.raises(ConfigError, match="federation.adaptive_clipping: canaries"):
        audit_simulation(config, "marketplace", canaries=2)
