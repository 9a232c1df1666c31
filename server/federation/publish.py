"""Publish a global query adapter as a new version in the model registry.

A version folder holds ``adapter.safetensors`` and ``manifest.json`` (the sha256 of each
file, plus what the caller passes: round, metrics, privacy ledger, base model, ...);
``finalize`` runs on the staged folder before it is published (e.g.
``common.security.signing.signer``).
"""

from __future__ import annotations

from collections.abc import Callable
from pathlib import Path
from typing import Any

import numpy as np

from common.model.adapter import ADAPTER_FILE, QueryAdapter
from common.security.versions import write_version


def publish_adapter(
    registry: Path,
    weights: list[np.ndarray],
    manifest: dict[str, Any],
    *,
    finalize: Callable[[Path], None] | None = None,
) -> Path:
    """Write the adapter as the registry's next version; return its folder."""
    adapter = QueryAdapter.from_weights(weights)
    full = {"kind": "query-adapter", "dim": adapter.dim, "rank": adapter.rank, **manifest}
    return write_version(
        Path(registry), lambda folder: adapter.save(folder / ADAPTER_FILE), full, finalize=finalize
    )
