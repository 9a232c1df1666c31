"""Load a population of simulated devices by name: ``retail`` or ``marketplace``.

``retail``: real Online Retail customers (``simulation.retail_customers``); ``marketplace``:
simulated shoppers on the real fashion catalog (``simulation.marketplace``).
"""

from __future__ import annotations

import time

from common.config import Config, ConfigError
from common.model.encoder import Encoder, create_encoder
from simulation.marketplace import load_marketplace
from simulation.population import Population
from simulation.retail_customers import load_retail

POPULATIONS = ("retail", "marketplace")


def build_base_encoder(config: Config) -> Encoder:
    """The base encoder ``config.encoder`` names, at its batch size."""
    encoder = create_encoder(
        config.encoder.model,
        config.encoder.pretrained,
        encoder_dir=config.paths.encoders,
        device=config.encoder.device,
    )
    encoder.batch_size = config.encoder.batch_size
    return encoder


def load_population(
    name: str,
    config: Config,
    *,
    num_devices: int | None = None,
    seed: int = 0,
    encoder: Encoder | None = None,
    progress: bool = True,
) -> Population:
    """Build population ``name`` from the data named in ``config`` (see the module doc).

    ``encoder``: the base encoder to use; by default built from ``config.encoder``. Vectors
    are cached under ``<paths.work>/cache``. ``info["load_seconds"]`` records the wall time.
    """
    if name not in POPULATIONS:
        raise ConfigError(f"population: unknown name {name!r} (known: {', '.join(POPULATIONS)})")
    if num_devices is not None and num_devices < 1:
        raise ConfigError(f"num_devices must be >= 1, got {num_devices}")
    start = time.perf_counter()
    if encoder is None:
        encoder = build_base_encoder(config)
    if name == "retail":
        population = load_retail(config, encoder, num_devices, seed, progress)
    else:
        population = load_marketplace(config, encoder, num_devices, seed, progress)
    population.info["encoder"] = encoder.version
    population.info["load_seconds"] = round(time.perf_counter() - start, 2)
    return population
