"""The search pipeline, independent of HTTP.

query (text | image | both) -> base query vector -> global adapter -> FAISS top-N
candidates (with filters) -> optional rerank with the request's user vector -> top-k.
Two stages, each a thread that takes whatever is waiting as one batch: the query encoder
(``server.search.query_encoder``) encodes, then the search stage adapts the batch's
vectors in one product, searches the catalog for all of them under one read
(``Catalog.search_many``) and reranks each. ``submit`` returns a future, so a caller on an
event loop awaits the result without holding a thread. The stage searches one batch at a
time, so a slow query (a filter wide enough for a FAISS selector scan) holds up the
others of its batch. A request reads the serving state
(adapter version + catalog) once, when submitted, so it is served wholly by one version;
a hot swap replaces that one reference and clears the query cache. The user vector is
used for this request's reranking only: never stored, never logged. ``stage_cpu_s`` adds
up the CPU time of the index search (with its re-scoring on full vectors) and of the
personal rerank.
"""

from __future__ import annotations

import queue
import threading
import time
from collections.abc import Callable
from concurrent.futures import Future
from dataclasses import dataclass

import numpy as np
from PIL import Image

from common.model.personalization import rerank
from common.model.query_facets import candidate_matches
from server.search.batches import next_batch
from server.search.catalog import Catalog, Filters, Hits, Item
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


@dataclass(frozen=True)
class _Pending:
    """A submitted query between the stages: its base vector comes in ``encoded``."""

    query: Query
    state: ServingState
    start: float
    encoded: Future
    result: Future


class SearchEngine:
    def __init__(
        self,
        query_encoder: QueryEncoder,
        catalog: Catalog,
        model: ModelState | None = None,
        *,
        candidates: int = 200,
        max_batch: int = 32,
        timeout_s: float = 60.0,
        thread_setup: Callable[[], None] = lambda: None,
    ) -> None:
        """``thread_setup`` runs first in the search stage's thread (e.g. FAISS's OpenMP
        thread count, which is each thread's own)."""
        self.query_encoder = query_encoder
        self.candidates = candidates
        self.max_batch = max_batch
        self.timeout_s = timeout_s
        self.thread_setup = thread_setup
        self._state = ServingState(model or ModelState(), catalog)
        self._swap_lock = threading.Lock()
        self.stage_cpu_s = {"search": 0.0, "rerank": 0.0}
        self._pending: queue.Queue[_Pending | None] = queue.Queue()
        self._stage = threading.Thread(target=self._run, name="search-stage", daemon=True)
        self._stage.start()

    @property
    def state(self) -> ServingState:
        return self._state

    def swap_model(self, model: ModelState) -> None:
        """Serve ``model`` from the next request on (one reference assignment)."""
        with self._swap_lock:
            self._state = ServingState(model, self._state.catalog)
            if self.query_encoder.cache is not None:
                self.query_encoder.cache.clear()

    def submit(self, query: Query) -> Future:
        """Start searching ``query``; the future gets its ``SearchResult`` (or the error).
        A photo query may build a deferred base encoder first, in the calling thread."""
        text_w, image_w = _weights(query)
        encoded = self.query_encoder.submit(
            query.text, query.image, text_weight=text_w, image_weight=image_w
        )
        pending = _Pending(query, self._state, time.perf_counter(), encoded, Future())
        encoded.add_done_callback(lambda _: self._pending.put(pending))
        return pending.result

    def search(self, query: Query) -> SearchResult:
        """``submit`` and wait (at most ``timeout_s``)."""
        result: SearchResult = self.submit(query).result(timeout=self.timeout_s)
        return result

    def close(self) -> None:
        """Stop both stages: the search stage, then the query encoder."""
        self._pending.put(None)
        self._stage.join(timeout=10)
        self.query_encoder.close()

    def _run(self) -> None:
        self.thread_setup()
        while (batch := next_batch(self._pending, self.max_batch)) is not None:
            ready = []
            # a request whose caller went away (its future cancelled) is dropped here; the
            # others can no longer be cancelled
            for p in (p for p in batch if p.result.set_running_or_notify_cancel()):
                if (error := p.encoded.exception()) is not None:
                    p.result.set_exception(error)
                else:
                    ready.append(p)
            for state in {id(p.state): p.state for p in ready}.values():
                self._finish(state, [p for p in ready if p.state is state])

    def _finish(self, state: ServingState, batch: list[_Pending]) -> None:
        """Search ``batch`` together; if that fails, each alone, so an error stays its own."""
        try:
            results = self._search_batch(state, batch)
        except Exception as exc:
            if len(batch) == 1:
                batch[0].result.set_exception(exc)
                return
            for p in batch:
                self._finish(state, [p])
            return
        for p, result in zip(batch, results, strict=True):
            p.result.set_result(result)

    def _search_batch(self, state: ServingState, batch: list[_Pending]) -> list[SearchResult]:
        bases = np.stack([p.encoded.result() for p in batch])
        adapted = state.model.adapt(bases)
        wanted = [
            max(p.query.k, self.candidates) if _personal(p.query) else p.query.k for p in batch
        ]
        cpu = time.thread_time()
        found = state.catalog.search_many(adapted, wanted, [p.query.filters for p in batch])
        searched = time.thread_time()
        results = [
            _ranked(p.query, hits, state.model.version, base, p.start)
            for p, hits, base in zip(batch, found, bases, strict=True)
        ]
        self.stage_cpu_s["search"] += searched - cpu  # written by this thread only
        self.stage_cpu_s["rerank"] += time.thread_time() - searched
        return results


def _personal(query: Query) -> bool:
    return query.user_vector is not None and query.personalization_weight > 0


def _ranked(
    query: Query, found: Hits, model_version: str, base: np.ndarray, start: float
) -> SearchResult:
    """The top-k of ``found``, reranked with the query's user vector when it has one."""
    items, scores, vectors = found
    personal = _personal(query)
    matches = (
        candidate_matches(query.text, [i.category for i in items], [i.attributes for i in items])
        if personal
        else None
    )
    user = query.user_vector if personal else None
    order, final = rerank(scores, vectors, user, query.personalization_weight, None, matches)
    hits = [
        SearchHit(items[i], float(s), float(scores[i]), vectors[i])
        for i, s in zip(order[: query.k], final[: query.k], strict=False)
    ]
    return SearchResult(
        hits=hits,
        model_version=model_version,
        base_query=base,
        candidates=len(items),
        personalized=personal,
        took_ms=(time.perf_counter() - start) * 1000,
    )


def _weights(query: Query) -> tuple[float, float]:
    if query.text and query.image is not None:
        return query.text_weight, 1.0 - query.text_weight
    return (1.0, 0.0) if query.text else (0.0, 1.0)
