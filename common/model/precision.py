"""The query text tower's compute precision, chosen by measuring it, not by CPU flags.

A CPU that advertises bfloat16 instructions is not always faster in bfloat16, and which
precision wins can change with the batch size. The candidates: float32, bfloat16 (the
linear layers' weights cast once, ``common.model.bfloat16``) and int8
(``common.model.int8``, its channel smoothing calibrated on ``CALIBRATION_QUERIES``).
Neither scales by its batch, as torch's dynamic quantization does; a query's vector alone
and in a padded batch can differ by a rounding (their modules say how much).
``choose_precision`` encodes a few dozen probe queries with each candidate in alternating
rounds (so a burst of load on a shared machine hits them alike), one at a time as a lone
shopper's query is and in batches of ``BATCH`` as a busy service's are, checks each
candidate's vectors against float32's, and keeps the one with the least time per query
(the mean of the two ways) among those that agree; float32 is the reference and wins
every tie, so the choice is never slower than float32 on the measurement. The choice is
remembered per model version for the life of the process.
"""

from __future__ import annotations

import logging
import time
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass, field
from typing import Any, Protocol, TypeVar, cast

import numpy as np

from common.config import RUNTIME_PRECISIONS, TEXT_PRECISIONS

log = logging.getLogger(__name__)

CANDIDATES = RUNTIME_PRECISIONS["torch"]
BATCH = 8
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
    text_precision: str
    precisions: tuple[str, ...]  # those it can compute in

    def encode_text(self, texts: Sequence[str]) -> np.ndarray: ...

    def with_int8_text(self, calibration: Sequence[str]) -> Any: ...

    def with_bfloat16_text(self) -> Any: ...


_Tower = TypeVar("_Tower", bound=TextTower)


@dataclass(frozen=True)
class PrecisionChoice:
    """The precision kept, why, and what was measured (ms per query: the mean of the median
    alone and the median in a batch; min cosine to float32)."""

    precision: str
    reason: str
    ms_per_query: dict[str, float] = field(default_factory=dict)
    min_cosine: dict[str, float] = field(default_factory=dict)


def at_precision(tower: _Tower, precision: str) -> _Tower:
    """``tower`` computing in ``precision``: itself for its own precision, else a copy with
    bfloat16 or int8 linear layers. Only a float32 tower converts."""
    if precision not in tower.precisions:
        raise ValueError(
            f"precision must be one of {', '.join(tower.precisions)}, got {precision!r}"
        )
    if tower.text_precision == precision:
        return tower
    if tower.text_precision != "float32":
        raise ValueError(
            f"a {tower.text_precision} tower cannot be converted: start from the float32 one"
        )
    if precision == "int8":
        return cast(_Tower, tower.with_int8_text(CALIBRATION_QUERIES))
    return cast(_Tower, tower.with_bfloat16_text())


def choose_precision(
    tower: TextTower,
    *,
    candidates: Sequence[str] = CANDIDATES,
    probes: Sequence[str] = PROBE_QUERIES,
    rounds: int = 3,
    min_cosine: float = MIN_COSINE,
    timer: Callable[[], float] = time.perf_counter,
) -> PrecisionChoice:
    """Time encodes of ``probes``, one at a time and in batches of ``BATCH``, for each
    candidate (``timed_encodes``); keep the fastest per query (the mean of the two ways)
    whose vectors are within ``min_cosine`` of float32's."""
    towers = {name: at_precision(tower, name) for name in dict.fromkeys(["float32", *candidates])}
    reference = towers["float32"].encode_text(list(probes))
    cosine = {
        name: float(np.min(np.sum(t.encode_text(list(probes)) * reference, axis=1)))
        for name, t in towers.items()
    }
    times, _ = timed_encodes(towers, probes, rounds=rounds, timer=timer)
    ms = {
        name: round(float(np.mean([np.median(v) for v in ways.values()])) * 1000, 4)
        for name, ways in times.items()
    }
    agreeing = [n for n in towers if cosine[n] >= min_cosine]
    best = min(agreeing, key=lambda n: (ms[n], n != "float32"))
    return PrecisionChoice(best, _reason(best, ms, cosine, min_cosine), ms, cosine)


def timed_encodes(
    towers: Mapping[str, TextTower],
    texts: Sequence[str],
    *,
    rounds: int,
    timer: Callable[[], float] = time.perf_counter,
) -> tuple[dict[str, dict[str, list[float]]], dict[str, np.ndarray]]:
    """Seconds per query of each tower's encodes of ``texts``, "alone" and in a "batch" of
    ``BATCH`` (or of all ``texts`` if fewer; the last batch filled up from the start), the
    towers interleaved group by group over ``rounds`` rounds, so a burst of load on a shared
    machine hits them alike; and each text's vector encoded alone (first round)."""
    size = min(BATCH, len(texts))
    groups = [("alone", [text]) for text in texts] + [
        ("batch", [texts[(start + i) % len(texts)] for i in range(size)])
        for start in range(0, len(texts), size or 1)
    ]
    times: dict[str, dict[str, list[float]]] = {n: {"alone": [], "batch": []} for n in towers}
    alone: dict[str, list[np.ndarray]] = {name: [] for name in towers}
    for round_ in range(rounds):
        for kind, group in groups:
            for name, t in towers.items():
                start = timer()
                vectors = t.encode_text(group)
                times[name][kind].append((timer() - start) / len(group))
                if round_ == 0 and kind == "alone":
                    alone[name].append(vectors[0])
    return times, {name: np.stack(v) for name, v in alone.items() if v}


def _reason(best: str, ms: dict[str, float], cosine: dict[str, float], min_cos: float) -> str:
    parts = [f"{n} {ms[n]:.3f} ms/query (min cos {cosine[n]:.5f})" for n in ms]
    refused = [n for n in ms if cosine[n] < min_cos]
    why = (
        f"measured {', '.join(parts)}, alone and in batches of {BATCH}; kept the fastest "
        f"agreeing with float32 (cos >= {min_cos})"
    )
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
    key = (tower.version, tower.precisions)
    if key not in _CHOICES:
        _CHOICES[key] = choose_precision(tower, candidates=tower.precisions)
        log.info("query precision: %s (%s)", _CHOICES[key].precision, _CHOICES[key].reason)
    choice = _CHOICES[key]
    return at_precision(tower, choice.precision), choice
