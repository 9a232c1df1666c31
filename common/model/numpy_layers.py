"""The few layers the serving process runs in NumPy (``common.model.adapter_numpy``,
``common.model.student_numpy``), computed as torch computes them in float32."""

from __future__ import annotations

import numpy as np
from scipy.special import erf


def gelu(x: np.ndarray) -> np.ndarray:
    """Exact GELU (the erf form, torch's default)."""
    out: np.ndarray = 0.5 * x * (1.0 + erf(x * np.float32(0.7071067811865476)))
    return out


def layer_norm(x: np.ndarray, weight: np.ndarray, bias: np.ndarray, eps: float) -> np.ndarray:
    centered = x - x.mean(-1, keepdims=True)
    var = np.mean(centered * centered, axis=-1, keepdims=True)
    out: np.ndarray = centered / np.sqrt(var + eps) * weight + bias
    return out


class Linear:
    """``x @ W.T + b`` from a state dict's ``<name>.weight`` and ``<name>.bias``."""

    def __init__(self, weights: dict[str, np.ndarray], name: str) -> None:
        self.w_t = np.ascontiguousarray(weights[f"{name}.weight"].T, dtype=np.float32)
        self.b = np.asarray(weights[f"{name}.bias"], dtype=np.float32)

    def __call__(self, x: np.ndarray) -> np.ndarray:
        out: np.ndarray = x @ self.w_t + self.b
        return out
