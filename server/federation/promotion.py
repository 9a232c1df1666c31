"""Which round's adapter becomes a published version: the promotion rule.

With ``federation.promote = "if-not-worse"`` a round's adapter (the moving average, when
the run keeps one) is first a *candidate*: the next round's devices evaluate it on their
held-out searches (the candidate travels in the round's fit config; its figures come back
inside the noised payload sum like every statistic) and the server publishes it only if its
pooled personal nDCG@k gain over the base encoder, measured on that same cohort, is not
worse than the gain recorded for the version served now, nor than the base encoder's own
(0), by more than ``promote_margin_sd`` standard deviations of the difference. The
deviation comes from the round's DP noise on the summed statistics (``stats_noise_std``),
so a cohort too small to tell two versions apart does not block publication on noise alone,
and a version clearly worse than the served one is kept back. A candidate that is not
promoted is recorded with its figures; training goes on from the round's aggregate either
way. The last round's candidate has no evaluation yet: it stays pending in the server's
state (``server.federation.resume``), and a resumed run evaluates it first.

``promote = "always"`` publishes each round's adapter at once (then devices evaluate the
newest published one); on a deployed server an operator sets it explicitly (``--run-config
'federation.promote="always"'``); ``"auto"``, the default, is ``"if-not-worse"`` there and
``"always"`` in simulations, whose report evaluates every version on the whole population.

Devices evaluating weights that nobody signed costs no trust: the figures are bounded
statistics inside the DP-noised sum, whatever the weights are, and a device never serves
searches with a candidate.
"""

from __future__ import annotations

import math
from collections.abc import Mapping
from dataclasses import dataclass, field

import numpy as np


@dataclass(frozen=True)
class Standing:
    """The served version (``"base"``: none) and its pooled gain over base with its std."""

    version: str = "base"
    gain: float = 0.0
    std: float = 0.0


@dataclass(frozen=True)
class Verdict:
    """Whether a candidate is promoted, and the figures that decided it."""

    promote: bool
    gain: float
    std: float
    reason: str


@dataclass
class Candidate:
    """A round's adapter waiting for its evaluation, with its training round's figures."""

    round: int
    weights: list[np.ndarray]
    figures: dict[str, float] = field(default_factory=dict)


def pooled_gain(figures: Mapping[str, float], k: int) -> tuple[float, float] | None:
    """The round's pooled personal nDCG@k minus the base encoder's (each clamped to [0, 1]),
    and the std of that difference from the round's noise; None when no device evaluated."""
    personal, base = figures.get(f"personal.nDCG@{k}"), figures.get(f"base.nDCG@{k}")
    evaluated = figures.get("evaluated", 0.0)
    if personal is None or base is None or not evaluated >= 1:
        return None
    if not (math.isfinite(personal) and math.isfinite(base)):
        return None
    std = math.sqrt(2.0) * figures.get("stats_noise_std", 0.0) / evaluated
    return _unit(personal) - _unit(base), std


def _unit(mean: float) -> float:
    """A noised mean of per-device values in [0, 1], clamped back into [0, 1] (noise can
    push it out; a lucky estimate above 1 would otherwise block every later candidate)."""
    return min(1.0, max(0.0, mean))


def judge(gain: float, std: float, standing: Standing, *, margin_sd: float) -> Verdict:
    """Promote unless ``gain`` is below the served version's, or below the base encoder's
    (0, so that small steps cannot add up to a drift below base), by more than
    ``margin_sd`` standard deviations of the difference."""
    for reference in (standing, Standing()):
        spread = math.hypot(std, reference.std)
        figures = (
            f"nDCG gain over base {gain:+.4f} vs {reference.gain:+.4f} for "
            f"{reference.version} (noise std of the difference {spread:.4f})"
        )
        if reference.gain - gain > margin_sd * spread:
            return Verdict(False, gain, std, f"worse than {reference.version}: {figures}")
    return Verdict(True, gain, std, f"not worse than {standing.version}: {figures}")
