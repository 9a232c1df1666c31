"""The adapter a round's devices evaluate, as it travels in the fit config.

The server puts the weights it wants evaluated (``server.federation.promotion``) under
``CANDIDATE_KEY`` as ``.npz`` bytes; a device reads them without unpickling anything.
"""

from __future__ import annotations

import io
from collections.abc import Mapping, Sequence
from typing import Any

import numpy as np

CANDIDATE_KEY = "candidate"
MAX_CANDIDATE_BYTES = 64 << 20


def encode_candidate(weights: Sequence[np.ndarray]) -> bytes:
    """The candidate's weights as fit-config bytes (``.npz``, no pickles)."""
    buffer = io.BytesIO()
    np.savez(buffer, *[np.asarray(w, dtype=np.float32) for w in weights])
    return buffer.getvalue()


def decode_candidate(config: Mapping[str, Any]) -> list[np.ndarray] | None:
    """The weights a fit config asks the device to evaluate (None: none sent)."""
    blob = config.get(CANDIDATE_KEY)
    if blob is None:
        return None
    if not isinstance(blob, bytes) or len(blob) > MAX_CANDIDATE_BYTES:
        raise ValueError(f"fit config {CANDIDATE_KEY!r}: expected at most 64 MiB of bytes")
    with np.load(io.BytesIO(blob), allow_pickle=False) as data:
        return [data[f"arr_{n}"] for n in range(len(data.files))]
