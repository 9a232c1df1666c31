"""Base query vectors for the search service, with concurrent requests encoded in batches.

One worker thread owns the encoder for queries: it takes every request waiting in its queue
(up to ``max_batch``) and encodes their texts in one call and their images in another, so
under load the encoder runs few large batches instead of many competing small ones.
"""

from __future__ import annotations

import queue
import threading
from concurrent.futures import Future
from dataclasses import dataclass, field

import numpy as np
from PIL import Image

from common.model.encoder import Encoder
from common.model.fusion import fuse


@dataclass
class _Job:
    text: str | None
    image: Image.Image | None
    text_weight: float
    image_weight: float
    future: Future = field(default_factory=Future)


class QueryEncoder:
    """Thread-safe ``encode(text, image)`` -> fused, normalized base query vector."""

    def __init__(self, encoder: Encoder, *, max_batch: int = 32) -> None:
        self.encoder = encoder
        self.max_batch = max_batch
        self._queue: queue.Queue[_Job | None] = queue.Queue()
        self._thread = threading.Thread(target=self._run, name="query-encoder", daemon=True)
        self._thread.start()

    @property
    def dim(self) -> int:
        return self.encoder.dim

    def encode(
        self,
        text: str | None = None,
        image: Image.Image | None = None,
        *,
        text_weight: float = 0.5,
        image_weight: float = 0.5,
        timeout: float | None = 60.0,
    ) -> np.ndarray:
        if not text and image is None:
            raise ValueError("a query needs text, an image, or both")
        job = _Job(text or None, image, text_weight, image_weight)
        self._queue.put(job)
        return job.future.result(timeout=timeout)

    def close(self) -> None:
        self._queue.put(None)
        self._thread.join(timeout=10)

    def _run(self) -> None:
        while True:
            job = self._queue.get()
            if job is None:
                return
            jobs = [job]
            while len(jobs) < self.max_batch:
                try:
                    nxt = self._queue.get_nowait()
                except queue.Empty:
                    break
                if nxt is None:
                    self._queue.put(None)
                    break
                jobs.append(nxt)
            try:
                vectors = self._encode_batch(jobs)
            except Exception as exc:  # every waiting request gets the error, the worker lives
                for j in jobs:
                    j.future.set_exception(exc)
                continue
            for j, vector in zip(jobs, vectors, strict=True):
                j.future.set_result(vector)

    def _encode_batch(self, jobs: list[_Job]) -> list[np.ndarray]:
        dim = self.encoder.dim
        texts = np.zeros((len(jobs), dim), dtype=np.float32)
        images = np.zeros((len(jobs), dim), dtype=np.float32)
        with_text = [i for i, j in enumerate(jobs) if j.text]
        with_image = [i for i, j in enumerate(jobs) if j.image is not None]
        if with_text:
            texts[with_text] = self.encoder.encode_text([jobs[i].text for i in with_text])
        if with_image:
            images[with_image] = self.encoder.encode_image([jobs[i].image for i in with_image])
        text_w = np.array([j.text_weight if j.text else 0.0 for j in jobs], dtype=np.float32)
        image_w = np.array(
            [j.image_weight if j.image is not None else 0.0 for j in jobs], dtype=np.float32
        )
        return list(fuse(texts, images, text_weight=text_w, image_weight=image_w))
