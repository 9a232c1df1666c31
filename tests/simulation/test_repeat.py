"""A seeded simulation repeats exactly: same cohorts, noise, rounding and figures."""

from __future__ import annotations

from pathlib import Path

import numpy as np

from common.model.adapter import ADAPTER_FILE, QueryAdapter
from simulation.engine import simulate
from simulation.synthetic import synthetic_population
from tests.simulation.conftest import small_federation_config

VARYING = ("elapsed_s", "published")  # wall time; the run's own folder


def _run(tmp_path):
    config = small_federation_config(tmp_path, rank=4, rounds=2, per_round=6, warm_start=False)
    population = synthetic_population(16, n_items=60, dim=16, seed=1)
    result = simulate(config, "marketplace", population=population, run_dir=tmp_path / "run")
    rows = [{k: v for k, v in row.items() if k not in VARYING} for row in result.rounds]
    return rows, result


def test_two_runs_with_one_seed_give_identical_figures_and_weights(tmp_path):
    first, run_a = _run(tmp_path / "a")
    second, run_b = _run(tmp_path / "b")
    assert len(first) == 2 and first == second
    assert first[-1]["fit"]["adapter.nDCG@10"] is not None
    published = [r.final.get("published") for r in (run_a, run_b)]
    assert all(published), published
    weights = [QueryAdapter.load(Path(p) / ADAPTER_FILE).get_weights() for p in published]
    for a, b in zip(*weights, strict=True):
        np.testing.assert_array_equal(a, b)
