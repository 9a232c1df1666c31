"""One device's local round: Opacus DP-SGD on its copy of the global query adapter.

The loss is per search (``common.model.ranking_loss``): the adapted query against its own clicked
item versus its own impression's shown-but-not-clicked items and random public items, so
each search moves only its own gradient and per-sample clipping bounds its influence.
Batches are Poisson-sampled; the Opacus RDP accountant's state is kept by the caller on
the device between rounds, so the record-level epsilon accumulates across rounds. A device
whose next round would pass its budget declines to train.
"""

from __future__ import annotations

import math
import time
import warnings
from collections.abc import Sequence
from dataclasses import dataclass, field
from typing import Any

import numpy as np
import torch
from opacus import PrivacyEngine
from opacus.accountants import RDPAccountant
from torch.utils.data import BatchSampler, DataLoader, RandomSampler

from common.config import AdapterConfig, DeviceConfig
from common.data.searches import SearchExample
from common.model.adapter import QueryAdapter
from common.model.ranking_loss import SearchRows, ranking_loss
from common.privacy import drop_opacus_log_handler

drop_opacus_log_handler()  # Opacus was imported above: no second copy of every log line

# RDP orders for the device's epsilon: a coarser grid than Opacus's default, about 4x
# faster to evaluate; any set of orders gives a valid upper bound (this one within ~1%).
RECORD_RDP_ORDERS = [
    1.25,
    1.5,
    1.75,
    2,
    2.25,
    2.5,
    3,
    3.5,
    4,
    4.5,
    5,
    6,
    7,
    8,
    10,
    12,
    14,
    16,
    20,
    24,
]
RECORD_RDP_ORDERS += [32, 48, 64]


@dataclass
class LocalResult:
    """What a local round produced; ``weights`` is None when the device declined."""

    weights: list[np.ndarray] | None
    num_examples: int
    metrics: dict[str, float]
    accountant: dict[str, Any] = field(default_factory=dict)

    @property
    def declined(self) -> bool:
        return self.weights is None


def load_accountant(state: dict[str, Any]) -> RDPAccountant:
    """An RDP accountant holding the steps recorded in ``state`` (empty: a fresh one)."""
    accountant = RDPAccountant()
    if state:
        history = [(float(s), float(q), int(n)) for s, q, n in state["history"]]
        accountant.load_state_dict({"history": history, "mechanism": state["mechanism"]})
    return accountant


def accountant_state(accountant: RDPAccountant) -> dict[str, Any]:
    """JSON-ready accountant state (``RDPAccountant.state_dict()`` with lists)."""
    state = accountant.state_dict()
    return {"history": [list(h) for h in state["history"]], "mechanism": state["mechanism"]}


def record_epsilon(state: dict[str, Any], delta: float) -> float:
    return (
        float(load_accountant(state).get_epsilon(delta, alphas=RECORD_RDP_ORDERS)) if state else 0.0
    )


def plan(num_searches: int, device: DeviceConfig) -> tuple[float, int]:
    """(Poisson sample rate, optimizer steps) of one local round."""
    batches = max(1, math.ceil(num_searches / device.batch_size))
    return 1.0 / batches, batches * device.local_epochs


def train_local(
    adapter: QueryAdapter,
    searches: Sequence[SearchExample],
    item_vectors: np.ndarray,
    device: DeviceConfig,
    loss_config: AdapterConfig,
    accountant: dict[str, Any],
    seed: int,
    public_items: int | None = None,
) -> LocalResult:
    """Train ``adapter`` in place on ``searches``; decline if the budget would be passed.
    Random negatives come from the first ``public_items`` rows of ``item_vectors``."""
    if not searches:
        return _declined(0, record_epsilon(accountant, device.delta), accountant)
    start = time.perf_counter()
    sample_rate, steps = plan(len(searches), device)
    epsilon = math.inf
    if device.dp:
        after = load_accountant(accountant)
        for _ in range(steps):
            after.step(noise_multiplier=device.noise_multiplier, sample_rate=sample_rate)
        epsilon = float(after.get_epsilon(device.delta, alphas=RECORD_RDP_ORDERS))
        if epsilon > device.epsilon_budget:
            return _declined(len(searches), record_epsilon(accountant, device.delta), accountant)
    torch.manual_seed(seed)
    data = SearchRows(
        searches,
        item_vectors,
        shown_negatives=loss_config.shown_negatives,
        random_negatives=loss_config.random_negatives,
        rng=np.random.default_rng(seed),
        public_items=public_items,
    )

    adapter.train()
    with warnings.catch_warnings():
        # Opacus' per-sample hooks fire on module outputs because the inputs (base query
        # vectors) need no gradient: expected, and the gradients are the adapter's.
        warnings.filterwarnings(
            "ignore", message="Full backward hook is firing", category=UserWarning
        )
        if device.dp:
            losses, accountant = _train_dp(adapter, data, device, loss_config, accountant)
        else:
            losses = _train_plain(adapter, data, device, loss_config)
    adapter.eval()
    metrics = {
        "num_examples": float(len(searches)),
        "loss": float(np.mean(losses)) if losses else float("nan"),
        "steps": float(steps),
        "epsilon_record": epsilon,
        "declined": 0.0,
        "train_seconds": time.perf_counter() - start,
    }
    return LocalResult(adapter.get_weights(), len(searches), metrics, accountant)


def _declined(count: int, spent: float, accountant: dict[str, Any]) -> LocalResult:
    metrics = {
        "num_examples": float(count),
        "loss": float("nan"),
        "steps": 0.0,
        "epsilon_record": spent,
        "declined": 1.0,
        "train_seconds": 0.0,
    }
    return LocalResult(None, count, metrics, accountant)


def _optimizer(adapter: torch.nn.Module, device: DeviceConfig) -> torch.optim.Optimizer:
    if device.optimizer == "adam":
        return torch.optim.Adam(adapter.parameters(), lr=device.lr)
    return torch.optim.SGD(adapter.parameters(), lr=device.lr, momentum=device.momentum)


def _step_loss(model: torch.nn.Module, batch: Sequence[torch.Tensor], temperature: float):
    queries, positives, negatives = batch
    losses = ranking_loss(model(queries), positives, negatives, temperature)
    # An empty Poisson batch still takes a (pure-noise) step, so the accounting holds.
    return losses.mean() if len(losses) else losses.sum(), len(losses)


def _train_dp(
    adapter: QueryAdapter,
    data: SearchRows,
    device: DeviceConfig,
    loss_config: AdapterConfig,
    accountant: dict[str, Any],
) -> tuple[list[float], dict[str, Any]]:
    engine = PrivacyEngine(accountant="rdp")
    engine.accountant = load_accountant(accountant)
    model, optimizer, loader = engine.make_private(
        module=adapter,
        optimizer=_optimizer(adapter, device),
        data_loader=DataLoader(data, batch_size=device.batch_size),
        noise_multiplier=device.noise_multiplier,
        max_grad_norm=device.max_grad_norm,
        poisson_sampling=True,
    )
    losses = _epochs(model, optimizer, loader, data, device.local_epochs, loss_config)
    model.remove_hooks()
    return losses, accountant_state(engine.accountant)


def _train_plain(
    adapter: QueryAdapter,
    data: SearchRows,
    device: DeviceConfig,
    loss_config: AdapterConfig,
) -> list[float]:
    optimizer = _optimizer(adapter, device)
    # each batch read whole: the batches of DataLoader(data, batch_size, shuffle=True), in
    # the same order from the same random draws, without stacking them row by row
    batches = BatchSampler(RandomSampler(data), device.batch_size, drop_last=False)
    loader = DataLoader(data, sampler=batches, batch_size=None)
    return _epochs(adapter, optimizer, loader, data, device.local_epochs, loss_config)


def _epochs(
    model: torch.nn.Module,
    optimizer: torch.optim.Optimizer,
    loader: DataLoader,
    data: SearchRows,
    epochs: int,
    loss_config: AdapterConfig,
) -> list[float]:
    """Train ``epochs`` passes (fresh negatives before each later one); the losses of the
    non-empty batches."""
    losses = []
    for epoch in range(epochs):
        if epoch:
            data.redraw()
        for batch in loader:
            optimizer.zero_grad()
            loss, size = _step_loss(model, batch, loss_config.temperature)
            loss.backward()
            optimizer.step()
            if size:
                losses.append(loss.item())
    return losses
