"""A strategy wrapper that keeps a moving average of the global adapter for publishing.

Training goes on from each round's aggregate; what the registry publishes (and so what
devices evaluate and the search service serves) is an exponential moving average of the
aggregates (``decay`` per round, started
at the first aggregate). Under user-level DP every aggregate carries fresh Gaussian noise;
the average keeps the steady part of the updates and shrinks that noise, and, being
post-processing of the aggregates, it costs no privacy.
"""

from __future__ import annotations

from collections.abc import Sequence

import numpy as np
from flwr.common import (
    EvaluateIns,
    EvaluateRes,
    FitIns,
    FitRes,
    Parameters,
    Scalar,
    parameters_to_ndarrays,
)
from flwr.server.client_manager import ClientManager
from flwr.server.client_proxy import ClientProxy
from flwr.server.strategy import Strategy


class MovingAverage(Strategy):
    """Wrap ``strategy``; its aggregates train, their moving average is evaluated."""

    def __init__(self, strategy: Strategy, *, decay: float) -> None:
        if not 0.0 <= decay < 1.0:
            raise ValueError(f"decay must be in [0, 1), got {decay}")
        self.strategy = strategy
        self.decay = decay
        self.average: list[np.ndarray] | None = None

    def __repr__(self) -> str:
        return f"MovingAverage({self.strategy!r}, decay={self.decay})"

    def initialize_parameters(self, client_manager: ClientManager) -> Parameters | None:
        return self.strategy.initialize_parameters(client_manager)

    def configure_fit(
        self, server_round: int, parameters: Parameters, client_manager: ClientManager
    ) -> list[tuple[ClientProxy, FitIns]]:
        return self.strategy.configure_fit(server_round, parameters, client_manager)

    def aggregate_fit(
        self,
        server_round: int,
        results: list[tuple[ClientProxy, FitRes]],
        failures: Sequence[tuple[ClientProxy, FitRes] | BaseException],
    ) -> tuple[Parameters | None, dict[str, Scalar]]:
        parameters, metrics = self.strategy.aggregate_fit(server_round, results, list(failures))
        if parameters is not None:
            self.update(parameters_to_ndarrays(parameters))
        return parameters, metrics

    def update(self, weights: list[np.ndarray]) -> None:
        """Fold one round's aggregate into the average."""
        if self.average is None:
            self.average = [np.array(w, dtype=np.float32) for w in weights]
            return
        self.average = [
            (self.decay * a + (1.0 - self.decay) * w).astype(np.float32)
            for a, w in zip(self.average, weights, strict=True)
        ]

    def configure_evaluate(
        self, server_round: int, parameters: Parameters, client_manager: ClientManager
    ) -> list[tuple[ClientProxy, EvaluateIns]]:
        return self.strategy.configure_evaluate(server_round, parameters, client_manager)

    def aggregate_evaluate(
        self,
        server_round: int,
        results: list[tuple[ClientProxy, EvaluateRes]],
        failures: Sequence[tuple[ClientProxy, EvaluateRes] | BaseException],
    ) -> tuple[float | None, dict[str, Scalar]]:
        return self.strategy.aggregate_evaluate(server_round, results, list(failures))

    def evaluate(
        self, server_round: int, parameters: Parameters
    ) -> tuple[float, dict[str, Scalar]] | None:
        return self.strategy.evaluate(server_round, parameters)
