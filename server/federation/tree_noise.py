"""DP-FTRL on the server: fixed cohorts a round and tree-aggregated noise, per epoch.

Tree aggregation (Kairouz et al., ICML 2021, "Practical and Private (Deep) Learning without
Sampling or Shuffling"): the rounds of an epoch are the leaves of a binary tree; every node
(the sum of the rounds it spans) gets its own Gaussian noise. The model after round j moves
by the noised prefix sum of rounds 1..j, read off the completed nodes that j's binary
decomposition names, so each round's released increment is this prefix's noise minus the
previous one's: the new node's noise minus the noises of the nodes it completes. Its
variance is (1 + trailing zeros of j) node variances; the noise of the model after j rounds
has only popcount(j) node variances, against j for fresh noise each round. The tree
restarts every epoch. A round the server could not aggregate still advances the tree: its
increment is carried into the next release.

``EpochCohorts`` splits each epoch's devices at random into ``epoch_rounds`` cohorts, one
a round, so a device joins at most once an epoch (the bound the accounting needs,
``common.privacy.accounting.tree_round_rdp``). A device that registers mid-epoch waits
for the next one; one that is offline at its cohort's round misses the epoch.
"""

from __future__ import annotations

from collections.abc import Sequence

import numpy as np

from common.privacy.keystream import KeystreamRandom


class TreeNoise:
    """The server's tree-aggregated noise of standard deviation ``sigma`` per node."""

    def __init__(self, epoch_rounds: int, sigma: float, rng: KeystreamRandom) -> None:
        if epoch_rounds < 1:
            raise ValueError(f"epoch_rounds must be >= 1, got {epoch_rounds}")
        if sigma < 0:
            raise ValueError(f"sigma must be >= 0, got {sigma}")
        self.epoch_rounds = epoch_rounds
        self.sigma = sigma
        self.rng = rng
        self._nodes: list[tuple[int, np.ndarray]] = []  # (level, noise), highest level first
        self._next = 1  # the next round the tree has not yet stepped through
        self._carried: np.ndarray | None = None
        self._carried_nodes = 0

    def increment(self, server_round: int, size: int) -> tuple[np.ndarray, int]:
        """The noise to add to round ``server_round``'s sum, and how many node noises it
        sums (its variance over sigma**2); rounds skipped since the last call are carried."""
        if server_round < self._next:
            raise ValueError(f"round {server_round} already had its noise")
        while self._next < server_round:
            self._carry(*self._step(self._next, size))
            self._next += 1
        self._carry(*self._step(server_round, size))
        self._next = server_round + 1
        noise, nodes = self._carried, self._carried_nodes
        self._carried, self._carried_nodes = None, 0
        assert noise is not None
        return noise, nodes

    def _carry(self, noise: np.ndarray, nodes: int) -> None:
        self._carried = noise if self._carried is None else self._carried + noise
        self._carried_nodes += nodes

    def _step(self, server_round: int, size: int) -> tuple[np.ndarray, int]:
        position = (server_round - 1) % self.epoch_rounds + 1
        if position == 1:
            self._nodes = []
        level = (position & -position).bit_length() - 1  # trailing zeros
        completed = [noise for node_level, noise in self._nodes if node_level < level]
        self._nodes = [(lv, noise) for lv, noise in self._nodes if lv >= level]
        fresh = self.sigma * self.rng.normal(size)
        self._nodes.append((level, fresh))
        return fresh - sum(completed, np.zeros(size)), 1 + len(completed)


class EpochCohorts:
    """Each epoch's random split of the devices into ``epoch_rounds`` cohorts."""

    def __init__(self, epoch_rounds: int, rng: KeystreamRandom) -> None:
        if epoch_rounds < 1:
            raise ValueError(f"epoch_rounds must be >= 1, got {epoch_rounds}")
        self.epoch_rounds = epoch_rounds
        self.rng = rng
        self._epoch = -1
        self._cohorts: list[set[int]] = []

    def cohort(self, server_round: int, devices: Sequence[int]) -> list[int]:
        """The node ids among ``devices`` (in their order) that join ``server_round``."""
        epoch, position = divmod(server_round - 1, self.epoch_rounds)
        if epoch != self._epoch:
            order = np.argsort(self.rng.uniform(len(devices)), kind="stable")
            shuffled = [devices[n] for n in order]
            parts = np.array_split(np.arange(len(shuffled)), self.epoch_rounds)
            self._cohorts = [{shuffled[n] for n in part} for part in parts]
            self._epoch = epoch
        members = self._cohorts[position]
        return [node for node in devices if node in members]
