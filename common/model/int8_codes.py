"""int8 weight codes with SmoothQuant channel scales, in NumPy (no torch).

The same recipe as ``common.model.int8`` (which holds the reasons), for runtimes without
torch: each input channel ``j`` of a linear layer is divided by
``s_j = max|x_j| ** a / max|W_:,j| ** (1 - a)`` (``max|x_j|`` calibrated on query texts) and
the weights' column multiplied by it; the smoothed weights become int8 codes with one scale
per output neuron.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np

INT8_MAX = 127
SMOOTHING = 0.5
TINY = 1e-6


@dataclass(frozen=True)
class Int8Codes:
    """A linear layer in int8: ``x @ W.T ~= ((x * inverse_smooth) @ codes) * scale``, with
    ``codes`` laid out (inputs, outputs) for a right-hand product."""

    inverse_smooth: np.ndarray
    codes: np.ndarray
    scale: np.ndarray


def smoothed_int8_codes(
    weight: np.ndarray, input_max: np.ndarray, *, smoothing: float = SMOOTHING
) -> Int8Codes:
    """``weight`` (outputs, inputs) and each input channel's calibrated ``max|x|``."""
    if input_max.shape != (weight.shape[1],):
        raise ValueError(f"input_max needs one value per input ({weight.shape[1]})")
    weight = weight.astype(np.float32)
    w_max = np.maximum(np.abs(weight).max(axis=0), TINY)
    x_max = np.maximum(input_max.astype(np.float32), TINY)
    smooth = np.maximum(x_max**smoothing / w_max ** (1 - smoothing), TINY).astype(np.float32)
    weight = weight * smooth[None, :]
    scale = np.maximum(np.abs(weight).max(axis=1), np.finfo(np.float32).tiny) / INT8_MAX
    codes = np.clip(np.round(weight / scale[:, None]), -INT8_MAX, INT8_MAX).astype(np.int8)
    return Int8Codes(
        inverse_smooth=(1.0 / smooth).astype(np.float32),
        codes=np.ascontiguousarray(codes.T),
        scale=scale.astype(np.float32),
    )
