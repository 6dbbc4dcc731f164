"""``.npy`` files written and read by rows, never mapped into memory.

The feature cache can be many times larger than memory (100,000 images of
MobileNet 0.25 boundaries: 7.6 GB).  A memory map would be simplest, but every
page a process touches through a map counts in its resident memory until the
map goes, so training over a mapped cache grows the process to the cache's
size.  Reading rows with ``preadv`` into a batch-sized buffer leaves the pages
in the operating system's cache, where they help the next epoch and count
against no process.

The files are ordinary ``.npy`` files (``numpy.load`` reads them).  A writer
reserves the whole file's disk space before the first row, so a disk that
cannot hold the file fails at once with ENOSPC, not as SIGBUS or half a file.
"""

from __future__ import annotations

import os
from collections.abc import Sequence
from typing import Any, Optional

import numpy as np

__all__ = ["NpyWriter", "NpyRows"]


class NpyWriter:
    """Rows of one ``.npy`` file of known ``shape`` and ``dtype``, appended in order."""

    def __init__(self, path: str | os.PathLike[str], shape: Sequence[int], dtype: Any) -> None:
        self.path = os.fspath(path)
        self.shape = tuple(int(s) for s in shape)
        self.dtype = np.dtype(dtype)
        self.rows = 0
        self._file = open(self.path, "wb")
        try:
            header = {
                "descr": np.lib.format.dtype_to_descr(self.dtype),
                "fortran_order": False,
                "shape": self.shape,
            }
            np.lib.format.write_array_header_2_0(self._file, header)
            self._file.flush()
            start = self._file.tell()
            size = start + int(np.prod(self.shape, dtype=np.int64)) * self.dtype.itemsize
            if size > start:
                os.posix_fallocate(self._file.fileno(), 0, size)
        except BaseException:
            self._file.close()
            raise

    def append(self, rows: np.ndarray) -> None:
        """Write the next ``len(rows)`` rows (converted to the file's dtype)."""
        rows = np.ascontiguousarray(rows, dtype=self.dtype)
        if rows.shape[1:] != self.shape[1:] or self.rows + len(rows) > self.shape[0]:
            raise ValueError(
                f"{self.path}: rows of shape {rows.shape} do not continue {self.shape} at row {self.rows}"
            )
        self._file.write(rows.data.cast("B"))
        self.rows += len(rows)

    def close(self) -> None:
        """Finish the file; every row must have been written."""
        try:
            if self.rows != self.shape[0]:
                raise ValueError(f"{self.path}: {self.rows} of {self.shape[0]} rows written")
        finally:
            self._file.close()

    def abort(self) -> None:
        """Close the file whatever was written (the caller removes it)."""
        self._file.close()


class NpyRows:
    """A ``.npy`` file read by rows: ``rows(start, stop)``, ``take(indices)``; ``np.asarray`` reads it all."""

    def __init__(self, path: str | os.PathLike[str]) -> None:
        self.path = os.fspath(path)
        with open(self.path, "rb") as f:
            version = np.lib.format.read_magic(f)
            read = (
                np.lib.format.read_array_header_1_0
                if version == (1, 0)
                else np.lib.format.read_array_header_2_0
            )
            shape, fortran, dtype = read(f)
            self.offset = f.tell()
        if fortran:
            raise ValueError(f"{self.path}: Fortran-ordered arrays are not read by rows")
        self.shape: tuple[int, ...] = tuple(shape)
        self.dtype = np.dtype(dtype)
        self.row_bytes = int(np.prod(self.shape[1:], dtype=np.int64)) * self.dtype.itemsize
        self._fd: Optional[int] = None

    def __len__(self) -> int:
        return self.shape[0]

    @property
    def nbytes(self) -> int:
        return self.shape[0] * self.row_bytes

    def _read_into(self, out: np.ndarray, start: int) -> None:
        if self._fd is None:
            self._fd = os.open(self.path, os.O_RDONLY)
        view = out.data.cast("B")
        done = 0
        while done < len(view):
            got = os.preadv(self._fd, [view[done:]], self.offset + start * self.row_bytes + done)
            if got <= 0:
                raise OSError(f"{self.path} is shorter than its header says")
            done += got

    def rows(self, start: int = 0, stop: Optional[int] = None) -> np.ndarray:
        """Rows ``start:stop`` as a new array."""
        stop = self.shape[0] if stop is None else min(stop, self.shape[0])
        out = np.empty((max(stop - start, 0), *self.shape[1:]), self.dtype)
        if len(out):
            self._read_into(out, start)
        return out

    def __getitem__(self, key: Any) -> np.ndarray:
        """``rows[a:b]`` (consecutive rows, read in one call), ``rows[indices]`` or ``rows[i]``."""
        if isinstance(key, slice):
            start, stop, step = key.indices(self.shape[0])
            if step != 1:
                return self.take(np.arange(start, stop, step))
            return self.rows(start, stop)
        if isinstance(key, (int, np.integer)):
            i = int(key) + (self.shape[0] if key < 0 else 0)
            if not 0 <= i < self.shape[0]:
                raise IndexError(f"row {key} of {self.shape[0]}")
            return self.rows(i, i + 1)[0]
        return self.take(key)

    def take(self, indices: Sequence[int] | np.ndarray) -> np.ndarray:
        """Rows at ``indices`` (in that order); runs of consecutive rows are read in one call."""
        idx = np.asarray(indices, dtype=np.int64)
        out = np.empty((len(idx), *self.shape[1:]), self.dtype)
        if not len(idx):
            return out
        order = np.argsort(idx, kind="stable")
        sorted_idx = idx[order]
        breaks = np.flatnonzero(np.diff(sorted_idx) != 1) + 1
        buffer = np.empty_like(out)
        for run_start, run_end in zip(np.r_[0, breaks], np.r_[breaks, len(idx)]):
            self._read_into(buffer[run_start:run_end], int(sorted_idx[run_start]))
        out[order] = buffer
        return out

    def __array__(self, dtype: Any = None, copy: Any = None) -> np.ndarray:
        """Everything, in memory: for small entries and tests, never for a whole cache."""
        data = self.rows()
        return data if dtype is None else data.astype(dtype)

    def close(self) -> None:
        if self._fd is not None:
            os.close(self._fd)
            self._fd = None

    def __del__(self) -> None:
        try:
            self.close()
        except Exception:
            pass

    def __getstate__(self) -> dict[str, Any]:
        return {**self.__dict__, "_fd": None}
