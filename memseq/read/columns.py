"""The column: a read-only, file-backed array made of one or more mapped files.

A :class:`Column` is one field's rows across all shards of a dataset (or one raw
file, see :mod:`memseq.read.raw`), indexed like a numpy array. Reads copy only the rows
asked for: pages of the file come from the page cache (file-backed memory the
kernel can drop), so resident *anonymous* memory does not grow with the size of
the data.
"""

from __future__ import annotations

import bisect
import os
import threading
from typing import Any, Sequence

import numpy as np

from memseq.errors import BatchIndexError, SchemaError
from memseq.read.arrays import row_ranges
from memseq.read.mapping import MappedFile, prod
from memseq.read.source import ColumnBase, is_row_number
from memseq.readahead.pagein import read_ahead, resident

__all__ = ["Column"]


# Per-thread scratch buffer for gathers of unsorted rows, reused between calls. Gathers
# larger than this use a fresh temporary instead, so the scratch never pins much memory.
_SCRATCH_MAX_BYTES = 64 * 2**20
_scratch_local = threading.local()


def _scratch(shape: tuple[int, ...], dtype: np.dtype) -> np.ndarray:
    """An uninitialised array of ``shape`` and ``dtype``, from this thread's reusable buffer."""
    nbytes = int(np.prod(shape, dtype=np.int64)) * dtype.itemsize
    if nbytes > _SCRATCH_MAX_BYTES:
        return allocate(shape, dtype, "a gather of unsorted rows")
    buf = getattr(_scratch_local, "buf", None)
    if buf is None or buf.nbytes < nbytes:
        buf = _scratch_local.buf = np.empty(nbytes, np.uint8)
    return buf[:nbytes].view(dtype).reshape(shape)


# Reads smaller than this allocate without asking how much memory is available (reading
# /proc/meminfo costs about 20 us).
_ASK_MEMORY_BYTES = 256 * 2**20


def available_memory() -> int | None:
    """Bytes this process can still allocate without swapping: ``MemAvailable``, capped by a cgroup v2 limit.

    None when the kernel does not tell (not Linux).
    """
    available = None
    try:
        with open("/proc/meminfo", "rb") as f:
            for line in f:
                if line.startswith(b"MemAvailable:"):
                    available = int(line.split()[1]) * 1024
                    break
    except (OSError, ValueError, IndexError):
        return None
    try:  # a container's limit: the host's MemAvailable does not see it
        with open("/proc/self/cgroup", "rb") as f:
            group = next((line.split(b":", 2)[2].strip() for line in f if line.startswith(b"0::")), None)
        if group is not None:
            base = os.path.join(b"/sys/fs/cgroup", group.lstrip(b"/"))
            with open(os.path.join(base, b"memory.max"), "rb") as f:
                limit = f.read().strip()
            if limit != b"max":
                with open(os.path.join(base, b"memory.current"), "rb") as f:
                    used = int(f.read())
                room = max(int(limit) - used, 0)
                available = room if available is None else min(available, room)
    except (OSError, ValueError, IndexError):
        pass
    return available


def _size(nbytes: int) -> str:
    for unit, scale in (("TiB", 2**40), ("GiB", 2**30), ("MiB", 2**20), ("KiB", 2**10)):
        if nbytes >= scale:
            return f"{nbytes / scale:.1f} {unit}"
    return f"{nbytes} bytes"


def allocate(shape: tuple[int, ...], dtype: np.dtype, what: str) -> np.ndarray:
    """``np.empty(shape, dtype)`` for a read of ``what``, refused up front if memory cannot hold it.

    Raises:
        SchemaError: If the array is larger than the memory available (or numpy
            cannot allocate it), saying how large and how to read in pieces.
    """
    nbytes = prod(shape) * dtype.itemsize
    available = available_memory() if nbytes >= _ASK_MEMORY_BYTES else None
    if available is None or nbytes <= available:
        try:
            return np.empty(shape, dtype)
        except (MemoryError, ValueError) as e:
            error = e
    else:
        error = None
    have = "" if available is None else f" but {_size(available)} of memory is available"
    raise SchemaError(
        f"{what}: this read needs {_size(nbytes)} ({nbytes} bytes) for {shape} of {dtype}{have}. "
        "Read it in slices (column[i : i + n]) or batches (MemmapSequence) instead."
    ) from error


class Column(ColumnBase):
    """A read-only, file-backed column: one field's rows across all shards.

    A column behaves like a read-only numpy array for reading: it has ``len``,
    ``shape``, ``dtype`` and ``ndim``, and indexing with an int, a slice, an
    integer array or a boolean mask returns a numpy array (a copy: nothing handed
    out points into the file). ``np.asarray(column)`` reads the whole column; a read
    larger than the memory available is refused with :class:`~memseq.SchemaError`
    before anything is allocated. A file truncated before or during a read raises
    :class:`~memseq.CorruptFileError` (see :mod:`memseq.read.mapping`), never SIGBUS.

    Columns come from ``dataset[name]``, :func:`open_raw` and :func:`memseq.windows`.
    A new kind of column subclasses it and implements :meth:`parts` (rows in mapped
    files) or :meth:`gather_sorted` and :meth:`read_range` (computed rows): the
    column-source protocol of :mod:`memseq.read.source`.

    Args:
        name: The field name, used in messages.
        dtype: The dtype of the rows.
        row_shape: The shape of one row.
        part_rows: The number of rows of each part (``[n]`` for one file or none),
            in row order: :meth:`parts` returns one file per entry.

    Example:
        >>> images = memseq.open("data/train")["image"]
        >>> images.shape, images.dtype
        ((60000, 28, 28), dtype('uint8'))
        >>> batch = images[[5, 3, 9]]
    """

    def __init__(self, name: str, dtype: np.dtype, row_shape: tuple[int, ...], part_rows: Sequence[int]):
        super().__init__(name, dtype, row_shape, part_rows)
        self._starts_list = self._starts.tolist()  # bisect on a list: the per-batch readahead probe
        self._row_nbytes = int(np.prod(self.row_shape, dtype=np.int64)) * self.dtype.itemsize

    def parts(self) -> Sequence[MappedFile]:
        """The mapped files holding the rows, one per shard in row order (opened lazily after unpickling).

        A file-backed subclass implements this (see :mod:`memseq.read.source`); every
        read of :class:`Column` is built on it.

        Raises:
            NotImplementedError: In a subclass that computes its rows (:class:`~memseq.TokenWindows`).
            DatasetClosedError: If the column (or its dataset) was closed.
        """
        return super().parts()

    @property
    def size(self) -> int:
        """Number of elements."""
        return int(np.prod(self.shape, dtype=np.int64))

    @property
    def nbytes(self) -> int:
        """Bytes of data (on disk, excluding headers)."""
        return self.size * self.dtype.itemsize

    def __repr__(self) -> str:
        return f"<memseq.Column {self.name!r} shape={self.shape} dtype={self.dtype}>"

    def __array__(self, dtype=None, copy=None):
        out = self[:]
        return out if dtype is None else out.astype(dtype, copy=False)

    def __getitem__(self, key: Any) -> np.ndarray:
        if isinstance(key, tuple):
            if not key:
                return self[:]
            first, rest = key[0], key[1:]
            if first is Ellipsis:
                return self[:][key]
            rows = self[first]
            if isinstance(first, (int, np.integer)):
                return rows[rest] if rest else rows
            return rows[(slice(None), *rest)]
        if is_row_number(key):
            i = self._row_number(key)
            return self.read_range(i, i + 1)[0]
        if isinstance(key, slice):
            start, stop, step = key.indices(self._num_rows)
            if step == 1:
                return self.read_range(start, max(start, stop))
            return self.take(np.arange(start, stop, step, dtype=np.int64))
        if key is None or key is Ellipsis:
            return self[:][key]
        return self.take(key)

    def take(self, indices: Any, out: np.ndarray | None = None, *, trusted: bool = False) -> np.ndarray:
        """Gathers rows by integer index or boolean mask, in the order asked for.

        Rows are read from the file in ascending order (friendlier to the disk and
        its read-ahead) and placed in the order of ``indices``.

        Args:
            indices: 1-D integers (negative count from the end) or a boolean mask.
            out: Optional C-contiguous array of shape ``(len(indices), *row_shape)``
                and this column's dtype to fill.
            trusted: The caller promises that ``indices`` is a 1-D int64 array of
                ascending row numbers in ``[0, len(self))`` and that ``out`` (if
                given) fits: nothing is checked (the batch hot path of
                :class:`~memseq.MemmapSequence`). Indices that break the promise
                give wrong rows, not an error.

        Returns:
            A numpy array of shape ``(len(indices), *row_shape)``.

        Raises:
            BatchIndexError: If an index is out of range or not an integer.
            CorruptFileError: If a file was truncated since it was opened (or while
                it was read).
            DatasetReplacedError: If a file was truncated while it was read and its
                path now names another file.
            DatasetClosedError: If the dataset was closed.
            SchemaError: If ``out`` does not fit, or the result would not fit in the
                memory available.
        """
        if trusted:
            if out is None:
                out = np.empty((len(indices), *self.row_shape), self.dtype)
            self.gather_sorted(indices, out)
            return out
        idx, ascending = self._row_numbers(indices)
        if out is None:
            out = allocate((len(idx), *self.row_shape), self.dtype, self.name)
        elif out.shape != (len(idx), *self.row_shape) or out.dtype != self.dtype or not out.flags.c_contiguous:
            raise SchemaError(
                f"{self.name}: out must be a C-contiguous {self.dtype} array of shape "
                f"{(len(idx), *self.row_shape)}. Received: {out.dtype} {out.shape}"
            )
        order = None if ascending else np.argsort(idx, kind="stable")
        self.take_sorted(idx if order is None else idx[order], order, out)
        return out

    def take_sorted(self, sorted_idx: np.ndarray, order: np.ndarray | None, out: np.ndarray) -> None:
        """Fills ``out`` with rows ``sorted_idx[k]`` placed at ``out[order[k]]`` (at ``out[k]`` if order is None).

        The validated part of :meth:`take`, for callers that validated and sorted the
        indices once for several columns (:meth:`memseq.Dataset.take`): ``sorted_idx``
        must be ascending, in range and int64, ``order`` a permutation of
        ``range(len(sorted_idx))`` and ``out`` a fitting C-contiguous array. Nothing
        is checked.
        """
        if order is None:
            self.gather_sorted(sorted_idx, out)
            return
        # Read in ascending order into a scratch buffer, then permute into ``out``. The
        # scratch is reused: a second fresh batch-sized allocation per call makes glibc
        # return the memory to the kernel after every batch and fault it in again
        # (measured: 1,500 page faults and 10x slower per 3 MiB batch).
        tmp = _scratch(out.shape, out.dtype)
        self.gather_sorted(sorted_idx, tmp)
        out[order] = tmp

    def gather_sorted(self, idx: np.ndarray, out: np.ndarray) -> None:
        """Fills ``out[k]`` with row ``idx[k]``: the hot path, over :meth:`parts`.

        ``idx`` is a 1-D int64 array of ascending rows in range and ``out`` a fitting
        C-contiguous array; nothing is checked (see :mod:`memseq.read.source`). Each
        file is size-checked after its copy.
        """
        parts = self.parts()
        if len(parts) == 1:
            part = parts[0]
            # mode="clip" skips numpy's per-element bounds checks (indices are
            # already validated): twice as fast as the default mode="raise".
            part.data().take(idx, axis=0, out=out, mode="clip")
            part.check_size(self.name)  # after the copy: see memseq.read.mapping
            return
        bounds = np.searchsorted(idx, self._starts)
        # parts[p] only for the parts read: a remote dataset fetches a shard when first asked.
        for p in range(len(parts)):
            a, b = int(bounds[p]), int(bounds[p + 1])
            if a == b:
                continue
            part = parts[p]
            part.data().take(idx[a:b] - self._starts[p], axis=0, out=out[a:b], mode="clip")
            part.check_size(self.name)

    def read_range(self, start: int, stop: int) -> np.ndarray:
        """Copies rows ``[start, stop)`` (in bounds) into a new array, over :meth:`parts`.

        Raises:
            SchemaError: If the rows would not fit in the memory available.
            CorruptFileError: If a file was truncated since it was opened.
        """
        out = allocate((stop - start, *self.row_shape), self.dtype, self.name)
        parts = self.parts()
        for p in range(len(parts)):
            lo, hi = max(start, int(self._starts[p])), min(stop, int(self._starts[p + 1]))
            if lo >= hi:
                continue
            part = parts[p]
            base = int(self._starts[p])
            out[lo - start : hi - start] = part.data()[lo - base : hi - base]
            part.check_size(self.name)
        return out

    def read_windows(self, starts: Any, length: int, out: np.ndarray | None = None) -> np.ndarray:
        """Copies rows ``[starts[k], starts[k] + length)`` into ``out[k]``, for every k.

        The gather of :func:`memseq.windows`: one size check per file, then one copy
        per window. A window that crosses into the next shard is read piece by piece.

        Args:
            starts: 1-D first rows of the windows; every window must lie inside the column.
            length: Rows per window.
            out: Optional C-contiguous array of shape ``(len(starts), length, *row_shape)``.

        Returns:
            The array of windows.

        Raises:
            BatchIndexError: If a window does not lie inside the column.
        """
        starts = np.asarray(starts, np.int64).reshape(-1)
        if out is None:
            out = allocate((len(starts), length, *self.row_shape), self.dtype, self.name)
        if len(starts) and (int(starts.min()) < 0 or int(starts.max()) + length > self._num_rows):
            raise BatchIndexError(f"{self.name}: a window of {length} rows leaves the column's {self._num_rows} rows.")
        parts = self.parts()
        part_of = np.searchsorted(self._starts, starts, side="right") - 1
        for p in np.unique(part_of).tolist():
            array = parts[p].data()
            base, end = int(self._starts[p]), int(self._starts[p + 1])
            for k in np.flatnonzero(part_of == p).tolist():
                a = int(starts[k])
                if a + length <= end:
                    out[k] = array[a - base : a - base + length]
                else:
                    out[k] = self.read_range(a, a + length)
            parts[p].check_size(self.name)  # after the copies: see memseq.read.mapping
        return out

    def prefetch(self, ranges: Any, now: bool = False) -> int:
        """Starts reading rows into the page cache ahead of use: each ``[start, stop)`` of ``ranges``.

        Returns at once: background threads read the ranges in the order given (see
        :mod:`memseq.readahead.pagein`); nothing is copied and no result changes. Pages
        already in the page cache cost little (:meth:`is_cached` tells a caller
        whether asking is worth it).

        Args:
            ranges: An ``(n, 2)`` array of row ranges ``[start, stop)``, in bounds.
            now: For rows this thread reads next: ask the kernel from this thread,
                exactly, so its page faults wait for these reads rather than each
                reading a few MiB around itself.

        Returns:
            The bytes asked for (whole pages).

        Example:
            >>> ds["image"].prefetch([[0, 1024]])   # the first 1,024 rows, read in the background
        """
        ranges = row_ranges(ranges)
        row_nbytes = self._row_nbytes
        if len(ranges) == 0 or row_nbytes == 0:
            return 0
        parts = self.parts()
        # A hint: a range that crosses into the next shard is asked for up to its shard's end.
        part_of = np.searchsorted(self._starts, ranges[:, 0], side="right") - 1
        total = 0
        # Parts not mapped yet (a remote shard still downloading) are not waited for: a hint.
        is_mapped = getattr(parts, "is_mapped", None)
        for p in np.unique(part_of).tolist():
            if is_mapped is not None and not is_mapped(p):
                continue
            array = parts[p].data()
            lo, hi = int(self._starts[p]), int(self._starts[p + 1])
            mine = ranges[part_of == p]
            base = array.ctypes.data
            starts = base + (np.maximum(mine[:, 0], lo) - lo) * row_nbytes
            stops = base + (np.minimum(mine[:, 1], hi) - lo) * row_nbytes
            total += read_ahead(array, starts, stops, now)
        return total

    def is_cached(self, row: int) -> bool:
        """Whether the end of row ``row`` (in bounds) is in the page cache: one ``mincore`` call.

        The end, because a file's first row shares its first page with the ``.npy``
        header, which is always cached. A probe, not a promise: readahead skips a
        full-shuffle batch whose probe row is cached, taking the data to be in RAM.
        """
        if self._row_nbytes == 0:
            return True
        starts = self._starts_list
        p = bisect.bisect_right(starts, row) - 1
        parts = self.parts()
        is_mapped = getattr(parts, "is_mapped", None)
        if is_mapped is not None and not is_mapped(p):
            return False  # a remote shard not downloaded yet
        return resident(parts[p].address() + (row - starts[p] + 1) * self._row_nbytes - 1)
