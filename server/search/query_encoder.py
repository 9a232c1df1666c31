"""Base query vectors for the search service, with concurrent requests encoded in batches.

One worker thread owns the encoders for queries: it takes every request waiting in its queue
(up to ``max_batch``) and encodes them in few large calls instead of many competing small
ones: the text-only queries' texts in one, then the photo queries' texts and photos apart
(a photo that fails fails its own requests only). Texts go to the query text tower (the
base encoder's, or a distilled student), photos to the base encoder, which a deferred one
builds in the photo request's own thread first. With a ``QueryVectorCache``, a text query
seen before is answered in the calling thread without waiting for the worker, and each
encoded text is remembered.
``encode_cpu_s`` adds up the worker's CPU time spent encoding.
"""

from __future__ import annotations

import queue
import threading
import time
from concurrent.futures import Future
from dataclasses import dataclass, field
from typing import TYPE_CHECKING

import numpy as np
from PIL import Image

from common.model.fusion import fuse
from common.model.precision import PrecisionChoice, TextTower
from server.search.base_encoder import DeferredEncoder
from server.search.batches import next_batch
from server.search.query_cache import CacheKey, QueryVectorCache, normalize_query

if TYPE_CHECKING:
    from server.search.base_encoder import BaseEncoder


@dataclass
class _Job:
    text: str | None
    image: Image.Image | None
    text_weight: float
    image_weight: float
    text_vector: np.ndarray | None = None
    future: Future = field(default_factory=Future)


class QueryEncoder:
    """Thread-safe ``submit(text, image)`` -> a future of the fused, normalized base query
    vector."""

    def __init__(
        self,
        text_tower: TextTower,
        image_encoder: BaseEncoder,
        *,
        max_batch: int = 32,
        cache: QueryVectorCache | None = None,
        precision: PrecisionChoice | None = None,
    ) -> None:
        self.text_tower = text_tower
        self.image_encoder = image_encoder
        self.max_batch = max_batch
        self.cache = cache
        self.encode_cpu_s = 0.0
        self.precision_choice = precision
        self._lower = _ignores_case(text_tower)
        self._queue: queue.Queue[_Job | None] = queue.Queue()
        self._thread = threading.Thread(target=self._run, name="query-encoder", daemon=True)
        self._thread.start()

    @property
    def dim(self) -> int:
        return self.image_encoder.dim

    def cache_key(self, text: str) -> CacheKey:
        tower = self.text_tower
        return (tower.version, normalize_query(text, lower=self._lower), tower.text_precision)

    def submit(
        self,
        text: str | None = None,
        image: Image.Image | None = None,
        *,
        text_weight: float = 0.5,
        image_weight: float = 0.5,
    ) -> Future:
        """A future of the query's vector: done at once for a cached text, else when the
        worker has encoded the batch it joins."""
        if not text and image is None:
            raise ValueError("a query needs text, an image, or both")
        cached = self.cache.get(self.cache_key(text)) if text and self.cache is not None else None
        if cached is not None and image is None:
            done: Future = Future()
            done.set_result(fuse(cached, None, text_weight=text_weight))
            return done
        if image is not None and isinstance(self.image_encoder, DeferredEncoder):
            self.image_encoder.load()  # built here, not in the worker all queries wait on
        job = _Job(text or None, image, text_weight, image_weight, cached)
        self._queue.put(job)
        return job.future

    def close(self) -> None:
        self._queue.put(None)
        self._thread.join(timeout=10)

    def _run(self) -> None:
        while (jobs := next_batch(self._queue, self.max_batch)) is not None:
            start = time.thread_time()
            # queries with a photo apart: a photo that fails fails its own requests only
            for group in (
                [j for j in jobs if j.image is None],
                [j for j in jobs if j.image is not None],
            ):
                if group:
                    self._finish(group)
            self.encode_cpu_s += time.thread_time() - start

    def _finish(self, jobs: list[_Job]) -> None:
        try:
            vectors = self._encode_batch(jobs)
        except Exception as exc:  # every request of the group gets the error, the worker lives
            for j in jobs:
                j.future.set_exception(exc)
            return
        for j, vector in zip(jobs, vectors, strict=True):
            j.future.set_result(vector)

    def _encode_batch(self, jobs: list[_Job]) -> list[np.ndarray]:
        dim = self.dim
        texts = np.zeros((len(jobs), dim), dtype=np.float32)
        images = np.zeros((len(jobs), dim), dtype=np.float32)
        to_encode = [i for i, j in enumerate(jobs) if j.text and j.text_vector is None]
        with_image = [i for i, j in enumerate(jobs) if j.image is not None]
        for i, j in enumerate(jobs):
            if j.text_vector is not None:
                texts[i] = j.text_vector
        if to_encode:
            texts[to_encode] = self.text_tower.encode_text([jobs[i].text or "" for i in to_encode])
            if self.cache is not None:
                for i in to_encode:
                    self.cache.put(self.cache_key(jobs[i].text or ""), texts[i])
        if with_image:
            images[with_image] = self.image_encoder.encode_image(
                [j.image for j in jobs if j.image is not None]
            )
        text_w = np.array([j.text_weight if j.text else 0.0 for j in jobs], dtype=np.float32)
        image_w = np.array(
            [j.image_weight if j.image is not None else 0.0 for j in jobs], dtype=np.float32
        )
        return list(fuse(texts, images, text_weight=text_w, image_weight=image_w))


def _ignores_case(tower: TextTower) -> bool:
    """Whether the tower's tokenizer reads "Ab Cd" and "ab cd" as the same tokens."""
    token_ids = getattr(tower, "token_ids", None) or getattr(tower, "tokenizer", None)
    if token_ids is None:
        return False
    upper, lower = token_ids(["Black Casual SHOES"]), token_ids(["black casual shoes"])
    return bool(np.array_equal(np.asarray(upper), np.asarray(lower)))
