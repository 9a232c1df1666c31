"""``fedsearch simulate --ray-address``: Flower's simulation runtime on an existing Ray
cluster (a head and a worker node on 127.0.0.1), not on a Ray instance of its own."""

from __future__ import annotations

import pytest

from simulation.engine import simulate
from simulation.synthetic import synthetic_population
from tests.simulation.conftest import small_federation_config

cluster_utils = pytest.importorskip("ray.cluster_utils")


@pytest.fixture
def two_node_cluster():
    cluster = cluster_utils.Cluster(
        initialize_head=True,
        head_node_args={"num_cpus": 1, "include_dashboard": False},
    )
    cluster.add_node(num_cpus=1)
    try:
        yield cluster
    finally:
        cluster.shutdown()


def test_a_simulation_runs_on_an_existing_two_node_cluster(two_node_cluster, tmp_path):
    import ray

    ray.init(address=two_node_cluster.address)
    try:
        nodes = [node for node in ray.nodes() if node["Alive"]]
        assert len(nodes) == 2 and ray.cluster_resources()["CPU"] == 2
    finally:
        ray.shutdown()
    config = small_federation_config(tmp_path, rank=4, rounds=1, per_round=4, warm_start=False)
    population = synthetic_population(6, n_items=60, dim=16, seed=1)
    result = simulate(
        config,
        "marketplace",
        population=population,
        run_dir=tmp_path / "run",
        ray_address=two_node_cluster.address,
    )
    assert len(result.rounds) == 1
    ray.init(address=two_node_cluster.address)
    try:  # the simulation's driver ran as a job of this cluster, beside this test's two
        assert len(ray._private.state.state.job_table()) == 3
    finally:
        ray.shutdown()


def test_without_an_address_the_runtime_starts_its_own_ray(tmp_path):
    """A cluster that `ray start` runs on the machine is not joined by accident (Ray would
    then refuse the runtime's CPU count and the simulation would crash)."""
    from simulation.superlink import LocalSuperLink

    assert LocalSuperLink(tmp_path).env()["RAY_ADDRESS"] == "local"
    assert LocalSuperLink(tmp_path, ray_address="10.0.0.1:6379").env()["RAY_ADDRESS"] == (
        "10.0.0.1:6379"
    )
