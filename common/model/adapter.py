"""The shared query adapter: a residual low-rank MLP on the base query vector.

``adapted = normalize(q + up(gelu(down(q))))`` with ``up`` initialised to zero, so a new
adapter is the identity. Item vectors never pass through it: they come from the frozen
base towers, so a new adapter version never forces re-indexing and a hot swap moves a few
hundred KB.
"""

from __future__ import annotations

from collections import OrderedDict
from pathlib import Path

import numpy as np
import torch
from safetensors.torch import load_file, save_file
from torch import nn
from torch.nn import functional as F

from common.model.adapter_numpy import ADAPTER_FILE as ADAPTER_FILE  # re-exported


class QueryAdapter(nn.Module):
    def __init__(self, dim: int, rank: int = 64) -> None:
        super().__init__()
        if dim <= 0 or rank <= 0:
            raise ValueError(f"dim and rank must be > 0, got dim={dim}, rank={rank}")
        self.dim = dim
        self.rank = rank
        self.down = nn.Linear(dim, rank)
        self.up = nn.Linear(rank, dim)
        nn.init.zeros_(self.up.weight)
        nn.init.zeros_(self.up.bias)

    def forward(self, query: torch.Tensor) -> torch.Tensor:
        return F.normalize(query + self.up(F.gelu(self.down(query))), dim=-1)

    @torch.no_grad()
    def apply_numpy(self, queries: np.ndarray) -> np.ndarray:
        """Adapt float32 query rows (or one vector) outside autograd."""
        x = torch.from_numpy(np.ascontiguousarray(queries, dtype=np.float32))
        adapted: torch.Tensor = self(x)
        return adapted.numpy()

    def get_weights(self) -> list[np.ndarray]:
        """Parameters as float32 arrays in a fixed order (the Flower wire format)."""
        return [v.detach().cpu().numpy().astype(np.float32) for v in self.state_dict().values()]

    @classmethod
    def from_weights(cls, weights: list[np.ndarray]) -> QueryAdapter:
        """An adapter (eval mode) from its wire format; dim and rank read off the arrays."""
        rank, dim = np.asarray(weights[0]).shape
        adapter = cls(dim, rank)
        adapter.set_weights(weights)
        adapter.eval()
        return adapter

    def set_weights(self, weights: list[np.ndarray]) -> None:
        keys = list(self.state_dict().keys())
        if len(weights) != len(keys):
            raise ValueError(f"expected {len(keys)} arrays, got {len(weights)}")
        state = OrderedDict(
            (k, torch.from_numpy(np.asarray(w, dtype=np.float32)))
            for k, w in zip(keys, weights, strict=True)
        )
        self.load_state_dict(state, strict=True)

    def save(self, path: Path) -> None:
        state = {k: v.detach().cpu().contiguous() for k, v in self.state_dict().items()}
        save_file(state, str(path), metadata={"dim": str(self.dim), "rank": str(self.rank)})

    @classmethod
    def load(cls, path: Path) -> QueryAdapter:
        from safetensors import safe_open

        with safe_open(str(path), framework="pt") as fh:
            meta = fh.metadata() or {}
        if "dim" not in meta or "rank" not in meta:
            raise ValueError(f"{path}: adapter file has no dim/rank metadata")
        adapter = cls(int(meta["dim"]), int(meta["rank"]))
        adapter.load_state_dict(load_file(str(path)), strict=True)
        adapter.eval()
        return adapter
