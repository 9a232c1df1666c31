"""How the server moves the global adapter with a round's noised average update.

``new = global + lr * m`` with ``m = momentum * m + average`` (server-side SGD with
momentum, the FedAvgM family). The average update already carries the round's DP noise, so
whatever the server does with it is post-processing and costs no privacy; momentum averages
the noise of successive rounds out while the signal adds up.
"""

from __future__ import annotations

from collections.abc import Sequence

import numpy as np


class ServerOptimizer:
    """Server learning rate and momentum over rounds (see the module doc)."""

    def __init__(self, lr: float = 1.0, momentum: float = 0.0) -> None:
        if lr <= 0 or not 0 <= momentum < 1:
            raise ValueError(f"need lr > 0 and momentum in [0, 1), got {lr}, {momentum}")
        self.lr = lr
        self.momentum = momentum
        self._velocity: list[np.ndarray] | None = None

    def step(
        self, weights: Sequence[np.ndarray], average_update: Sequence[np.ndarray]
    ) -> list[np.ndarray]:
        if self._velocity is None:
            self._velocity = [np.zeros_like(u, dtype=np.float64) for u in average_update]
        self._velocity = [
            self.momentum * v + np.asarray(u, dtype=np.float64)
            for v, u in zip(self._velocity, average_update, strict=True)
        ]
        return [
            (np.asarray(w, dtype=np.float64) + self.lr * v).astype(np.float32)
            for w, v in zip(weights, self._velocity, strict=True)
        ]

    def state_dict(self) -> dict[str, list[np.ndarray] | float]:
        return {"lr": self.lr, "momentum": self.momentum, "velocity": self._velocity or []}

    def load_state_dict(self, state: dict) -> None:
        self.lr, self.momentum = float(state["lr"]), float(state["momentum"])
        self._velocity = [np.asarray(v) for v in state["velocity"]] or None
