"""The query adapter (``common.model.adapter.QueryAdapter``) applied in NumPy, for serving.

The search service only ever runs an adapter forward on a few query vectors, so it reads
the published ``adapter.safetensors`` into arrays and computes
``normalize(q + up(gelu(down(q))))`` without torch.
"""

from __future__ import annotations

from pathlib import Path

import numpy as np
from safetensors import safe_open

from common.model.fusion import l2_normalize
from common.model.numpy_layers import Linear, gelu

ADAPTER_FILE = "adapter.safetensors"
_KEYS = ("down.weight", "down.bias", "up.weight", "up.bias")


class NumpyAdapter:
    """A published adapter's weights and its forward pass on float32 query rows."""

    def __init__(self, weights: dict[str, np.ndarray]) -> None:
        missing = [k for k in _KEYS if k not in weights]
        if missing:
            raise ValueError(f"adapter weights lack {', '.join(missing)}")
        down = weights["down.weight"]
        if down.ndim != 2:
            raise ValueError(f"adapter down weight is {down.shape}, expected (rank, dim)")
        self.rank, self.dim = down.shape
        expected = {
            "up.weight": (self.dim, self.rank),
            "down.bias": (self.rank,),
            "up.bias": (self.dim,),
        }
        for key, shape in expected.items():
            if weights[key].shape != shape:
                raise ValueError(f"adapter {key} is {weights[key].shape}, expected {shape}")
        self._down, self._up = Linear(weights, "down"), Linear(weights, "up")

    @classmethod
    def load(cls, path: Path) -> NumpyAdapter:
        with safe_open(str(path), framework="numpy") as fh:
            meta = fh.metadata() or {}
            weights = {k: fh.get_tensor(k) for k in fh.keys()}  # noqa: SIM118 (not a dict)
        if "dim" not in meta or "rank" not in meta:
            raise ValueError(f"{path}: adapter file has no dim/rank metadata")
        adapter = cls(weights)
        if (adapter.dim, adapter.rank) != (int(meta["dim"]), int(meta["rank"])):
            raise ValueError(f"{path}: weights do not match the dim/rank metadata")
        return adapter

    def apply_numpy(self, queries: np.ndarray) -> np.ndarray:
        """Adapt float32 query rows (or one vector)."""
        q = np.asarray(queries, dtype=np.float32)
        return l2_normalize(q + self._up(gelu(self._down(q))))
