"""CPU threads of the serving process: the query text encoder's and FAISS's."""

from __future__ import annotations

import sys
from collections.abc import Callable

from common.config import SearchConfig


def apply_thread_settings(search: SearchConfig) -> None:
    """Set each library's thread count (``search.torch_threads``, ``faiss_threads``; 0 keeps
    the library's default). Under the numpy query runtime the encoder's threads are those
    of the BLAS libraries, set first (the limit reaches FAISS's OpenMP too, so FAISS's own
    count is set after it); under the onnx one, its session's, set when it is built; torch's
    only if torch is already loaded (the deferred base encoder sets them when it builds)."""
    threads = search.torch_threads
    if threads > 0 and search.query_runtime == "numpy":
        from threadpoolctl import threadpool_limits

        threadpool_limits(limits=threads, user_api="blas")
    faiss_thread_setup(search)()
    if threads > 0 and (search.query_runtime == "torch" or "torch" in sys.modules):
        import torch

        torch.set_num_threads(threads)


def faiss_thread_setup(search: SearchConfig) -> Callable[[], None]:
    """What a thread that runs FAISS searches calls first: OpenMP keeps a thread count per
    thread, so ``faiss_threads`` set in the main thread does not reach a thread started
    later (a batch of queries would be searched on every core, spinning)."""

    def setup() -> None:
        if search.faiss_threads > 0:
            import faiss

            faiss.omp_set_num_threads(search.faiss_threads)

    return setup
