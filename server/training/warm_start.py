"""A public warm start for the query adapter: trained on the catalog alone, before any user.

Shoppers search a catalog by its own vocabulary: an item's category ("casual shoes"),
often with one of its attribute values ("black casual shoes", "men casual shoes").
``catalog_phrases`` turns the public catalog into such phrases, each with the items it
describes exactly (same category, same attribute value); only categorical attributes
(``common.data.records.categorical_attributes``) make phrases. ``train_warm_start`` then fits a
``QueryAdapter`` so that a phrase's vector ranks the items it describes above the others:
per phrase, the softmax over all items puts its mass on the described ones.

No user data is involved, so the warm start costs no privacy: federated training starts
from it instead of from the identity and spends its budget on what only users know
(which items they pick among the matching ones). It is also a baseline of its own, so the
federated gain over it is visible.
"""

from __future__ import annotations

from collections import defaultdict
from collections.abc import Sequence

import numpy as np
import torch

from common.data.records import Product, categorical_attributes
from common.model.adapter import QueryAdapter

TEMPERATURE = 0.05


def catalog_phrases(products: Sequence[Product]) -> dict[str, np.ndarray]:
    """Phrase -> sorted item rows it describes exactly (see the module doc)."""
    columns = categorical_attributes(products)
    phrases: dict[str, list[int]] = defaultdict(list)
    for row, product in enumerate(products):
        category = product.category.strip().lower()
        if not category:
            continue
        phrases[category].append(row)
        for column in columns.values():
            value = column[row].strip().lower()
            if value and value != category:
                phrases[f"{value} {category}"].append(row)
    return {phrase: np.array(sorted(set(rows)), dtype=np.int64) for phrase, rows in phrases.items()}


def train_warm_start(
    phrase_vectors: np.ndarray,
    positives: Sequence[np.ndarray],
    item_vectors: np.ndarray,
    *,
    rank: int,
    steps: int = 600,
    batch_size: int = 128,
    lr: float = 3e-3,
    seed: int = 0,
) -> QueryAdapter:
    """A ``QueryAdapter`` that ranks each phrase's items first (see the module doc)."""
    if len(phrase_vectors) != len(positives) or not len(positives):
        raise ValueError("need one set of positive items per phrase, and some phrases")
    generator = torch.Generator().manual_seed(seed)
    torch.manual_seed(seed)
    adapter = QueryAdapter(item_vectors.shape[1], rank)
    optimizer = torch.optim.Adam(adapter.parameters(), lr=lr)
    items = torch.from_numpy(np.ascontiguousarray(item_vectors, dtype=np.float32))
    phrases = torch.from_numpy(np.ascontiguousarray(phrase_vectors, dtype=np.float32))
    mask = torch.zeros(len(positives), len(item_vectors), dtype=torch.bool)
    for row, items_of_phrase in enumerate(positives):
        mask[row, torch.from_numpy(np.asarray(items_of_phrase))] = True
    adapter.train()
    for _ in range(steps):
        batch = torch.randperm(len(positives), generator=generator)[:batch_size]
        logits = adapter(phrases[batch]) @ items.T / TEMPERATURE
        described = logits.masked_fill(~mask[batch], float("-inf"))
        loss = (torch.logsumexp(logits, 1) - torch.logsumexp(described, 1)).mean()
        optimizer.zero_grad()
        loss.backward()
        optimizer.step()
    adapter.eval()
    return adapter
