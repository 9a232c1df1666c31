"""The promotion rule in a seeded simulation: each round's adapter is evaluated by the next
round's devices before it is published, a poisoned one is kept back, and the summary says
what was and was not published."""

from __future__ import annotations

import pytest

from common.security.versions import list_versions, read_manifest
from simulation.engine import simulate
from simulation.poisoning import AttackPlan
from simulation.report import publication
from simulation.synthetic import synthetic_population
from tests.simulation.conftest import small_federation_config

NOISED = {"noise_multiplier": 0.5, "stats_share": 0.5}


@pytest.fixture(scope="module")
def population():
    return synthetic_population(16, n_items=60, dim=16, seed=3)


def _run(tmp, population, attack=None, **federation):
    config = small_federation_config(
        tmp, rank=4, rounds=3, per_round=12, warm_start=False, promote="if-not-worse",
        **federation,
    )  # fmt: skip
    return simulate(
        config, "marketplace", population=population, run_dir=tmp / "run", attack=attack
    )


def test_each_version_is_published_after_the_next_round_judged_it(tmp_path, population):
    result = _run(tmp_path, population, **NOISED)
    first, second, last = result.rounds
    assert first["candidate"] == 1 and "published" not in first
    assert ("published" in second) != ("not_promoted" in second)
    assert last["candidate"] == 3  # nobody evaluated it: it waits
    for folder in list_versions(result.spec.config.paths.registry):
        manifest = read_manifest(folder)
        assert manifest["evaluation"]["round"] == manifest["round"] < 3
    summary = publication(result.rounds, "if-not-worse")
    assert summary["awaiting_evaluation"] == 3
    assert len(summary["published"]) + len(summary["not_promoted"]) == 2  # rounds 1 and 2


def test_a_poisoned_candidate_is_not_promoted(tmp_path, population):
    attack = AttackPlan("boost", 0.5, 1000.0, "dp-clipping")
    # a margin of half a noise deviation: 12 devices a round measure too coarsely for 2
    result = _run(tmp_path, population, attack, **NOISED, promote_margin_sd=0.5)
    refused = [r["not_promoted"] for r in result.rounds if "not_promoted" in r]
    assert refused and all("worse than" in reason for reason in refused)
    assert not list_versions(result.spec.config.paths.registry)
    assert publication(result.rounds, "if-not-worse")["not_promoted"][0].startswith(
        "round 1's adapter: worse than base"
    )
