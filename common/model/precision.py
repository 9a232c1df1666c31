"""The query text tower's compute precision, chosen by measuring it, not by CPU flags.

A CPU that advertises bfloat16 instructions is not always faster in bfloat16: for short
queries the casts can cost more than the matrix products save. The candidates: float32,
bfloat16 (autocast) and int8 (``common.model.int8``, its channel smoothing calibrated on
``CALIBRATION_QUERIES``: a query's vector stays independent of its batch, unlike torch's
dynamic quantization). ``choose_precision`` encodes a few dozen probe queries with each
candidate in alternating rounds (so a burst of load on a shared machine hits them alike),
checks each candidate's vectors against float32's, and keeps the fastest that agrees;
float32 is the reference and wins every tie, so the choice is never slower than float32 on
the measurement. The choice is remembered per model version for the life of the process.
"""

from __future__ import annotations

import logging
import time
from collections.abc import Callable, Sequence
from copy import copy
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Any, Protocol, TypeVar, cast

import numpy as np

from common.config import TEXT_PRECISIONS

if TYPE_CHECKING:
    import torch

log = logging.getLogger(__name__)

CANDIDATES = ("float32", "bfloat16", "int8")
MIN_COSINE = 0.999
PROBE_QUERIES = (
    "black casual shoes",
    "women watches",
    "blue denim jeans for men",
    "red handbag",
    "white sports shoes for women",
    "kids t-shirt",
    "silver earrings",
    "green summer dress",
    "leather wallet for men",
    "running shorts",
    "pink floral top for girls",
    "brown formal belt",
    "wooden picture frame",
    "ceramic coffee mug",
    "set of 6 tea lights",
    "christmas decoration",
)
# int8's channel scales are calibrated on these, not on the probes that check its agreement.
CALIBRATION_QUERIES = (
    "black running shoes for men",
    "women's analog watch with a leather strap",
    "navy blue slim fit formal shirt",
    "yellow kurta",
    "gold plated necklace and earrings set for women",
    "grey hooded sweatshirt for boys",
    "casual shoes",
    "maroon saree with a printed border",
    "sunglasses",
    "purple backpack",
    "white metal lantern",
    "hand warmer",
    "vintage doily bag with a pink polka dot design",
    "set of 3 cake tins in pantry design",
    "regency cakestand 3 tier",
    "jumbo bag red retrospot",
    "heart of wicker small",
    "alarm clock bakelike green",
    "party bunting",
    "glass star frosted t-light holder",
    "Puma Men Black Sports Shoes",
    "Fastrack Women Silver Dial Watch",
    "Nike Unisex Blue Backpack",
    "flip flops",
)


class TextTower(Protocol):
    """What a query text encoder offers: the base encoder and the distilled student alike."""

    version: str
    text_autocast: torch.dtype | None

    @property
    def text_precision(self) -> str: ...

    def encode_text(self, texts: Sequence[str]) -> np.ndarray: ...

    def with_int8_text(self, calibration: Sequence[str]) -> Any: ...


_Tower = TypeVar("_Tower", bound=TextTower)


@dataclass(frozen=True)
class PrecisionChoice:
    """The precision kept, why, and what was measured (median ms per query, min cosine)."""

    precision: str
    reason: str
    ms_per_query: dict[str, float] = field(default_factory=dict)
    min_cosine: dict[str, float] = field(default_factory=dict)


def at_precision(tower: _Tower, precision: str) -> _Tower:
    """``tower`` computing in ``precision``: "float32" or "bfloat16" (its model shared), or
    "int8" (a copy with int8 weights). ``tower`` must not be an int8 copy itself."""
    if precision not in CANDIDATES:
        raise ValueError(f"precision must be one of {', '.join(CANDIDATES)}, got {precision!r}")
    if tower.text_precision == precision:
        return tower
    if tower.text_precision == "int8":
        raise ValueError("an int8 tower cannot be converted back: start from the float one")
    if precision == "int8":
        return cast(_Tower, tower.with_int8_text(CALIBRATION_QUERIES))
    import torch

    out = copy(tower)
    out.text_autocast = torch.bfloat16 if precision == "bfloat16" else None
    return out


def choose_precision(
    tower: TextTower,
    *,
    candidates: Sequence[str] = CANDIDATES,
    probes: Sequence[str] = PROBE_QUERIES,
    rounds: int = 3,
    min_cosine: float = MIN_COSINE,
    timer: Callable[[], float] = time.perf_counter,
) -> PrecisionChoice:
    """Time single-query encodes of ``probes`` for each candidate over ``rounds`` alternating
    rounds; keep the fastest whose vectors are within ``min_cosine`` of float32's."""
    towers = {name: at_precision(tower, name) for name in dict.fromkeys(["float32", *candidates])}
    reference = towers["float32"].encode_text(list(probes))
    cosine = {
        name: float(np.min(np.sum(t.encode_text(list(probes)) * reference, axis=1)))
        for name, t in towers.items()
    }
    times: dict[str, list[float]] = {name: [] for name in towers}
    for _ in range(rounds):
        for name, t in towers.items():
            for text in probes:
                start = timer()
                t.encode_text([text])
                times[name].append(timer() - start)
    ms = {name: round(float(np.median(v)) * 1000, 4) for name, v in times.items()}
    agreeing = [n for n in towers if cosine[n] >= min_cosine]
    best = min(agreeing, key=lambda n: (ms[n], n != "float32"))
    return PrecisionChoice(best, _reason(best, ms, cosine, min_cosine), ms, cosine)


def _reason(best: str, ms: dict[str, float], cosine: dict[str, float], min_cos: float) -> str:
    parts = [f"{n} {ms[n]:.3f} ms/query (min cos {cosine[n]:.5f})" for n in ms]
    refused = [n for n in ms if cosine[n] < min_cos]
    why = f"measured {', '.join(parts)}; kept the fastest agreeing with float32 (cos >= {min_cos})"
    return why + (f"; {', '.join(refused)} refused: vectors too far" if refused else "")


_CHOICES: dict[tuple[str, tuple[str, ...]], PrecisionChoice] = {}


def resolve_precision(tower: TextTower, precision: str) -> tuple[TextTower, PrecisionChoice]:
    """``tower`` at ``precision`` ("auto": measured once per model version and process)."""
    if precision not in TEXT_PRECISIONS:
        raise ValueError(
            f"precision must be one of {', '.join(TEXT_PRECISIONS)}, got {precision!r}"
        )
    if precision != "auto":
        return at_precision(tower, precision), PrecisionChoice(precision, "set by configuration")
    key = (tower.version, CANDIDATES)
    if key not in _CHOICES:
        _CHOICES[key] = choose_precision(tower)
        log.info("query precision: %s (%s)", _CHOICES[key].precision, _CHOICES[key].reason)
    choice = _CHOICES[key]
    return at_precision(tower, choice.precision), choice
