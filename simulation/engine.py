"""Run a federated simulation: a population of devices on Flower's Simulation Engine.

``simulate`` loads the population once, checks the privacy budget before starting anything,
writes the population and a store key into the run folder (each simulated device keeps its
private state in ``<run_dir>/devices/<device_id>/``), then runs the very same ServerApp and
ClientApp as ``flwr run .`` with ``flwr.simulation.run_simulation`` (Ray backend, one
Flower node per device). The server writes ``metrics.jsonl`` and ``privacy_ledger.json``.
"""

from __future__ import annotations

import json
import logging
import os
import time
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from client.app import build_client_app
from common.config import Config, config_from_dict
from common.federation.privacy_plan import UserLevelDP
from common.federation.run_spec import RunSpec
from server.federation.app import METRICS_FILE, build_server_app, fit_workflow
from server.federation.ledger import PrivacyLedger
from simulation.devices import save_population, simulated_device, simulation_key
from simulation.loader import load_population
from simulation.population import Population

log = logging.getLogger(__name__)


@dataclass
class SimulationResult:
    spec: RunSpec
    rounds: list[dict[str, Any]]
    wall_seconds: float

    @property
    def run_dir(self) -> Path:
        return self.spec.run_dir

    @property
    def final(self) -> dict[str, Any]:
        """The last round's entry (its evaluation covers every device)."""
        return self.rounds[-1] if self.rounds else {}


def with_overrides(config: Config, **federation: Any) -> Config:
    """``config`` with the given ``federation`` keys replaced (None values ignored)."""
    values = {k: v for k, v in federation.items() if v is not None}
    return config_from_dict({"federation": values}, config) if values else config


def default_run_dir(config: Config, population: str) -> Path:
    stamp = time.strftime("%Y%m%d-%H%M%S")
    return config.paths.work / "simulations" / f"{population}-{stamp}-{os.getpid()}"


def prepare_run(spec: RunSpec, population: Population) -> None:
    """Refuse an over-budget or oversized plan, then lay out the run folder for the devices."""
    dp = UserLevelDP.from_spec(spec)
    if dp is not None:
        PrivacyLedger.for_plan(dp).check_plan(spec.config.federation.rounds)
    fit_workflow(spec)  # refuses rounds too large for SecAgg+
    spec.run_dir.mkdir(parents=True, exist_ok=True)
    save_population(population, spec.run_dir)
    simulation_key(spec.device_key_file)
    (spec.run_dir / "run.json").write_text(
        json.dumps(
            {
                "population": spec.population,
                "num_devices": spec.num_devices,
                "base_model": spec.base_model,
                "federation": spec.config.federation.model_dump(),
                "device": spec.config.device.model_dump(),
                "adapter": spec.config.adapter.model_dump(),
                "evaluation": spec.config.evaluation.model_dump(),
            },
            indent=2,
        ),
        "utf-8",
    )


def simulate(
    config: Config,
    population_name: str,
    *,
    num_devices: int | None = None,
    population: Population | None = None,
    run_dir: Path | None = None,
    outer_mods: Sequence = (),
    inner_mods: Sequence = (),
    verbose: bool = False,
) -> SimulationResult:
    """Run ``config.federation.rounds`` federated rounds over the population's devices.

    ``outer_mods`` / ``inner_mods`` are extra client mods (``client.app.build_client_app``).
    """
    os.environ.setdefault("FLWR_TELEMETRY_ENABLED", "0")
    if population is None:
        population = load_population(
            population_name, config, num_devices=num_devices, seed=config.federation.seed
        )
    spec = RunSpec(
        config=config,
        population=population_name,
        num_devices=len(population.devices),
        run_dir=Path(run_dir) if run_dir else default_run_dir(config, population_name),
        base_model=str(population.info.get("encoder", "")),
    )
    prepare_run(spec, population)
    start = time.perf_counter()
    _run_engine(spec, outer_mods, inner_mods, verbose)
    wall = time.perf_counter() - start
    return SimulationResult(spec, read_rounds(spec.run_dir), wall)


def _run_engine(spec: RunSpec, outer_mods: Sequence, inner_mods: Sequence, verbose: bool) -> None:
    from flwr.simulation import run_simulation

    logging.getLogger("flwr").propagate = False
    run_simulation(
        server_app=build_server_app(spec),
        client_app=build_client_app(
            spec, source=simulated_device, outer_mods=outer_mods, inner_mods=inner_mods
        ),
        num_supernodes=spec.num_devices,
        backend_config={
            "client_resources": {"num_cpus": spec.config.federation.client_cpus, "num_gpus": 0.0},
            "init_args": {"log_to_driver": verbose},
        },
        verbose_logging=verbose,
    )


def read_rounds(run_dir: Path) -> list[dict[str, Any]]:
    path = run_dir / METRICS_FILE
    if not path.is_file():
        return []
    return [json.loads(line) for line in path.read_text("utf-8").splitlines() if line.strip()]
