"""The kinds of FAISS index the catalog can be served from, their size, and the choice.

=========  ===========================================  ===================  =============
kind       FAISS index                                  bytes per item       re-scored
=========  ===========================================  ===================  =============
exact      ``IndexIDMap2(IndexFlatIP)``                 4 d + 8              no (exact)
ivf        ``IndexIVFFlat``                             4 d + 8              no (exact codes)
ivf-fp16   ``IndexIVFScalarQuantizer`` (QT_fp16)        2 d + 8              no
ivf-sq8    ``IndexIVFScalarQuantizer`` (QT_8bit)        d + 8                no
ivf-pq     ``IndexIVFPQ`` (``pq_bytes`` 8-bit codes)    pq_bytes + 8         yes
=========  ===========================================  ===================  =============

(8 bytes per item are its int64 id; a catalog of fewer than 256 items gets product codes of
fewer bits, as k-means needs a training point per centroid.) Scalar codes keep inner
products within about 1e-3 (fp16) or 1e-2 (8-bit) of exact, close enough to rank by;
product codes are coarser, so an
IVF-PQ search takes a shortlist of ``refine_factor * k`` candidates and re-scores it on the
catalog's full float32 vectors. ``choose_kind`` takes the most exact kind whose codes fit
the memory budget. All kinds take ``add_with_ids`` and ``remove_ids``, so upserts and
deletes work in place.
"""

from __future__ import annotations

import logging
import math
from dataclasses import dataclass
from typing import Any, Literal

import numpy as np

from common.config import SearchConfig

log = logging.getLogger(__name__)

ANN_KINDS = ("ivf", "ivf-fp16", "ivf-sq8", "ivf-pq")
INDEX_KINDS = ("exact", *ANN_KINDS)
REFINED_KINDS = ("ivf-pq",)
IndexKind = Literal["auto", "exact", "ivf", "ivf-fp16", "ivf-sq8", "ivf-pq"]
PQ_BITS = 8


@dataclass(frozen=True)
class IndexOptions:
    """How an index is built: its ``kind`` ("auto" chooses by size and ``memory_mb``), the
    exact-search threshold, IVF lists (0: 4 * sqrt(n)) and the starting ``nprobe`` raised
    until recall@10 reaches ``min_recall`` on ``recall_queries`` queries (the 95% lower
    confidence bound of their mean, ``vector_index.recall_lower_bound``), the product-code
    size (0: ``product_code_bytes``) and re-scored shortlist of IVF-PQ, and the training
    ``seed``."""

    kind: IndexKind = "auto"
    exact_max_items: int = 20000
    nlist: int = 0
    nprobe: int = 8
    min_recall: float = 0.95
    recall_queries: int = 2000
    memory_mb: float = 256.0
    pq_bytes: int = 0
    refine_factor: int = 10
    seed: int = 0

    @classmethod
    def from_search_config(cls, search: SearchConfig, kind: IndexKind = "auto") -> IndexOptions:
        """The options of the ``[search]`` config section."""
        return cls(
            kind=kind,
            exact_max_items=search.exact_max_items,
            nlist=search.ivf_nlist,
            nprobe=search.ivf_nprobe,
            min_recall=search.ann_min_recall,
            recall_queries=search.recall_queries,
            memory_mb=search.index_memory_mb,
            pq_bytes=search.pq_bytes,
            refine_factor=search.refine_factor,
        )


DEFAULT_INDEX_OPTIONS = IndexOptions()


def pq_bits(n: int) -> int:
    """8-bit product codes, fewer for catalogs too small to train 256 centroids."""
    return max(1, min(PQ_BITS, int(math.log2(max(2, n)))))


def product_code_bytes(dim: int, pq_bytes: int) -> int:
    """``pq_bytes``, or for 0 the largest divisor of ``dim`` up to ``dim / 4``: one byte per
    four dimensions (96 for 384), which at a million items keeps recall@10 >= 0.95 with the
    default shortlist (README, "Speed and memory"), where a byte per eight needed four
    times the re-scored candidates."""
    if pq_bytes:
        return pq_bytes
    return max(m for m in range(1, max(1, dim // 4) + 1) if dim % m == 0)


def code_bytes(kind: str, dim: int, pq_bytes: int) -> int:
    """Bytes per item of ``kind``'s stored vector codes plus its int64 id."""
    per_vector = {"exact": 4 * dim, "ivf": 4 * dim, "ivf-fp16": 2 * dim, "ivf-sq8": dim}
    return per_vector.get(kind, product_code_bytes(dim, pq_bytes)) + 8


def choose_kind(n: int, dim: int, *, exact_max_items: int, memory_mb: float, pq_bytes: int) -> str:
    """``exact`` up to ``exact_max_items``; above, the first ANN kind whose codes for ``n``
    items fit ``memory_mb`` (IVF-PQ, the smallest, if none does)."""
    if n <= exact_max_items:
        return "exact"
    budget = memory_mb * 2**20
    for kind in ANN_KINDS:
        if n * code_bytes(kind, dim, pq_bytes) <= budget:
            return kind
    log.warning(
        "%d items need %.0f MB even as IVF-PQ codes, over search.index_memory_mb = %.0f",
        n,
        n * code_bytes("ivf-pq", dim, pq_bytes) / 2**20,
        memory_mb,
    )
    return "ivf-pq"


def check_pq_bytes(dim: int, pq_bytes: int) -> None:
    if pq_bytes < 1 or dim % pq_bytes:
        raise ValueError(f"search.pq_bytes: must divide the vector dimension {dim}, got {pq_bytes}")


def train_ann(
    kind: str, vectors: np.ndarray, nlist: int, pq_bytes: int, seed: int
) -> tuple[Any, int]:
    """An empty, trained IVF index of ``kind`` over ``vectors``; returns (index, nlist)."""
    import faiss  # here, so that the command line's --help does not load it

    n, dim = vectors.shape
    if nlist <= 0:
        nlist = int(4 * math.sqrt(n))
    nlist = max(1, min(nlist, n // 39))
    quantizer = faiss.IndexFlatIP(dim)
    ip = faiss.METRIC_INNER_PRODUCT
    index: faiss.IndexIVF
    if kind == "ivf":
        index = faiss.IndexIVFFlat(quantizer, dim, nlist, ip)
    elif kind in ("ivf-fp16", "ivf-sq8"):
        qtype = (
            faiss.ScalarQuantizer.QT_fp16 if kind == "ivf-fp16" else faiss.ScalarQuantizer.QT_8bit
        )
        index = faiss.IndexIVFScalarQuantizer(quantizer, dim, nlist, qtype, ip)
    elif kind == "ivf-pq":
        check_pq_bytes(dim, pq_bytes)
        index = faiss.IndexIVFPQ(quantizer, dim, nlist, pq_bytes, pq_bits(n), ip)
    else:
        raise ValueError(f"unknown index kind {kind!r} ({', '.join(INDEX_KINDS)})")
    index.cp.seed = seed
    rng = np.random.default_rng(seed)
    train_rows = max(nlist * 64, 2 ** pq_bits(n) * 64 if kind == "ivf-pq" else 0)
    index.train(vectors[rng.choice(n, size=min(n, train_rows), replace=False)])
    return index, nlist
