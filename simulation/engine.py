"""Run a federated simulation: a population of devices on Flower's simulation runtime.

``simulate`` loads the population once, checks the privacy budget before starting anything,
and lays out the run folder: the population and a store key for the devices (each simulated
device keeps its private state in ``<run_dir>/devices/<device_id>/``), the run's config
(``config.toml``) and a Flower app folder (``app/pyproject.toml``) naming the ServerApp and
the ClientApp of ``simulation.apps``, which are the deployment's apps with the population
injected. It then starts a local SuperLink in simulation mode and submits the app with
``flwr run`` (one virtual SuperNode per device on Ray), following the rounds as the server
writes them to ``metrics.jsonl``; Flower's own log goes to ``<run_dir>/flower.log``.

``resume_simulation`` continues a run folder whose server was killed, on a new SuperLink,
after its last recorded round (``server.federation.resume``).
"""

from __future__ import annotations

import hashlib
import json
import logging
import os
import subprocess
import time
import tomllib
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import tomli_w

from client.privacy import DevicePolicy, PolicyRefusal
from common.config import Config, ConfigError, config_from_dict
from common.federation.payload import PayloadCodec
from common.federation.privacy_plan import PrivacyPlan
from common.federation.run_spec import RunSpec
from common.model.adapter import QueryAdapter
from common.progress import progress_bar
from common.security.signing import generate_signing_key
from server.federation.app import open_ledger
from server.federation.recorder import METRICS_FILE
from server.federation.resume import check_resumable
from server.federation.secure_aggregation import fit_workflow
from server.training.warm_start import train_warm_start
from simulation.devices import run_public_key, save_population, simulation_key
from simulation.faults import write_fault_settings
from simulation.loader import load_population
from simulation.poisoning import AttackPlan, write_attack_settings
from simulation.population import Population
from simulation.superlink import SIMULATION_CONNECTION, LocalSuperLink
from simulation.wiretap import write_tap_settings

log = logging.getLogger(__name__)
RUN_CONFIG_FILE = "config.toml"
WARM_START_FILE = "warm_start.safetensors"
FLOWER_LOG = "flower.log"


class SimulationError(RuntimeError):
    """The simulation did not complete its rounds; the message carries Flower's log."""


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


def absolute_paths(config: Config) -> Config:
    """``config`` with its data and work folders made absolute."""
    paths = {
        "data_dir": str(config.paths.data.resolve()),
        "work_dir": str(config.paths.work.resolve()),
    }
    return config_from_dict({"paths": paths}, config)


def default_run_dir(config: Config, population: str) -> Path:
    """A new folder under ``<work_dir>/simulations``."""
    stamp = time.strftime("%Y%m%d-%H%M%S")
    return (config.paths.work / "simulations" / f"{population}-{stamp}-{os.getpid()}").resolve()


def prepare_run(spec: RunSpec, population: Population, *, reset_ledger: bool = False) -> None:
    """Refuse an over-budget or oversized plan, then lay out the run folder: the population
    and store key for the devices, a signing key for the server (its public half is what
    the simulated devices trust), and ``run.json``."""
    plan = PrivacyPlan.from_spec(spec)
    fit_workflow(spec, plan)  # refuses rounds too large for SecAgg+
    ledger = open_ledger(spec, plan)
    if ledger is not None and reset_ledger:
        ledger.path.unlink(missing_ok=True)
        ledger = open_ledger(spec, plan)
    if ledger is not None:
        weights = QueryAdapter(spec.embedding_dim, spec.config.adapter.rank).get_weights()
        size = PayloadCodec.for_plan(weights, plan).size
        ledger.check_plan(plan.planned_rdp(size, first=1), spec.config.federation.rounds)
    spec.run_dir.mkdir(parents=True, exist_ok=True)
    if spec.initial_adapter:
        write_warm_start(spec, population)
    save_population(population, spec.run_dir)
    simulation_key(spec.device_key_file)
    signing = spec.run_dir / "signing"
    generate_signing_key(signing / "signing.key", run_public_key(spec))
    settings: dict[str, Any] = {"population": spec.population, "population_id": spec.population_id}
    settings |= {"num_devices": spec.num_devices, "base_model": spec.base_model}
    settings |= {"against": plan.against_whom(), **spec.config.model_dump(exclude={"paths"})}
    (spec.run_dir / "run.json").write_text(json.dumps(settings, indent=2), "utf-8")


def write_warm_start(spec: RunSpec, population: Population) -> None:
    """Train the adapter's public warm start on the population's catalog phrases."""
    assert population.phrases is not None
    phrases = population.phrases
    adapter = train_warm_start(
        phrases.vectors,
        phrases.items,
        population.item_vectors,
        rank=spec.config.adapter.rank,
        steps=spec.config.federation.warm_start_steps,
        seed=spec.config.federation.seed,
    )
    adapter.save(Path(spec.initial_adapter))


def population_id(name: str, population: Population) -> str:
    """The ledger name of a population: its kind and a digest of its devices' ids."""
    digest = hashlib.sha256("\n".join(d.device_id for d in population.devices).encode())
    return f"{name}-{len(population.devices)}-{digest.hexdigest()[:12]}"


def simulate(
    config: Config,
    population_name: str,
    *,
    num_devices: int | None = None,
    population: Population | None = None,
    run_dir: Path | None = None,
    wiretap: Path | None = None,
    wiretap_content: bool = True,
    wiretap_positions: Sequence[str] = ("wire", "plain"),
    ray_address: str = "",
    reset_ledger: bool = False,
    dropout: float = 0.0,
    dropout_stages: Sequence[str] = ("unmask",),
    dropout_silent_s: float = 0.0,
    dropout_rounds: Sequence[int] = (),
    attack: AttackPlan | None = None,
    verbose: bool = False,
) -> SimulationResult:
    """Run ``config.federation.rounds`` federated rounds over the population's devices.

    The population's ledger (``federation.ledger_dir``) composes every run on the same simulated
    people; ``reset_ledger`` starts it afresh (they are fictional, after all). ``dropout``: that
    fraction of each round's devices fails, each at one of ``dropout_stages`` (after
    ``dropout_silent_s`` of silence; in ``dropout_rounds``, empty: all; ``simulation.faults``);
    SecAgg+ is sized to survive that fraction (not ``federation.dropout_tolerance``, which is
    for devices that really drop). ``attack``: a seeded share of the devices poison their
    payloads (``simulation.poisoning``; its ``sum-bound`` defence switches
    ``federation.sum_bound`` on). ``wiretap``: record every reply the devices send, and the
    server's payload sums, into this folder (``simulation.wiretap``; ``wiretap_content`` False
    keeps sizes only; ``wiretap_positions`` picks the device taps). ``ray_address``: run on that
    Ray cluster. ``verbose``: show Flower's log as it runs.
    """
    if attack is not None and config.federation.adaptive_clipping:
        raise ConfigError(
            "federation.adaptive_clipping: attacks are simulated at a fixed clipping norm "
            "(an attacker could also skew the unclipped count it reports); set it to false"
        )
    if population is None:
        population = load_population(
            population_name, config, num_devices=num_devices, seed=config.federation.seed
        )
    if attack is not None and attack.defence == "sum-bound":
        config = with_overrides(config, sum_bound=True)  # that defence is the server's check
    # Simulated devices drop only where ``dropout`` says so: SecAgg+'s neighbourhoods are
    # sized for that (their size changes the cost of a round, never its figures).
    config = config_from_dict({"federation": {"dropout_tolerance": dropout}}, config)
    config = absolute_paths(config)  # the apps run in other processes, other folders
    folder = Path(run_dir).resolve() if run_dir else default_run_dir(config, population_name)
    warm = config.federation.warm_start and population.phrases is not None
    spec = RunSpec(
        config=config,
        population=population_name,
        num_devices=len(population.devices),
        run_dir=folder,
        base_model=str(population.info.get("encoder", "")),
        population_id=population_id(population_name, population),
        embedding_dim=int(population.item_vectors.shape[1]),
        initial_adapter=str(folder / WARM_START_FILE) if warm else "",
    )
    check_device_policy(spec)
    prepare_run(spec, population, reset_ledger=reset_ledger)
    if wiretap is not None:
        write_tap_settings(
            spec.run_dir,
            Path(wiretap).resolve(),
            keep_content=wiretap_content,
            positions=wiretap_positions,
        )
    if dropout:
        write_fault_settings(
            spec.run_dir,
            fraction=dropout,
            stages=dropout_stages,
            seed=config.federation.seed,
            silent_s=dropout_silent_s,
            rounds=dropout_rounds,
        )
    if attack is not None:
        seed = config.federation.seed
        write_attack_settings(spec.run_dir, attack.settings(population, seed=seed))
    return launch(spec, ray_address=ray_address, verbose=verbose)


def check_device_policy(spec: RunSpec) -> None:
    """``ConfigError`` if the simulated devices' own policy (``[device]``) would refuse
    every round of the run, instead of a run whose rounds are all dropped."""
    try:
        DevicePolicy.from_config(spec.config.device).check(PrivacyPlan.from_spec(spec))
    except PolicyRefusal as exc:
        raise ConfigError(
            f"the simulated devices would refuse every round: {exc}; a simulation's devices "
            "follow its [device] settings (device.require_secagg, device.require_noise, "
            "device.min_noise_multiplier, device.max_clipping_norm, device.max_epsilon_user)"
        ) from None


def launch(
    spec: RunSpec, *, ray_address: str = "", verbose: bool = False, resume: bool = False
) -> SimulationResult:
    """Run the prepared ``spec`` on a new local SuperLink (``resume``: after the rounds
    its folder recorded)."""
    start = time.perf_counter()
    signing_key = spec.run_dir / "signing" / "signing.key"
    with LocalSuperLink(
        spec.run_dir / "flwr", ray_address=ray_address, signing_key=signing_key
    ) as link:
        run_app(link, spec, ray_address=ray_address, verbose=verbose, resume=resume)
    return SimulationResult(spec, read_rounds(spec.run_dir), time.perf_counter() - start)


def resume_simulation(
    run_dir: Path, *, ray_address: str = "", verbose: bool = False
) -> SimulationResult:
    """Continue the simulation in ``run_dir`` (killed mid-run) with its own config and
    population, after its last recorded round; the population's ledger keeps its charges."""
    project = Path(run_dir).resolve() / "app" / "pyproject.toml"
    if not project.is_file():
        raise ConfigError(f"--resume: {run_dir} is not a simulation folder (no {project.name})")
    settings = tomllib.loads(project.read_text(encoding="utf-8"))["tool"]["flwr"]["app"]
    spec = RunSpec.from_run_config(
        {k: v for k, v in settings["config"].items() if k != "resume"}, 0
    )
    check_resumable(PrivacyPlan.from_spec(spec).tree)
    return launch(spec, ray_address=ray_address, verbose=verbose, resume=True)


def write_app(spec: RunSpec, *, resume: bool = False) -> Path:
    """The run's Flower app folder: a pyproject.toml naming the apps and the run config."""
    config_file = spec.run_dir / RUN_CONFIG_FILE
    config_file.write_text(tomli_w.dumps(spec.config.model_dump()), encoding="utf-8")
    app = spec.run_dir / "app"
    app.mkdir(exist_ok=True)
    project = {
        "build-system": {"requires": ["setuptools"], "build-backend": "setuptools.build_meta"},
        "project": {"name": "fedsearch-simulation", "version": "1.0.0"},
        "tool": {
            "flwr": {
                "app": {
                    "publisher": "fedsearch",
                    "components": {
                        "serverapp": "simulation.apps:server_app",
                        "clientapp": "simulation.apps:client_app",
                    },
                    "config": {
                        "population": spec.population,
                        "num-devices": spec.num_devices,
                        "run-dir": str(spec.run_dir),
                        "config-file": str(config_file),
                        "base-model": spec.base_model,
                        "population-id": spec.population_id,
                        "embedding-dim": spec.embedding_dim,
                        "initial-adapter": spec.initial_adapter,
                        "resume": "true" if resume else "",
                    },
                }
            }
        },
    }
    (app / "pyproject.toml").write_text(tomli_w.dumps(project), encoding="utf-8")
    return app


def run_app(
    link: LocalSuperLink, spec: RunSpec, *, ray_address: str, verbose: bool, resume: bool = False
) -> None:
    """``flwr run`` the run's app on ``link`` and follow its rounds until it ends."""
    federation = spec.config.federation
    options = [f"num-supernodes={spec.num_devices}"]
    options.append(f"client-resources-num-cpus={federation.client_cpus}")
    if not verbose:  # the devices' log lines stay in their processes
        options.append("init-args-log-to-driver=false")
    if not ray_address:
        options.append(f"init-args-num-cpus={os.cpu_count() or 1}")
    command = ["flwr", "run", str(write_app(spec, resume=resume)), SIMULATION_CONNECTION]
    command.append("--stream")
    command += ["--federation-config", " ".join(options)]
    log_path = spec.run_dir / FLOWER_LOG
    with log_path.open("ab" if resume else "wb") as log_file:
        process = subprocess.Popen(
            command, env=link.env(), stdout=None if verbose else log_file,
            stderr=subprocess.STDOUT if not verbose else None,
        )  # fmt: skip
        follow_rounds(spec, process)
    rounds = read_rounds(spec.run_dir)
    if process.returncode != 0 or len(rounds) < federation.rounds:
        raise SimulationError(
            f"the simulation stopped after {len(rounds)} of {federation.rounds} rounds "
            f"(flwr run exit status {process.returncode}); Flower's log:\n{_tail(log_path)}"
        )


def follow_rounds(spec: RunSpec, process: subprocess.Popen[bytes]) -> None:
    """A progress bar over the rounds the server records, until ``process`` ends."""
    bar = progress_bar(total=spec.config.federation.rounds, desc="federated rounds")
    seen = 0
    while True:
        done = process.poll() is not None
        rounds = read_rounds(spec.run_dir)
        for entry in rounds[seen:]:
            bar.update(1)
            bar.set_postfix_str(round_postfix(entry))
        seen = len(rounds)
        if done:
            break
        time.sleep(0.5)
    bar.close()


def round_postfix(entry: dict[str, Any]) -> str:
    """``eps=.. nDCG=..`` for one recorded round."""
    personal = entry.get("evaluate", {}).get("personal.nDCG@10")
    eps = entry.get("epsilon_user")
    return (f"eps={eps:.2f}" if eps is not None else "eps=off") + (
        f" nDCG={personal:.3f}" if personal is not None else ""
    )


def _tail(path: Path, lines: int = 40) -> str:
    text = path.read_text(encoding="utf-8", errors="replace") if path.is_file() else ""
    return "\n".join(text.splitlines()[-lines:])


def read_rounds(run_dir: Path) -> list[dict[str, Any]]:
    path = run_dir / METRICS_FILE
    if not path.is_file():
        return []
    return [json.loads(line) for line in path.read_text("utf-8").splitlines() if line.strip()]
