"""What the server and every device of one federated run agree on, and their message vocabulary.

A ``RunSpec`` is built once by ``fedsearch simulate`` (and handed to both apps), or from a
Flower run config (``flwr run .``: the ``[tool.flwr.app.config]`` table of pyproject.toml
and ``--run-config`` overrides): ``section.key`` entries override the fedsearch config read
from ``config-file`` (a TOML file; empty: the defaults), and an empty string leaves a key
unset (flwr only accepts overrides of keys the table lists). ``resume`` ("true"): the
server continues the run in ``run-dir`` after its last recorded round.
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass, replace
from pathlib import Path
from typing import Any

from common.config import Config, ConfigError, load_config

RUN_KEYS = (
    "population",
    "population-id",
    "num-devices",
    "run-dir",
    "config-file",
    "base-model",
    "embedding-dim",
    "initial-adapter",
    "resume",
)


def base_model_label(config: Config) -> str:
    """The version label of the encoder ``config`` names (``Encoder.version``), found where
    every command finds it (``paths.encoders``); what a published version records."""
    from common.model.encoder_files import resolve_encoder

    encoder = config.encoder
    return resolve_encoder(encoder.model, encoder.pretrained, encoder_dir=config.paths.encoders)[1]


@dataclass(frozen=True)
class RunSpec:
    """Config, population and run folder of one federated run.

    ``num_devices`` is the population size (one Flower node per device, partition id =
    device index); ``run_dir`` holds the devices' private state folders and the report.
    ``population_id`` names the population's privacy ledger: every run on the same people
    composes in it (default: the population's name). ``embedding_dim``: the item vectors'
    dimension (0: the configured encoder's). ``initial_adapter``: a safetensors file the
    run starts from (a public warm start; "": the identity).
    """

    config: Config
    population: str
    num_devices: int
    run_dir: Path
    base_model: str = ""
    population_id: str = ""
    embedding_dim: int = 0
    initial_adapter: str = ""

    def __post_init__(self) -> None:
        if self.population not in ("retail", "marketplace"):
            raise ConfigError(
                f"population: expected retail or marketplace, got {self.population!r}"
            )
        if self.num_devices < 2:
            raise ConfigError(
                f"num-devices: a federation needs >= 2 devices, got {self.num_devices}"
            )

    @property
    def devices_dir(self) -> Path:
        return self.run_dir / "devices"

    @property
    def device_key_file(self) -> Path:
        return self.run_dir / "device.key"

    @property
    def delta_user(self) -> float:
        """User-level delta: the configured one, else 1 / (10 x population), well below the
        1 / population at which a mechanism could publish one person's data outright."""
        return self.config.federation.delta_user or 0.1 / self.num_devices

    @property
    def ledger_name(self) -> str:
        return self.population_id or self.population

    @property
    def expected_devices(self) -> int:
        """The expected number of devices per round, q * population (at least 1)."""
        return max(1, round(self.sample_rate * self.num_devices))

    @property
    def sample_rate(self) -> float:
        """Probability that a device joins a round: clients_per_round / population."""
        return min(1.0, self.config.federation.clients_per_round / self.num_devices)

    @classmethod
    def from_run_config(cls, run_config: Mapping[str, Any], run_id: int) -> RunSpec:
        """Build from a flat Flower run config (see the module doc)."""
        overrides: dict[str, Any] = {}
        for key, value in run_config.items():
            if key in RUN_KEYS:
                continue
            if "." not in key:
                raise ConfigError(f"run config: unknown key {key!r} (known: {', '.join(RUN_KEYS)})")
            if value == "":
                continue  # listed so that `flwr run --run-config` may set it; unset here
            section, name = key.split(".", 1)
            overrides.setdefault(section, {})[name.replace("-", "_")] = value
        config_file = str(run_config.get("config-file", "") or "") or None
        config = load_config(config_file, overrides or None)
        run_dir = str(run_config.get("run-dir", "") or "")
        spec = cls(
            config=config,
            population=str(run_config.get("population", "marketplace")),
            num_devices=int(run_config.get("num-devices", 0)),
            run_dir=Path(run_dir)
            if run_dir
            else config.paths.work / "federation" / f"run-{run_id}",
            base_model=str(run_config.get("base-model", "")),
            population_id=str(run_config.get("population-id", "")),
            embedding_dim=int(run_config.get("embedding-dim", 0) or 0),
            initial_adapter=str(run_config.get("initial-adapter", "")),
        )  # checks the run's own keys before the encoder is looked up
        return spec if spec.base_model else replace(spec, base_model=base_model_label(config))
