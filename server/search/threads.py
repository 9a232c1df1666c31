"""CPU threads of the serving process: torch (query encoder) and FAISS (index search)."""

from __future__ import annotations


def apply_thread_settings(torch_threads: int, faiss_threads: int) -> None:
    """Set each library's thread count; 0 keeps the library's default."""
    import faiss
    import torch

    if torch_threads > 0:
        torch.set_num_threads(torch_threads)
    if faiss_threads > 0:
        faiss.omp_set_num_threads(faiss_threads)
