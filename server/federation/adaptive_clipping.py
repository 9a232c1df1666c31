"""Adaptive clipping: the clipping norm follows a quantile of the devices' update norms.

Andrew, Thakkar, McMahan and Ramaswamy (NeurIPS 2021), geometric update: after a round in
which a share ``b`` of the expected cohort sent an update that fit within the norm C
unclipped, ``C <- C * exp(-lr * (b - quantile))``. C grows while fewer than ``quantile``
of the updates fit, and shrinks while more do.

``b`` comes from the round's noised payload sum: each device reports whether its update
fit (``common.federation.payload``: the ``unclipped`` statistic) inside the vector the
round's noise already covers, and the noised count is divided by the round's expected
number of devices, a public constant (as in the paper: a noised cohort size in the
denominator would swing wildly in small cohorts). The noised share is used as it is, even
outside [0, 1]: clamping it would bias it towards the middle and drive a small quantile's
norm below that quantile (measured: the 10% quantile's norm settled at 0.7, below the 10th
percentile of the update norms, 1.36 to 1.45 on 80 Online Retail customers). Following
the quantile so costs no privacy beyond the round's: C is computed from released, noised
figures (post-processing), and the noise of the next round scales with it. The norm stays
within the bounds the devices accept (``common.federation.privacy_plan``: [ceiling / 64,
ceiling]).
"""

from __future__ import annotations

import math


class AdaptiveClipping:
    """The clipping norm over rounds (see the module doc)."""

    def __init__(
        self, start: float, *, quantile: float, lr: float, floor: float, ceiling: float
    ) -> None:
        if not 0 < floor <= start <= ceiling:
            raise ValueError(f"need 0 < floor <= start <= ceiling, got {floor}, {start}, {ceiling}")
        if not 0 < quantile < 1 or lr <= 0:
            raise ValueError(f"need quantile in (0, 1) and lr > 0, got {quantile}, {lr}")
        self.norm = start
        self.quantile = quantile
        self.lr = lr
        self.floor = floor
        self.ceiling = ceiling

    def step(self, unclipped: float, expected: int) -> float:
        """Move the norm after a round whose noised count of unclipped updates is
        ``unclipped``, out of ``expected`` devices; returns the share used."""
        share = unclipped / expected  # not clamped to [0, 1]: clamping biases a noised share
        moved = self.norm * math.exp(-self.lr * (share - self.quantile))
        self.norm = min(max(moved, self.floor), self.ceiling)
        return share

    def state_dict(self) -> dict[str, float]:
        return {"norm": self.norm}

    def load_state_dict(self, state: dict[str, float]) -> None:
        self.norm = min(max(float(state["norm"]), self.floor), self.ceiling)
