"""A small synthetic population (random unit vectors) for tests and smoke runs.

Items fall into ``clusters``; each device prefers one cluster. A search's query vector is a
noisy copy of a random cluster's centre direction, and the device clicks the item of
that cluster it likes most, so a shared adapter and a user vector both have something to
learn. Nothing here reads the shared data or builds an encoder.
"""

from __future__ import annotations

import numpy as np

from common.data.searches import DeviceData, SearchExample
from simulation.population import Population, train_popularity


def synthetic_population(
    num_devices: int = 6,
    *,
    n_items: int = 200,
    dim: int = 32,
    clusters: int = 8,
    train_searches: int = 12,
    test_searches: int = 3,
    shown: int = 10,
    seed: int = 0,
) -> Population:
    rng = np.random.default_rng(seed)
    centres = _unit(rng.normal(size=(clusters, dim)))
    cluster = rng.integers(clusters, size=n_items)
    items = _unit(centres[cluster] + 0.8 * rng.normal(size=(n_items, dim)) / np.sqrt(dim))
    taste = _unit(rng.normal(size=(num_devices, dim)))

    def search(device: int) -> SearchExample:
        c = int(rng.integers(clusters))
        members = np.flatnonzero(cluster == c)
        clicked = int(members[np.argmax(items[members] @ taste[device])])
        query = _unit(centres[c] + 0.5 * rng.normal(size=dim) / np.sqrt(dim))
        impression = rng.choice(n_items, size=shown, replace=False)
        if clicked not in impression:
            impression[0] = clicked
        return SearchExample(query, impression.astype(np.int64), clicked, f"cluster {c}")

    devices = [
        DeviceData(
            f"device-{d:04d}",
            [search(d) for _ in range(train_searches)],
            [search(d) for _ in range(test_searches)],
        )
        for d in range(num_devices)
    ]
    return Population(
        "marketplace",
        [f"item-{i:05d}" for i in range(n_items)],
        items,
        devices,
        train_popularity(devices, n_items),
        [f"item {i}" for i in range(n_items)],
        {"encoder": "synthetic", "synthetic": True},
    )


def _unit(x: np.ndarray) -> np.ndarray:
    return (x / np.linalg.norm(x, axis=-1, keepdims=True)).astype(np.float32)
