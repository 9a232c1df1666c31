"""The search pipeline, independent of HTTP.

query (text | image | both) -> base query vector -> global adapter -> FAISS top-N
candidates (with filters) -> optional rerank with the request's user vector -> top-k.
A request reads the serving state (adapter version + catalog) once, so it is served wholly
by one version; a hot swap replaces that one reference and clears the query cache. The user
vector is used for this request's reranking only: never stored, never logged.
``stage_cpu_s`` adds up the CPU time of the index search (with its re-scoring on full
vectors) and of the personal rerank, in the threads that run them.
"""

from __future__ import annotations

import threading
import time
from dataclasses import dataclass

import numpy as np
from PIL import Image

from common.model.personalization import rerank
from common.model.query_facets import candidate_matches
from server.search.catalog import Catalog, Filters, Item
from server.search.model_state import ModelState
from server.search.query_encoder import QueryEncoder


@dataclass(frozen=True)
class Query:
    """A validated search request. ``text_weight`` applies when both text and image are given
    (the image gets ``1 - text_weight``)."""

    text: str | None = None
    image: Image.Image | None = None
    text_weight: float = 0.5
    k: int = 10
    filters: Filters | None = None
    user_vector: np.ndarray | None = None
    personalization_weight: float = 0.3
    return_vectors: bool = False


@dataclass(frozen=True)
class SearchHit:
    """One catalog item in a result: final ``score`` (after any rerank), ``base_score``
    from the index, and the item's vector (returned to devices that rerank themselves)."""

    item: Item
    score: float
    base_score: float
    vector: np.ndarray


@dataclass(frozen=True)
class SearchResult:
    hits: list[SearchHit]
    model_version: str
    base_query: np.ndarray
    candidates: int
    personalized: bool
    took_ms: float


@dataclass(frozen=True)
class ServingState:
    """What one request is served by; replaced as a whole, never mutated."""

    model: ModelState
    catalog: Catalog


class SearchEngine:
    def __init__(
        self,
        query_encoder: QueryEncoder,
        catalog: Catalog,
        model: ModelState | None = None,
        *,
        candidates: int = 200,
    ) -> None:
        self.query_encoder = query_encoder
        self.candidates = candidates
        self._state = ServingState(model or ModelState(), catalog)
        self._swap_lock = threading.Lock()
        self.stage_cpu_s = {"search": 0.0, "rerank": 0.0}
        self._stage_lock = threading.Lock()

    @property
    def state(self) -> ServingState:
        return self._state

    def swap_model(self, model: ModelState) -> None:
        """Serve ``model`` from the next request on (one reference assignment)."""
        with self._swap_lock:
            self._state = ServingState(model, self._state.catalog)
            if self.query_encoder.cache is not None:
                self.query_encoder.cache.clear()

    def encode(self, query: Query) -> np.ndarray:
        """The base (not adapted) query vector."""
        text_w, image_w = _weights(query)
        return self.query_encoder.encode(
            query.text, query.image, text_weight=text_w, image_weight=image_w
        )

    def search(self, query: Query) -> SearchResult:
        start = time.perf_counter()
        state = self._state
        base = self.encode(query)
        return self.search_vector(base, query, state, start)

    def search_vector(
        self,
        base: np.ndarray,
        query: Query,
        state: ServingState | None = None,
        start: float | None = None,
    ) -> SearchResult:
        """Adapt ``base``, retrieve candidates, rerank; the part after encoding."""
        start = time.perf_counter() if start is None else start
        state = state or self._state
        adapted = state.model.adapt(base[None, :])[0]
        personal = query.user_vector is not None and query.personalization_weight > 0
        n = max(query.k, self.candidates) if personal else query.k
        cpu = time.thread_time()
        items, scores, vectors = state.catalog.search(adapted, n, query.filters)
        searched = time.thread_time()
        user = query.user_vector if personal else None
        matches = (
            candidate_matches(
                query.text, [i.category for i in items], [i.attributes for i in items]
            )
            if personal
            else None
        )
        order, final = rerank(scores, vectors, user, query.personalization_weight, None, matches)
        with self._stage_lock:
            self.stage_cpu_s["search"] += searched - cpu
            self.stage_cpu_s["rerank"] += time.thread_time() - searched
        hits = [
            SearchHit(items[i], float(s), float(scores[i]), vectors[i])
            for i, s in zip(order[: query.k], final[: query.k], strict=False)
        ]
        return SearchResult(
            hits=hits,
            model_version=state.model.version,
            base_query=base,
            candidates=len(items),
            personalized=personal,
            took_ms=(time.perf_counter() - start) * 1000,
        )


def _weights(query: Query) -> tuple[float, float]:
    if query.text and query.image is not None:
        return query.text_weight, 1.0 - query.text_weight
    return (1.0, 0.0) if query.text else (0.0, 1.0)
