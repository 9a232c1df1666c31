"""The per-sample ranking loss of the query adapter, and its negatives.

Per sample, because record-level DP bounds each sample's gradient: with in-batch negatives
one search would move every other search's gradient (measured: changing one record changed
every gradient in its batch) and the per-sample clipping argument would no longer hold.

Every training path (centralized baseline, federated DP client) uses these functions, so
both optimize the very same objective:

- ``ranking_loss(adapted_queries (B,d), positives (B,d), negatives (B,m,d), temperature)``
  -> (B,) losses: softmax cross-entropy of each adapted query against its own clicked item
  versus its own negatives. Sample ``i``'s loss reads only row ``i`` of each input.
- ``negative_indices(searches, n_items, ...)`` -> (B, m) item indices: per search, the
  shown-but-not-clicked items of that same impression (``shown_negatives`` slots, padded
  with random public catalog items) followed by ``random_negatives`` random catalog items.
  Never another sample's clicks or impressions (no in-batch negatives): changing one
  search changes only its own row. The random draws do not depend on the searches' content.
- ``SearchRows(searches, item_vectors, ...)``: the (query, positive, negatives) rows as a
  ``Dataset`` (a ``DataLoader``'s, Opacus's included); ``.tensors()`` -> (queries (B,d),
  positives (B,d), negatives (B,m,d)) ready for ``ranking_loss``.
"""

from __future__ import annotations

import functools
from collections.abc import Callable, Sequence

import numpy as np
import torch
from torch.nn import functional as F
from torch.utils.data import Dataset

from common.data.searches import SearchExample


def ranking_loss(
    adapted_queries: torch.Tensor,
    positives: torch.Tensor,
    negatives: torch.Tensor,
    temperature: float,
) -> torch.Tensor:
    """Per-sample softmax cross-entropy of the clicked item against the sample's negatives.

    Scores are dot products (cosines for unit vectors) divided by ``temperature``. Returns a
    (B,) tensor; reduce it yourself (Opacus expects the mean).
    """
    if temperature <= 0:
        raise ValueError(f"temperature must be > 0, got {temperature}")
    if adapted_queries.ndim != 2 or positives.shape != adapted_queries.shape:
        raise ValueError(
            f"queries {tuple(adapted_queries.shape)} and positives {tuple(positives.shape)} "
            "must both be (B, d)"
        )
    batch, dim = adapted_queries.shape
    if negatives.ndim != 3 or negatives.shape[0] != batch or negatives.shape[2] != dim:
        raise ValueError(f"negatives {tuple(negatives.shape)} must be ({batch}, m, {dim})")
    positive = (adapted_queries * positives).sum(dim=-1, keepdim=True)
    negative = torch.einsum("bd,bmd->bm", adapted_queries, negatives)
    logits = torch.cat([positive, negative], dim=1) / temperature
    return -F.log_softmax(logits, dim=1)[:, 0]


def negative_indices(
    searches: Sequence[SearchExample],
    n_items: int,
    *,
    shown_negatives: int,
    random_negatives: int,
    rng: np.random.Generator,
    public_items: int | None = None,
) -> np.ndarray:
    """(B, shown_negatives + random_negatives) item indices of each search's negatives.

    Row ``i`` holds search ``i``'s first ``shown_negatives`` shown-but-not-clicked items (in
    impression order; empty slots get random items), then ``random_negatives`` random items.
    Random items are uniform over the first ``public_items`` rows of the item table (default:
    all), minus the clicked item: on a device, the public catalog only, never the items that
    entered its table through its own searches, which would make one search's presence
    change the others' negatives. The generator is consumed identically whatever the searches
    hold, so one search never moves another's negatives.
    """
    if shown_negatives < 0 or random_negatives < 0 or shown_negatives + random_negatives == 0:
        raise ValueError("need shown_negatives >= 0, random_negatives >= 0, and some negatives")
    pool = n_items if public_items is None else min(public_items, n_items)
    if pool < 2:
        raise ValueError(f"need at least 2 public catalog items, got {pool}")
    width = shown_negatives + random_negatives
    clicked = np.array([s.clicked for s in searches], dtype=np.int64)
    out = rng.integers(0, pool - 1, size=(len(searches), width), dtype=np.int64)
    inside = (clicked < pool)[:, None]
    out += inside & (out >= clicked[:, None])  # skip over a public clicked item
    for row, search in enumerate(searches):
        shown = np.asarray(search.shown, dtype=np.int64)
        others = shown[shown != search.clicked][:shown_negatives]
        out[row, : len(others)] = others
    return out


class SearchRows(Dataset[tuple[torch.Tensor, torch.Tensor, torch.Tensor]]):
    """Searches as training rows (query, clicked item, negatives) for a ``DataLoader``.

    Row ``i`` is search ``i``'s query, its clicked item's vector and its negatives' vectors
    (``negative_indices``); an index may be one row or a batch (a list or tensor of rows),
    whose negatives are gathered from the item table as the batch is read, not kept for
    every search. ``tensors()`` gives every row; ``redraw`` draws fresh negatives from the
    same generator (e.g. for another epoch).
    """

    def __init__(
        self,
        searches: Sequence[SearchExample],
        item_vectors: np.ndarray,
        *,
        shown_negatives: int,
        random_negatives: int,
        rng: np.random.Generator,
        public_items: int | None = None,
    ) -> None:
        if len(searches) == 0:
            raise ValueError("SearchRows needs at least one search")
        vectors = np.asarray(item_vectors, dtype=np.float32)
        # read, never written: shared with the caller's table unless that one is read-only
        self.items = torch.from_numpy(vectors if vectors.flags.writeable else vectors.copy())
        queries = np.stack([np.asarray(s.query_vector, dtype=np.float32) for s in searches])
        self.queries = torch.from_numpy(queries)
        self.positives = self.items[[s.clicked for s in searches]]
        self._draw: Callable[[], np.ndarray] = functools.partial(
            negative_indices,
            searches,
            len(self.items),
            shown_negatives=shown_negatives,
            random_negatives=random_negatives,
            rng=rng,
            public_items=public_items,
        )
        self.negatives = torch.empty(0, dtype=torch.int64)
        self.redraw()

    def redraw(self) -> None:
        """New negatives for every search (each row's own, from the generator)."""
        self.negatives = torch.from_numpy(self._draw())

    def tensors(self) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
        """Float32 (queries (B,d), positives (B,d), negatives (B,m,d)) of every row."""
        return self[torch.arange(len(self))]

    def __len__(self) -> int:
        return len(self.queries)

    def __getitem__(
        self, index: int | Sequence[int] | torch.Tensor
    ) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
        rows = torch.as_tensor(index)
        ids = self.negatives[rows]
        negatives = self.items.index_select(0, ids.reshape(-1)).reshape(*ids.shape, -1)
        return self.queries[rows], self.positives[rows], negatives
