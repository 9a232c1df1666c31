"""Cached encoder outputs: catalog and query vectors saved under ``<work_dir>/cache/``.

Encoding a catalog takes minutes on a CPU, so vectors are saved with ``np.save`` under a
key made of the encoder version, what was encoded (a purpose label and the inputs' texts)
and the data files' sha256 (plus size and mtime, so an edited file is re-hashed and a
changed file gets a new key). A cached file is used only if its shape matches.

An untrained vision tower is randomly initialized per build, so its cached item vectors are
one consistent draw, not what a fresh build would give; the text tower is deterministic.
"""

from __future__ import annotations

import hashlib
import io
import json
import logging
from collections.abc import Callable, Sequence
from functools import lru_cache
from pathlib import Path

import numpy as np

from common.files import atomic_write
from common.security.versions import sha256_file

log = logging.getLogger(__name__)


@lru_cache(maxsize=64)
def _file_sha(path: str, size: int, mtime_ns: int) -> str:
    return sha256_file(Path(path))


def file_fingerprint(path: Path) -> str:
    """sha256 of a file's bytes (memoized per path, size and mtime)."""
    stat = path.stat()
    return _file_sha(str(path.resolve()), stat.st_size, stat.st_mtime_ns)


def cache_key(
    encoder_version: str, purpose: str, texts: Sequence[str], files: Sequence[Path] = ()
) -> str:
    """A hex key for vectors of ``texts`` encoded by ``encoder_version`` for ``purpose``."""
    digest = hashlib.sha256()
    header = {"encoder": encoder_version, "purpose": purpose, "n": len(texts)}
    digest.update(json.dumps(header, sort_keys=True).encode())
    for path in files:
        digest.update(file_fingerprint(Path(path)).encode())
    for text in texts:
        digest.update(text.encode("utf-8", "surrogatepass") + b"\x00")
    return digest.hexdigest()[:32]


def cached_vectors(
    cache_dir: Path,
    key: str,
    compute: Callable[[], np.ndarray],
    *,
    rows: int,
    label: str,
) -> np.ndarray:
    """Load ``<cache_dir>/<label>-<key>.npy`` if it holds ``rows`` rows, else compute and save.

    The file is written to a temporary name and renamed, so a crash never leaves half a file.
    """
    path = Path(cache_dir) / f"{label}-{key}.npy"
    if path.is_file():
        try:
            vectors = np.load(path)
            if vectors.ndim == 2 and len(vectors) == rows and vectors.dtype == np.float32:
                log.debug("loaded %s vectors from %s", label, path)
                return vectors
        except (OSError, ValueError) as exc:
            log.warning("ignoring unreadable cache file %s: %s", path, exc)
    vectors = np.ascontiguousarray(compute(), dtype=np.float32)
    if vectors.ndim != 2 or len(vectors) != rows:
        raise ValueError(f"{label}: expected {rows} vectors, got shape {vectors.shape}")
    buffer = io.BytesIO()
    np.save(buffer, vectors)
    atomic_write(path, buffer.getvalue())
    return vectors
