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

``EpochCohorts`` gives each device, at the start of each epoch, a round of the epoch drawn
uniformly and independently of the other devices, so a device joins at most once an epoch
(the bound the accounting needs, ``common.privacy.accounting.tree_round_rdp``) and no
device's round depends on who else is enrolled. A device that registers mid-epoch waits
for the next one; one that is offline at its round misses the epoch. The bound is per
Flower node: like Poisson sampling, it assumes one node per device.
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
        self._nodes: list[tuple[int, int, np.ndarray]] = []  # (level, node id, noise)
        self._next = 1  # the next round the tree has not yet stepped through
        self._drawn = 0  # node ids
        self._carried: np.ndarray | None = None
        self._coefficients: dict[int, int] = {}  # node id -> its multiple in the carried sum

    def increment(self, server_round: int, size: int) -> tuple[np.ndarray, int]:
        """The noise to add to round ``server_round``'s sum, and its variance over sigma**2
        (the sum of the squared multiples of the independent node noises in it); rounds
        skipped since the last call are carried into it."""
        if server_round < self._next:
            raise ValueError(f"round {server_round} already had its noise")
        while self._next <= server_round:
            self._step(self._next, size)
            self._next += 1
        noise, variance = self._carried, sum(c * c for c in self._coefficients.values())
        self._carried, self._coefficients = None, {}
        assert noise is not None
        return noise, variance

    def _step(self, server_round: int, size: int) -> None:
        """Draw the node that ends at ``server_round``; carry the change of prefix noise."""
        position = (server_round - 1) % self.epoch_rounds + 1
        if position == 1:
            self._nodes = []
        level = (position & -position).bit_length() - 1  # trailing zeros
        completed = [(node, noise) for lv, node, noise in self._nodes if lv < level]
        self._nodes = [entry for entry in self._nodes if entry[0] >= level]
        fresh, self._drawn = self.sigma * self.rng.normal(size), self._drawn + 1
        self._nodes.append((level, self._drawn, fresh))
        change = fresh - sum((noise for _, noise in completed), np.zeros(size))
        self._carried = change if self._carried is None else self._carried + change
        for node, sign in [(self._drawn, 1), *((node, -1) for node, _ in completed)]:
            self._coefficients[node] = self._coefficients.get(node, 0) + sign


class EpochCohorts:
    """Each epoch, every device's round, uniform over the epoch's ``epoch_rounds`` rounds."""

    def __init__(self, epoch_rounds: int, rng: KeystreamRandom) -> None:
        if epoch_rounds < 1:
            raise ValueError(f"epoch_rounds must be >= 1, got {epoch_rounds}")
        self.epoch_rounds = epoch_rounds
        self.rng = rng
        self._epoch = -1
        self._round_of: dict[int, int] = {}  # node id -> its round's place in the epoch (0-based)

    def cohort(self, server_round: int, devices: Sequence[int]) -> list[int]:
        """The node ids among ``devices`` (in their order) that join ``server_round``."""
        epoch, position = divmod(server_round - 1, self.epoch_rounds)
        if epoch != self._epoch:
            rounds = np.floor(self.rng.uniform(len(devices)) * self.epoch_rounds).astype(int)
            self._round_of = dict(zip(devices, rounds.tolist(), strict=True))
            self._epoch = epoch
        return [node for node in devices if self._round_of.get(node) == position]
