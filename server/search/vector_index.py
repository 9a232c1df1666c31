"""The FAISS index over item vectors.

Exact inner product (``IndexIDMap2`` over ``IndexFlatIP``) for small catalogs; above
``exact_max_items`` an IVF index with float32, float16, 8-bit or product-quantized codes
(``server.search.index_kinds``), with recall@10 against exact measured at build time and
``nprobe`` raised until it reaches the target. IVF keeps its own ids and supports
``remove_ids``, so every kind takes upserts and deletes in place (FAISS's HNSW cannot
delete, hence IVF). A product-quantized index returns a shortlist that ``search`` re-scores
on the full vectors the caller provides. Ids are int64 keys; the catalog maps them to item
ids. Vectors are L2-normalized float32, so inner product is cosine similarity.
"""

from __future__ import annotations

import dataclasses
import json
import logging
import math
import threading
import time
from collections.abc import Callable
from dataclasses import asdict, dataclass
from pathlib import Path

import faiss
import numpy as np

from server.search.index_kinds import (
    DEFAULT_INDEX_OPTIONS,
    REFINED_KINDS,
    IndexOptions,
    choose_kind,
    product_code_bytes,
    train_ann,
)

log = logging.getLogger(__name__)

INDEX_FILE = "index.faiss"
INFO_FILE = "index.json"
RECALL_K = 10
CONFIDENCE_Z = 1.645  # one-sided 95%
VectorLookup = Callable[[np.ndarray], np.ndarray]


def faiss_backend() -> str:
    """``faiss-gpu`` when FAISS sees a GPU, else ``faiss-cpu``."""
    gpu = hasattr(faiss, "StandardGpuResources") and faiss.get_num_gpus() > 0
    return "faiss-gpu" if gpu else "faiss-cpu"


@dataclass(frozen=True)
class IndexInfo:
    """How an index was built; stored beside it and reported by the service.
    ``bytes_per_item``: the serialized index's size over its items; ``refine_factor`` > 0:
    the shortlist of ``refine_factor * k`` is re-scored on full vectors;
    ``recall_at_10_low``: the one-sided 95% lower confidence bound of ``recall_at_10``
    over its queries (what the tuning of ``nprobe`` holds to the target; None for an index
    built before the bound was stored)."""

    kind: str
    dim: int
    encoder_version: str
    recall_at_10: float
    recall_queries: int
    recall_at_10_low: float | None = None
    recall_query_source: str = "noisy-items"
    nlist: int = 0
    nprobe: int = 0
    build_seconds: float = 0.0
    built_at: float = 0.0
    bytes_per_item: float = 0.0
    pq_bytes: int = 0
    refine_factor: int = 0


def ann_recall_at_k(found: np.ndarray, truth: np.ndarray) -> float:
    """How well an approximate index finds the exact top-k: the mean share of each row of
    ``truth`` (true top-k keys, -1 padded) found in the same row of ``found``."""
    hits, total = 0, 0
    for got, want in zip(found, truth, strict=True):
        want = want[want >= 0]
        hits += len(np.intersect1d(got[got >= 0], want))
        total += len(want)
    return hits / total if total else 1.0


def recall_lower_bound(found: np.ndarray, truth: np.ndarray) -> float:
    """A one-sided 95% lower confidence bound of the mean recall@k of ``found`` against
    ``truth`` (rows as in ``ann_recall_at_k``): the mean of the per-query recalls less
    ``CONFIDENCE_Z`` standard errors, so a small or lucky sample of queries cannot pass.
    Two pseudo-queries, one with recall 0 and one with 1 (as in Agresti and Coull's
    interval), keep a margin for a small sample without spread."""
    recalls = [0.0, 1.0] + [
        len(np.intersect1d(got[got >= 0], want[want >= 0])) / max(1, int((want >= 0).sum()))
        for got, want in zip(found, truth, strict=True)
    ]
    spread = float(np.std(recalls, ddof=1)) / np.sqrt(len(recalls))
    return float(np.mean(recalls)) - CONFIDENCE_Z * spread


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
    ``refine_cpu_s`` adds up the CPU time of re-scoring shortlists on full vectors.
    """

    def __init__(self, index: faiss.Index, info: IndexInfo) -> None:
        self.index = index
        self.info = info
        self.backend = faiss_backend()
        self.refine_cpu_s = 0.0
        self._gpu_index: faiss.Index | None = None
        self._gpu_resources: faiss.StandardGpuResources | None = None
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
        options: IndexOptions = DEFAULT_INDEX_OPTIONS,
        queries: np.ndarray | None = None,
    ) -> VectorIndex:
        """Build over ``vectors`` (n, d) float32 with int64 ``keys``; measure recall@10 on
        ``queries`` (real query vectors) or, without them, on noisy item vectors. ``auto``
        picks the kind by size and ``options.memory_mb`` (``index_kinds.choose_kind``)."""
        vectors, keys = _as_vectors(vectors), _as_keys(keys)
        if len(vectors) != len(keys):
            raise ValueError(f"{len(vectors)} vectors but {len(keys)} keys")
        dim = int(vectors.shape[1])
        o = dataclasses.replace(options, pq_bytes=product_code_bytes(dim, options.pq_bytes))
        kind = o.kind
        if kind == "auto":
            kind = choose_kind(  # type: ignore[assignment]
                len(vectors), dim, exact_max_items=o.exact_max_items, memory_mb=o.memory_mb,
                pq_bytes=o.pq_bytes,
            )  # fmt: skip
        start = time.perf_counter()
        source = "query-vectors" if queries is not None else "noisy-items"
        if queries is not None:
            queries = _as_vectors(queries)[: o.recall_queries]
        elif len(vectors):
            queries = noisy_item_queries(vectors, o.recall_queries, o.seed)
        refined = kind in REFINED_KINDS
        info = IndexInfo(
            kind=kind,
            dim=dim,
            encoder_version=encoder_version,
            recall_at_10=1.0,
            recall_at_10_low=1.0,
            recall_queries=0 if queries is None else len(queries),
            recall_query_source=source,
            pq_bytes=o.pq_bytes if kind == "ivf-pq" else 0,
            refine_factor=o.refine_factor if refined else 0,
        )
        if kind == "exact":
            index = faiss.IndexIDMap2(faiss.IndexFlatIP(dim))
            index.add_with_ids(vectors, keys)
            out = cls(index, info)
        else:
            index, nlist = train_ann(kind, vectors, o.nlist, o.pq_bytes, o.seed)
            index.add_with_ids(vectors, keys)
            out = cls(index, dataclasses.replace(info, nlist=nlist))
            out._tune_nprobe(vectors, keys, queries, o.nprobe, o.min_recall)
        out.info = dataclasses.replace(
            out.info,
            build_seconds=round(time.perf_counter() - start, 3),
            built_at=time.time(),
            bytes_per_item=round(len(faiss.serialize_index(index)) / max(1, len(vectors)), 1),
        )
        log.info(
            "built %s index of %d items: recall@10 %.4f (95%% lower bound %.4f), %.0f bytes "
            "per item", kind, len(vectors), out.info.recall_at_10, out.info.recall_at_10_low,
            out.info.bytes_per_item,
        )  # fmt: skip
        return out

    def add(self, vectors: np.ndarray, keys: np.ndarray) -> None:
        self.index.add_with_ids(_as_vectors(vectors), _as_keys(keys))
        self._gpu_index = None

    def remove(self, keys: np.ndarray) -> int:
        # faiss's stub lists only remove_ids(IDSelector) on Index; its Python layer takes ids
        removed = int(self.index.remove_ids(_as_keys(keys)))  # type: ignore[arg-type]
        self._gpu_index = None
        return removed

    def search(
        self,
        queries: np.ndarray,
        k: int,
        allowed: np.ndarray | None = None,
        full_vectors: VectorLookup | None = None,
    ) -> tuple[np.ndarray, np.ndarray]:
        """Top-k (scores, keys) per query row; ``allowed``: only these keys. -1 pads.
        ``full_vectors`` (keys -> float32 rows): re-score a compressed index's shortlist
        exactly; without it the approximate scores are returned."""
        queries = _as_vectors(np.atleast_2d(queries))
        k = max(1, min(k, self.ntotal)) if self.ntotal else 1
        refine = self.info.refine_factor if full_vectors is not None else 0
        shortlist = min(k * refine, self.ntotal) if refine else k
        scores, keys = self._search(queries, max(1, shortlist), allowed)
        if not refine or full_vectors is None:
            return scores, keys
        start = time.thread_time()
        out = _rescore(queries, keys, full_vectors, k)
        self.refine_cpu_s += time.thread_time() - start
        return out

    def _search(
        self, queries: np.ndarray, k: int, allowed: np.ndarray | None
    ) -> tuple[np.ndarray, np.ndarray]:
        if allowed is not None:
            selector = faiss.IDSelectorBatch(_as_keys(allowed))
            # faiss's stub omits the keyword __init__ its Python layer gives SearchParameters
            params: faiss.SearchParameters
            if self.info.kind != "exact":
                params = faiss.SearchParametersIVF(  # type: ignore[call-arg]
                    sel=selector, nprobe=self.info.nprobe
                )
            else:
                params = faiss.SearchParameters(sel=selector)  # type: ignore[call-arg]
            return self.index.search(queries, k, params=params)
        if self.backend != "faiss-gpu":
            return self.index.search(queries, k)
        with self._gpu_lock:
            gpu = self._gpu_copy()
            return (gpu or self.index).search(queries, k)

    def _gpu_copy(self) -> faiss.Index | None:
        """A GPU copy of the index for unfiltered searches, remade after each change; None
        (and the CPU index from then on) when FAISS cannot put this kind on the GPU."""
        if self._gpu_index is None:
            try:
                if self._gpu_resources is None:
                    self._gpu_resources = faiss.StandardGpuResources()
                self._gpu_index = faiss.index_cpu_to_gpu(self._gpu_resources, 0, self.index)
            except RuntimeError as exc:
                log.warning(
                    "%s index stays on the CPU: FAISS GPU refused it (%s)", self.info.kind, exc
                )
                self.backend = "faiss-cpu"
                return None
            if self.info.kind != "exact":
                faiss.GpuParameterSpace().set_index_parameter(
                    self._gpu_index, "nprobe", self.info.nprobe
                )
        return self._gpu_index

    def _tune_nprobe(
        self,
        vectors: np.ndarray,
        keys: np.ndarray,
        queries: np.ndarray | None,
        nprobe: int,
        min_recall: float,
    ) -> None:
        """Smallest power-of-two multiple of ``nprobe`` whose recall@10 (after re-scoring,
        for refined kinds) reaches ``min_recall`` with 95% confidence (its lower bound,
        ``recall_lower_bound``); sets ``info.nprobe`` and the recall."""
        ivf = faiss.extract_index_ivf(self.index)
        nprobe = min(nprobe, ivf.nlist)
        if queries is None or not len(queries):
            self._set_nprobe(nprobe, 1.0, 1.0)
            return
        truth = exact_top_k(vectors, keys, queries, RECALL_K)
        lookup = _row_lookup(vectors, keys)
        while True:
            self._set_nprobe(nprobe, 0.0, 0.0)
            found = self.search(queries, RECALL_K, full_vectors=lookup)[1]
            low = recall_lower_bound(found, truth)
            if low >= min_recall or nprobe >= ivf.nlist:
                self._set_nprobe(nprobe, ann_recall_at_k(found, truth), low)
                self.refine_cpu_s = 0.0
                return
            nprobe = min(2 * nprobe, ivf.nlist)

    def _set_nprobe(self, nprobe: int, recall: float, low: float) -> None:
        faiss.extract_index_ivf(self.index).nprobe = nprobe
        self.info = dataclasses.replace(
            self.info, nprobe=nprobe, recall_at_10=round(recall, 4), recall_at_10_low=round(low, 4)
        )

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
        if info.kind != "exact":
            faiss.extract_index_ivf(index).nprobe = info.nprobe
        return cls(index, info)


def _rescore(
    queries: np.ndarray, keys: np.ndarray, full_vectors: VectorLookup, k: int
) -> tuple[np.ndarray, np.ndarray]:
    """Exact top-k of each row's shortlist ``keys`` (-1 padded), by the full vectors."""
    scores = np.full((len(queries), k), -np.inf, dtype=np.float32)
    out = np.full((len(queries), k), -1, dtype=np.int64)
    for row, (query, found) in enumerate(zip(queries, keys, strict=True)):
        found = found[found >= 0]
        exact = full_vectors(found) @ query
        top = np.argsort(-exact, kind="stable")[:k]
        scores[row, : len(top)], out[row, : len(top)] = exact[top], found[top]
    return scores, out


def _row_lookup(vectors: np.ndarray, keys: np.ndarray) -> VectorLookup:
    order = np.argsort(keys)
    sorted_keys = keys[order]
    return lambda wanted: vectors[order[np.searchsorted(sorted_keys, wanted)]]


def _as_vectors(vectors: np.ndarray) -> np.ndarray:
    vectors = np.ascontiguousarray(vectors, dtype=np.float32)
    if vectors.ndim != 2:
        raise ValueError(f"vectors must be 2-D, got shape {vectors.shape}")
    return vectors


def _as_keys(keys: np.ndarray) -> np.ndarray:
    return np.ascontiguousarray(keys, dtype=np.int64).reshape(-1)
