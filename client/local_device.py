"""What the ClientApp needs of one device, however it is provided.

``LocalDevice``: the device's training and held-out examples, the public item table they
index, its encrypted store (user vector, accountant), its own settings and privacy policy,
the public items' attributes (for its
personal preferences), and where its randomness comes from:
the operating system on a real device (noise that protects an update must be unpredictable
to the server), a private seed in a simulation (runs must be reproducible).

``stored_device`` builds one from a real device folder (``client.device``); simulations
build theirs from a population (``simulation.devices``).
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np

from client.device import Device, load_public_items, training_data
from client.privacy import DevicePolicy
from client.store import DeviceStore
from common.config import ConfigError, DeviceConfig
from common.data.searches import DeviceData
from common.federation.run_spec import RunSpec
from common.model.personalization import AttributeTable
from common.model.query_facets import QueryFacets
from common.privacy.keystream import KeystreamRandom


@dataclass
class LocalDevice:
    """One device as the ClientApp sees it (see the module doc)."""

    data: DeviceData
    item_vectors: np.ndarray
    store: DeviceStore
    config: DeviceConfig
    seed_parts: tuple[object, ...] | None = None  # None: randomness from the OS
    attributes: AttributeTable | None = None  # the public items' categorical attributes
    facets: QueryFacets | None = None  # the public items' facets a query can name
    public_items: int | None = None  # rows of item_vectors from the public catalog (None: all)

    @property
    def policy(self) -> DevicePolicy:
        return DevicePolicy.from_config(self.config)

    def random(self, purpose: str, round_number: int) -> KeystreamRandom:
        """A fresh generator for one use (``purpose``) in one round."""
        if self.seed_parts is None:
            return KeystreamRandom.from_os()
        return KeystreamRandom.from_seed(*self.seed_parts, purpose, round_number)

    def seed(self, purpose: str, round_number: int) -> int:
        """A 63-bit seed for libraries that take one (torch, numpy), from ``random``."""
        return int(self.random(purpose, round_number).uint64(1)[0] >> np.uint64(1))


def stored_device(spec: RunSpec, node_config: Mapping[str, Any]) -> LocalDevice:
    """A real device: the device folder named by node config ``device-dir``."""
    if "device-dir" not in node_config:
        raise ConfigError("node config: device-dir is not set (fedsearch device join sets it)")
    device = Device(Path(str(node_config["device-dir"])))
    data, _, vectors = training_data(device, spec.config.population.holdout_fraction)
    public = len(load_public_items(device)[0])
    return LocalDevice(
        data, vectors, device.open_store(), device.device_config(), public_items=public
    )
