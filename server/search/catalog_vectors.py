"""The catalog's item vectors: a memory-mapped file beside the database, and an overlay.

``<store>/vectors-<store id>.f32`` holds the float32 vectors of the items that were live
when it was written, in key order::

    header   64 bytes: b"FSVECS01", row count n and dim (little-endian int64), zeros
    keys     int64[n]
    vectors  float32[n, dim]

The database stays the source of truth and the file is derived from it. A key's vector
never changes (every upsert gets fresh keys), so a file row is right for as long as its key
is live; items upserted after the file was written (keys above its last) live in an
in-memory overlay until the next compaction. A file is written beside its final name,
fsynced and renamed into place: a crash leaves the old file or the new one, and a store
without a readable file for its id gets a new one when it is opened.

Queries read the rows they need with one ``pread`` each, called through ctypes so that the
GIL stays held (a read from the page cache takes about 2 µs; releasing and taking
back the GIL around each of a query's hundreds of reads cost more than the reads under
load). The vectors stay in the page cache, out of the process's resident memory: read
through the mapping instead, each row maps the page-cache folio around it (~100 KB a row
on the machine measured, whole megabytes for a file written in one go), so a million items'
shortlists mapped most of the 1.5 GB file, and unmapping after each query still left
gigabyte peaks under concurrent queries. Gathers of more than ``PREAD_MAX_ROWS`` rows (an
exact search over a wide filter) read through the mapping. Whole-file passes (opening,
compaction) use plain reads.
"""

from __future__ import annotations

import ctypes
import mmap
import os
import struct
import weakref
from collections.abc import Callable, Iterable
from pathlib import Path

import numpy as np

from common.files import fsync_path
from server.search.catalog_rows import grown, room_for

VECTOR_FILE_MAGIC = b"FSVECS01"
HEADER_BYTES = 64
PREAD_MAX_ROWS = 4096  # rows a gather reads with pread; beyond, through the mapping


def _libc_pread() -> Callable[[int, int, int, int], int] | None:
    """libc's ``pread(fd, buf, count, offset)`` called with the GIL held, if there is one."""
    try:
        libc = ctypes.PyDLL(None, use_errno=True)
        pread = getattr(libc, "pread64", None) or libc.pread  # pread64: a 64-bit offset
    except (OSError, AttributeError):
        return None
    pread.argtypes = (ctypes.c_int, ctypes.c_void_p, ctypes.c_size_t, ctypes.c_int64)
    pread.restype = ctypes.c_ssize_t
    return pread


_PREAD = _libc_pread()


def vector_file(folder: Path, store_id: str) -> Path:
    return folder / f"vectors-{store_id}.f32"


def remove_other_vector_files(folder: Path, keep: Path | None) -> None:
    """Delete vector files of earlier stores and temporary files left by a crash."""
    for path in [*folder.glob("vectors-*.f32"), *folder.glob(".vectors-*.tmp")]:
        if path != keep:
            path.unlink(missing_ok=True)


class VectorFileWriter:
    """Writes a vector file of ``n`` rows chunk by chunk; ``commit`` renames it into place."""

    def __init__(self, path: Path, n: int, dim: int) -> None:
        self.path, self.n, self.dim, self.done = path, n, dim, 0
        self._tmp = path.with_name(f".{path.name}.tmp")
        self._fh = self._tmp.open("wb")
        self._fh.write(
            VECTOR_FILE_MAGIC
            + struct.pack("<qq", n, dim).ljust(HEADER_BYTES - len(VECTOR_FILE_MAGIC), b"\0")
        )
        self._fh.truncate(HEADER_BYTES + n * (8 + 4 * dim))

    def append(self, keys: np.ndarray, vectors: np.ndarray) -> None:
        if self.done + len(keys) > self.n or vectors.shape != (len(keys), self.dim):
            raise ValueError(f"{self.path}: rows beyond the {self.n} x {self.dim} declared")
        fd = self._fh.fileno()
        os.pwrite(fd, np.asarray(keys, dtype="<i8").tobytes(), HEADER_BYTES + 8 * self.done)
        offset = HEADER_BYTES + 8 * self.n + 4 * self.dim * self.done
        os.pwrite(fd, np.asarray(vectors, dtype="<f4").tobytes(), offset)
        self.done += len(keys)

    def commit(self) -> Path:
        if self.done != self.n:
            raise ValueError(f"{self.path}: {self.done} rows written of {self.n}")
        self._fh.flush()
        os.fsync(self._fh.fileno())
        self._fh.close()
        os.replace(self._tmp, self.path)
        fsync_path(self.path.parent)
        return self.path

    def abort(self) -> None:
        self._fh.close()
        self._tmp.unlink(missing_ok=True)


def write_vector_file(
    path: Path, n: int, dim: int, chunks: Iterable[tuple[np.ndarray, np.ndarray]]
) -> Path:
    """Write the ``n`` rows of ``chunks`` ((keys, vectors), ascending keys) as the vector
    file ``path``, renamed into place only once complete."""
    writer = VectorFileWriter(path, n, dim)
    try:
        for keys, vectors in chunks:
            writer.append(keys, vectors)
        return writer.commit()
    except BaseException:
        writer.abort()
        raise


class CatalogVectors:
    """A mapped vector file plus the in-memory overlay of vectors added since it was written.

    A reference (``refs``) is a file row (>= 0) or an overlay row ``i`` (as ``-1 - i``).
    """

    def __init__(self, path: Path) -> None:
        self._fd = os.open(path, os.O_RDONLY)  # one open file for the mapping and the reads
        weakref.finalize(self, os.close, self._fd)
        self._map = mmap.mmap(self._fd, 0, access=mmap.ACCESS_READ)
        if (
            self._map[: len(VECTOR_FILE_MAGIC)] != VECTOR_FILE_MAGIC
            or len(self._map) < HEADER_BYTES
        ):
            raise ValueError(f"{path}: not a vector file")
        n, dim = struct.unpack_from("<qq", self._map, len(VECTOR_FILE_MAGIC))
        if n < 0 or dim <= 0 or len(self._map) != HEADER_BYTES + n * (8 + 4 * dim):
            raise ValueError(f"{path}: truncated or damaged vector file")
        self._map.madvise(mmap.MADV_RANDOM)
        self._rows_at = HEADER_BYTES + 8 * n
        self.path, self.dim = path, int(dim)
        self.keys = np.frombuffer(self._map, dtype="<i8", count=n, offset=HEADER_BYTES)
        self.file = np.frombuffer(
            self._map, dtype="<f4", count=n * dim, offset=HEADER_BYTES + 8 * n
        ).reshape(n, dim)
        self.overlay = np.zeros((0, dim), dtype=np.float32)
        self.overlay_rows = 0

    @property
    def last_key(self) -> int:
        return int(self.keys[-1]) if len(self.keys) else -1

    def add(self, vectors: np.ndarray) -> np.ndarray:
        """Vectors into the overlay; their references."""
        m, start = len(vectors), self.overlay_rows
        if start + m > len(self.overlay):
            self.overlay = grown(self.overlay, start, room_for(start + m))
        self.overlay[start : start + m] = vectors
        self.overlay_rows += m
        return -1 - np.arange(start, start + m, dtype=np.int64)

    def gather(self, refs: np.ndarray) -> np.ndarray:
        """The vectors of ``refs`` (a copy): file rows by ``pread``, or through the mapping
        for more than ``PREAD_MAX_ROWS`` of them."""
        refs = np.asarray(refs, dtype=np.int64)
        in_file = refs >= 0
        rows = refs[in_file]
        from_file = self._pread(rows) if len(rows) <= PREAD_MAX_ROWS else self.file.take(rows, 0)
        if len(rows) == len(refs):
            return from_file
        out = np.empty((len(refs), self.dim), dtype=np.float32)
        out[in_file] = from_file
        out[~in_file] = self.overlay[-1 - refs[~in_file]]
        return out

    def _pread(self, rows: np.ndarray) -> np.ndarray:
        out = np.empty((len(rows), self.dim), dtype="<f4")
        row_bytes = 4 * self.dim
        offsets = enumerate((self._rows_at + rows * row_bytes).tolist())
        if _PREAD is None:  # no libc: os.preadv, which releases the GIL around each read
            view = memoryview(out.data).cast("B") if len(rows) else memoryview(b"")
            done = [
                os.preadv(self._fd, [view[i * row_bytes : (i + 1) * row_bytes]], offset)
                for i, offset in offsets
            ]
        else:
            base = out.ctypes.data
            done = [_PREAD(self._fd, base + i * row_bytes, row_bytes, at) for i, at in offsets]
        if any(n != row_bytes for n in done):
            error = ctypes.get_errno() if -1 in done else 0
            raise OSError(error, f"{self.path}: a vector row could not be read whole")
        return out

    def read(self, refs: np.ndarray) -> np.ndarray:
        """As ``gather`` for ascending file rows, by plain reads (nothing is mapped in)."""
        refs = np.asarray(refs, dtype=np.int64)
        in_file = refs >= 0
        out = np.empty((len(refs), self.dim), dtype=np.float32)
        rows = refs[in_file]
        if len(rows):
            first, count = int(rows[0]), int(rows[-1] - rows[0]) + 1
            offset = HEADER_BYTES + 8 * len(self.keys) + 4 * self.dim * first
            span = np.fromfile(self.path, dtype="<f4", count=count * self.dim, offset=offset)
            out[in_file] = span.reshape(count, self.dim)[rows - first]
        out[~in_file] = self.overlay[-1 - refs[~in_file]]
        return out
