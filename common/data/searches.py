"""What a device trains and is evaluated on: its searches in catalog-index form.

A ``SearchExample`` is one logged search with item ids replaced by rows of an item table:
the base (un-adapted) query vector, the rows shown (the impression, always including the
clicked one) and the row clicked. ``query`` (the text) is kept for analysis only. A device
builds these from its encrypted store (``client.device.training_data``); simulated
populations build them from real or simulated histories. ``DeviceData`` splits one device's
examples into ``train`` and ``test``; test examples are held out and never trained on.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np


@dataclass(frozen=True)
class SearchExample:
    """One search: base query vector (d,), item rows shown (s,), the row clicked."""

    query_vector: np.ndarray
    shown: np.ndarray
    clicked: int
    query: str = ""


@dataclass
class DeviceData:
    """One device's examples: ``train`` to learn from, ``test`` held out for evaluation."""

    device_id: str
    train: list[SearchExample]
    test: list[SearchExample]
