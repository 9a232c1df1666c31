"""Secret files on disk: written owner-only (0600), refused when others can read them."""

from __future__ import annotations

import stat
from pathlib import Path

from common.files import atomic_write


class KeyFileError(PermissionError):
    """A secret file is missing, unreadable or readable by someone other than its owner."""


def write_owner_only(path: Path, data: bytes) -> None:
    """Write ``data`` to ``path`` atomically with mode 0600 (created so, never wider)."""
    atomic_write(path, data, mode=0o600)


def read_owner_only(path: Path) -> bytes:
    """Read a secret file, refusing it if group or others have any access to it."""
    path = Path(path)
    if not path.is_file():
        raise KeyFileError(f"{path}: key file not found")
    mode = stat.S_IMODE(path.stat().st_mode)
    if mode & 0o077:
        raise KeyFileError(
            f"{path}: permissions {mode:04o} are too open; a key file must be readable by "
            f"its owner only (run: chmod 600 {path})"
        )
    return path.read_bytes()
