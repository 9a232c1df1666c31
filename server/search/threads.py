"""CPU threads of the serving process: the query text encoder's and FAISS's."""

from __future__ import annotations

import sys

from common.config import SearchConfig


def apply_thread_settings(search: SearchConfig) -> None:
    """Set each library's thread count (``search.torch_threads``, ``faiss_threads``; 0 keeps
    the library's default). Under the numpy query runtime the encoder's threads are NumPy's
    BLAS threads, and torch's are set only if torch is already loaded (the deferred base
    encoder sets them when it builds)."""
    import faiss

    threads = search.torch_threads
    if search.faiss_threads > 0:
        faiss.omp_set_num_threads(search.faiss_threads)
    if threads <= 0:
        return
    if search.query_runtime == "numpy":
        from threadpoolctl import threadpool_limits

        threadpool_limits(limits=threads, user_api="blas")
        if "torch" not in sys.modules:
            return
    import torch

    torch.set_num_threads(threads)
