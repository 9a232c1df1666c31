"""Writing a file so that a reader, or a crash, sees the old content or the new, never a mix.

``atomic_write`` writes a temporary file beside the target, flushes it to disk, renames it
over the target in one step and syncs the folder, so the rename itself survives a crash.
``mode`` applies from creation on (0o600 for secrets: never readable by others, even for
an instant).
"""

from __future__ import annotations

import os
import tempfile
from pathlib import Path


def atomic_write(
    path: str | Path, data: bytes | str, *, mode: int = 0o644, durable: bool = True
) -> None:
    """Replace ``path``'s content with ``data`` (str is written as UTF-8) atomically.

    ``durable`` False skips the two syncs to disk: readers still never see a mix, but a
    power cut may lose the write (for files that are rebuilt, not recovered).
    """
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    payload = data.encode("utf-8") if isinstance(data, str) else data
    fd, tmp = tempfile.mkstemp(prefix=f".{path.name}.", suffix=".tmp", dir=path.parent)
    try:
        os.fchmod(fd, mode)
        with os.fdopen(fd, "wb") as fh:
            fh.write(payload)
            fh.flush()
            if durable:
                os.fsync(fh.fileno())
        os.replace(tmp, path)
    except BaseException:
        Path(tmp).unlink(missing_ok=True)
        raise
    if durable:
        fsync_path(path.parent)


def fsync_path(path: str | Path) -> None:
    """Flush a file's or a folder's entry to disk (a folder: the renames made in it)."""
    fd = os.open(path, os.O_RDONLY)
    try:
        os.fsync(fd)
    finally:
        os.close(fd)
