"""The FAISS index over item vectors.

Exact inner product (``IndexIDMap2`` over ``IndexFlatIP``) for small catalogs; IVF-Flat above
``exact_max_items``, with recall@10 against exact measured at build time and ``nprobe``
raised until it reaches the target. IVF keeps its own ids and supports ``remove_ids``, so
both kinds take upserts and deletes in place (FAISS's HNSW cannot delete, hence IVF).
Ids are int64 keys; the catalog maps them to item ids. Vectors are L2-normalized float32,
so inner product is cosine similarity.
"""

from __future__ import annotations

import json
import logging
import math
import threading
import time
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Literal

import faiss
import numpy as np

log = logging.getLogger(__name__)

INDEX_FILE = "index.faiss"
INFO_FILE = "index.json"
RECALL_K = 10
IndexKind = Literal["auto", "exact", "ivf"]


def faiss_backend() -> str:
    """``faiss-gpu`` when FAISS sees a GPU, else ``faiss-cpu``."""
    gpu = hasattr(faiss, "StandardGpuResources") and faiss.get_num_gpus() > 0
    return "faiss-gpu" if gpu else "faiss-cpu"


@dataclass(frozen=True)
class IndexInfo:
    """How an index was built; stored beside it and reported by the service."""

    kind: str
    dim: int
    encoder_version: str
    recall_at_10: float
    recall_queries: int
    recall_query_source: str = "noisy-items"
    nlist: int = 0
    nprobe: int = 0
    build_seconds: float = 0.0
    built_at: float = 0.0


def ann_recall_at_k(found: np.ndarray, truth: np.ndarray) -> float:
    """How well an approximate index finds the exact top-k: the mean share of each row of
    ``truth`` (true top-k keys, -1 padded) found in the same row of ``found``."""
    hits, total = 0, 0
    for got, want in zip(found, truth, strict=True):
        want = want[want >= 0]
        hits += len(np.intersect1d(got[got >= 0], want))
        total += len(want)
    return hits / total if total else 1.0


def noisy_item_queries(vectors: np.ndarray, n: int, seed: int = 0) -> np.ndarray:
    """Stand-in queries when no real ones are given: sampled items plus Gaussian noise of
    norm ~1 (cos ~0.7 to their item), so a query sits among the items, not on one.

    Real query vectors (``build(queries=...)``) are better: text queries sit farther from
    the item clusters than this and need a larger ``nprobe``.
    """
    rng = np.random.default_rng(seed)
    rows = rng.choice(len(vectors), size=min(n, len(vectors)), replace=False)
    noise = rng.standard_normal((len(rows), vectors.shape[1])).astype(np.float32)
    noisy = vectors[rows] + noise / math.sqrt(vectors.shape[1])
    return (noisy / np.linalg.norm(noisy, axis=1, keepdims=True)).astype(np.float32)


def exact_top_k(vectors: np.ndarray, keys: np.ndarray, queries: np.ndarray, k: int) -> np.ndarray:
    """Keys of the exact top-k by inner product (brute force), -1 padded."""
    flat = faiss.IndexIDMap2(faiss.IndexFlatIP(vectors.shape[1]))
    flat.add_with_ids(vectors, keys)
    return flat.search(queries, k)[1]


class VectorIndex:
    """A FAISS index with int64 keys, searchable with an optional allowed-key filter.

    Not thread-safe for mutation: the catalog serializes writers against readers.
    """

    def __init__(self, index: faiss.Index, info: IndexInfo) -> None:
        self.index = index
        self.info = info
        self.backend = faiss_backend()
        self._gpu_index: faiss.Index | None = None
        self._gpu_resources = None
        self._gpu_lock = threading.Lock()  # FAISS GPU indexes are not thread-safe

    @property
    def ntotal(self) -> int:
        return int(self.index.ntotal)

    @property
    def dim(self) -> int:
        return self.info.dim

    @classmethod
    def build(
        cls,
        vectors: np.ndarray,
        keys: np.ndarray,
        *,
        encoder_version: str,
        kind: IndexKind = "auto",
        exact_max_items: int = 20000,
        nlist: int = 0,
        nprobe: int = 8,
        min_recall: float = 0.95,
        n_recall_queries: int = 500,
        queries: np.ndarray | None = None,
        seed: int = 0,
    ) -> VectorIndex:
        """Build over ``vectors`` (n, d) float32 with int64 ``keys``; measure recall@10 on
        ``queries`` (real query vectors) or, without them, on noisy item vectors."""
        vectors, keys = _as_vectors(vectors), _as_keys(keys)
        if len(vectors) != len(keys):
            raise ValueError(f"{len(vectors)} vectors but {len(keys)} keys")
        if kind == "auto":
            kind = "exact" if len(vectors) <= exact_max_items else "ivf"
        start = time.perf_counter()
        source = "query-vectors" if queries is not None else "noisy-items"
        if queries is not None:
            queries = _as_vectors(queries)[:n_recall_queries]
        elif len(vectors):
            queries = noisy_item_queries(vectors, n_recall_queries, seed)
        if kind == "exact":
            index = faiss.IndexIDMap2(faiss.IndexFlatIP(vectors.shape[1]))
            index.add_with_ids(vectors, keys)
            nlist, recall = 0, 1.0
        elif kind == "ivf":
            index, nlist = _train_ivf(vectors, nlist, seed)
            index.add_with_ids(vectors, keys)
            nprobe, recall = _tune_nprobe(index, vectors, keys, queries, nprobe, min_recall)
        else:
            raise ValueError(f"unknown index kind {kind!r} (auto, exact or ivf)")
        info = IndexInfo(
            kind=kind,
            dim=int(vectors.shape[1]),
            encoder_version=encoder_version,
            recall_at_10=round(recall, 4),
            recall_queries=0 if queries is None else len(queries),
            recall_query_source=source,
            nlist=nlist,
            nprobe=nprobe if kind == "ivf" else 0,
            build_seconds=round(time.perf_counter() - start, 3),
            built_at=time.time(),
        )
        log.info("built %s index of %d items: recall@10 %.4f", kind, len(vectors), recall)
        return cls(index, info)

    def add(self, vectors: np.ndarray, keys: np.ndarray) -> None:
        self.index.add_with_ids(_as_vectors(vectors), _as_keys(keys))
        self._gpu_index = None

    def remove(self, keys: np.ndarray) -> int:
        removed = int(self.index.remove_ids(_as_keys(keys)))
        self._gpu_index = None
        return removed

    def search(
        self, queries: np.ndarray, k: int, allowed: np.ndarray | None = None
    ) -> tuple[np.ndarray, np.ndarray]:
        """Top-k (scores, keys) per query row; ``allowed``: only these keys. -1 pads."""
        queries = _as_vectors(np.atleast_2d(queries))
        k = max(1, min(k, self.ntotal)) if self.ntotal else 1
        if allowed is not None:
            selector = faiss.IDSelectorBatch(_as_keys(allowed))
            if self.info.kind == "ivf":
                params = faiss.SearchParametersIVF(sel=selector, nprobe=self.info.nprobe)
            else:
                params = faiss.SearchParameters(sel=selector)
            return self.index.search(queries, k, params=params)
        if self.backend != "faiss-gpu":
            return self.index.search(queries, k)
        with self._gpu_lock:
            return self._gpu_copy().search(queries, k)

    def _gpu_copy(self) -> faiss.Index:
        """A GPU copy of the index for unfiltered searches, remade after each change."""
        if self._gpu_index is None:
            if self._gpu_resources is None:
                self._gpu_resources = faiss.StandardGpuResources()
            self._gpu_index = faiss.index_cpu_to_gpu(self._gpu_resources, 0, self.index)
            if self.info.kind == "ivf":
                faiss.GpuParameterSpace().set_index_parameter(
                    self._gpu_index, "nprobe", self.info.nprobe
                )
        return self._gpu_index

    def save(self, folder: Path) -> None:
        folder.mkdir(parents=True, exist_ok=True)
        faiss.write_index(self.index, str(folder / INDEX_FILE))
        (folder / INFO_FILE).write_text(json.dumps(asdict(self.info), indent=2), "utf-8")

    @classmethod
    def load(cls, folder: Path) -> VectorIndex:
        for name in (INDEX_FILE, INFO_FILE):
            if not (folder / name).is_file():
                raise FileNotFoundError(f"index file not found: {folder / name}")
        info = IndexInfo(**json.loads((folder / INFO_FILE).read_text(encoding="utf-8")))
        index = faiss.read_index(str(folder / INDEX_FILE))
        if info.kind == "ivf":
            faiss.extract_index_ivf(index).nprobe = info.nprobe
        return cls(index, info)


def _train_ivf(vectors: np.ndarray, nlist: int, seed: int) -> tuple[faiss.Index, int]:
    n, dim = vectors.shape
    if nlist <= 0:
        nlist = int(4 * math.sqrt(n))
    nlist = max(1, min(nlist, n // 39))
    rng = np.random.default_rng(seed)
    train = vectors[rng.choice(n, size=min(n, nlist * 64), replace=False)]
    index = faiss.IndexIVFFlat(faiss.IndexFlatIP(dim), dim, nlist, faiss.METRIC_INNER_PRODUCT)
    index.cp.seed = seed
    index.train(train)
    return index, nlist


def _tune_nprobe(
    index: faiss.IndexIVFFlat,
    vectors: np.ndarray,
    keys: np.ndarray,
    queries: np.ndarray,
    nprobe: int,
    min_recall: float,
) -> tuple[int, float]:
    """Smallest power-of-two multiple of ``nprobe`` whose recall@10 reaches ``min_recall``."""
    truth = exact_top_k(vectors, keys, queries, RECALL_K)
    nprobe = min(nprobe, index.nlist)
    while True:
        index.nprobe = nprobe
        recall = ann_recall_at_k(index.search(queries, RECALL_K)[1], truth)
        if recall >= min_recall or nprobe >= index.nlist:
            return nprobe, recall
        nprobe = min(2 * nprobe, index.nlist)


def _as_vectors(vectors: np.ndarray) -> np.ndarray:
    vectors = np.ascontiguousarray(vectors, dtype=np.float32)
    if vectors.ndim != 2:
        raise ValueError(f"vectors must be 2-D, got shape {vectors.shape}")
    return vectors


def _as_keys(keys: np.ndarray) -> np.ndarray:
    return np.ascontiguousarray(keys, dtype=np.int64).reshape(-1)
