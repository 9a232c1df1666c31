"""Simulated devices for the ClientApp: one device per member of a population.

The simulation injects ``simulated_device`` into ``client.app.build_client_app``: node
config ``partition-id`` picks the device of the run's population (loaded once per process
from the run folder), whose private state lives in ``<run_dir>/devices/<device_id>/`` (an
encrypted store, one key per run, as a real device keeps its own). Every simulated device
has the simulation config's ``device`` settings and policy, and draws its randomness
(training, noise share, SecAgg+'s rounding) from ``federation.seed`` and its partition, so
that two runs of one command give identical figures (``tests/simulation/test_repeat.py``).
"""

from __future__ import annotations

import fcntl
import functools
import pickle
import re
from collections.abc import Mapping
from pathlib import Path
from typing import Any

from client.local_device import LocalDevice
from client.store import DeviceStore, load_key, write_key_file
from common.config import ConfigError
from common.federation.run_spec import RunSpec
from common.files import atomic_write
from simulation.loader import load_population
from simulation.population import Population

POPULATION_FILE = "population.pkl"


def simulated_device(spec: RunSpec, node_config: Mapping[str, Any]) -> LocalDevice:
    """The device ``partition-id`` of the run's population (see the module doc)."""
    if "partition-id" not in node_config:
        raise ConfigError("node config: a simulated device needs partition-id")
    index = int(node_config["partition-id"])
    population = cached_population(spec)
    if not 0 <= index < len(population.devices):
        raise ConfigError(
            f"partition-id {index}: the population has {len(population.devices)} devices"
        )
    data = population.devices[index]
    folder = spec.devices_dir / re.sub(r"[^A-Za-z0-9_.-]", "_", data.device_id)
    # a simulation is rerun, not recovered: its stores skip the sync to disk
    store = DeviceStore(folder, simulation_key(spec.device_key_file), durable=False)
    return LocalDevice(
        data,
        population.item_vectors,
        store,
        spec.config.device,
        seed_parts=(spec.config.federation.seed, index),
        attributes=population.attributes,
        facets=population.facets,
    )


@functools.cache
def run_public_key(spec: RunSpec) -> Path:
    return spec.run_dir / "signing" / "signing.pub"


@functools.cache
def cached_population(spec: RunSpec) -> Population:
    """The run's population, loaded once per process: the runner's pickle if present."""
    path = spec.run_dir / POPULATION_FILE
    if path.is_file():
        with path.open("rb") as fh:
            return pickle.load(fh)
    return load_population(
        spec.population,
        spec.config,
        num_devices=spec.num_devices,
        seed=spec.config.federation.seed,
        progress=False,
    )


def save_population(population: Population, run_dir: Path) -> Path:
    """Write the population where every simulated device of the run finds it."""
    path = run_dir / POPULATION_FILE
    atomic_write(path, pickle.dumps(population, protocol=pickle.HIGHEST_PROTOCOL))
    return path


def simulation_key(path: Path) -> bytes:
    """The simulated devices' store key (``$FEDSEARCH_DEVICE_KEY`` or a per-run key file)."""
    path.parent.mkdir(parents=True, exist_ok=True)
    with open(path.with_name(f".{path.name}.lock"), "a") as fh:
        fcntl.flock(fh, fcntl.LOCK_EX)
        if not path.exists():
            write_key_file(path)
    return load_key(path)
