"""Reading memseq datasets and headerless raw files, by memory map.

``memseq.open(path)`` returns a :class:`Dataset`: a read-only table whose columns
(:class:`Column`) are memory-mapped ``.npy`` files, presented as one array across
shards. ``memseq.open_raw(path, dtype, shape)`` wraps the headerless files that
``np.memmap(..., mode="w+")`` writes in the same :class:`Column` type.

Three promises shape this module:

- Reads copy only the rows asked for. Pages of the file come from the page cache
  (file-backed memory the kernel can drop), so resident *anonymous* memory does not
  grow with the size of the data.
- A file that shrinks after it was opened raises :class:`CorruptFileError` on the
  next read instead of killing the process with SIGBUS: every read first checks
  the file's size with one ``stat`` of its path per file touched (about 2 us; an
  ``fstat`` would take 1.4 us but needs a descriptor kept open per file). The
  ``stat`` result counts only if it is still *the mapped file* (same device and
  inode: an inode number cannot be reused while our mapping keeps the inode
  alive); a path that now names another file (the dataset was overwritten) or
  nothing cannot be used to truncate the mapped file, so the old data stay readable.
  A file truncated *during* a read can still fault; nothing short of ``pread`` (a
  copy through the kernel, far slower for random rows) closes that window.
- No file descriptor stays open: each data file is opened (regular files only,
  never blocking), its header read and checked, mapped, and closed again, so a
  dataset of thousands of shards opens under ``ulimit -n 1024``. ``Dataset.close()``
  or a ``with`` block unmaps the files at once, and a Dataset takes part in no
  reference cycle, so dropping the last reference unmaps them too.
- Pickling stores paths (and a fingerprint of the manifest), never array data, and
  the unpickled object reopens the files on first use. Worker processes started
  by spawn or forkserver therefore start fast and share the page cache.
"""

from __future__ import annotations

import ctypes
import errno
import io
import mmap
import os
import sys
import threading
import zlib
from collections.abc import ItemsView, KeysView, Mapping, ValuesView
from typing import Any, Iterator, Sequence

import numpy as np

from memseq import _fs
from memseq import format as fmt
from memseq._checks import bounded_repr, check_int, is_sorted, row_indices
from memseq.errors import (
    BatchIndexError,
    CorruptFileError,
    DatasetClosedError,
    DatasetNotFoundError,
    DatasetReplacedError,
    FormatError,
    MemseqError,
    SchemaError,
)

__all__ = ["Column", "Dataset", "open", "open_raw"]

# How often to start opening a dataset again that was replaced while it was being opened.
_OPEN_ATTEMPTS = 3


class _MappedFile:
    """One data file, memory-mapped read-only, with its expected size; holds no descriptor.

    The mapping is private to this object; ``array`` is a read-only ndarray over it.
    """

    __slots__ = ("path", "offset", "expected_size", "array", "_mmap", "_identity")

    def __init__(self, path: str, fd: int, st: os.stat_result, dtype: np.dtype, shape: tuple[int, ...], offset: int):
        """Maps the open regular file ``fd`` (``st`` its fstat); the caller closes ``fd``."""
        self.path = path
        self.offset = offset
        nbytes = _prod(shape) * dtype.itemsize
        self.expected_size = offset + nbytes
        self._identity = (st.st_dev, st.st_ino)
        self._mmap = None
        self.array = None
        self._check(st.st_size)
        if nbytes == 0:
            # mmap cannot map zero bytes; an empty array needs no file pages.
            array = np.empty(shape, dtype)
        else:
            try:
                self._mmap = _map_read_only(fd, self.expected_size)
            except (OSError, ValueError, OverflowError) as e:
                raise _fs.os_error(e if isinstance(e, OSError) else OSError(errno.EINVAL, str(e)), path, "data file") from e
            array = np.frombuffer(self._mmap, dtype=dtype, count=nbytes // dtype.itemsize, offset=offset).reshape(shape)
        array.flags.writeable = False
        self.array = array

    @classmethod
    def open(cls, path: str, dtype: np.dtype, shape: tuple[int, ...], offset: int, what: str = "data file") -> "_MappedFile":
        """Opens, maps and closes ``path`` again."""
        fd, st = _fs.open_regular(path, what)
        try:
            return cls(path, fd, st, dtype, shape, offset)
        finally:
            os.close(fd)

    def _check(self, size: int) -> None:
        if size < self.expected_size:
            raise CorruptFileError(
                f"{self.path}: the file is {size} bytes but {self.expected_size} bytes are expected "
                "(truncated after it was opened?). Reopen the dataset after restoring the file."
            )

    def check_size(self) -> None:
        """Raises CorruptFileError if the mapped file is now shorter than when it was opened.

        Stats the path, and trusts the answer only if the path still names the mapped
        file (same device and inode). Otherwise the file was replaced or removed:
        the mapping keeps the old inode alive, and no path leads to it any more.
        """
        try:
            st = os.stat(self.path)
        except OSError:
            return
        if (st.st_dev, st.st_ino) == self._identity:
            self._check(st.st_size)

    def is_current(self) -> bool:
        """Whether the path still names the mapped file."""
        try:
            st = os.stat(self.path)
        except OSError:
            return False
        return (st.st_dev, st.st_ino) == self._identity

    def data(self) -> np.ndarray:
        """The mapped array; DatasetClosedError once :meth:`close` was called."""
        array = self.array
        if array is None:
            raise DatasetClosedError(f"{self.path}: the dataset was closed; open it again to read.")
        return array

    def close(self) -> None:
        """Drops the mapping. Arrays handed out are copies, so user data stay valid.

        The mapping goes as soon as nothing references it: at once, unless a read in
        another thread still holds the array (then when that read ends). It is never
        unmapped under a running read.
        """
        self.array = None
        mm, self._mmap = self._mmap, None
        if isinstance(mm, mmap.mmap):
            try:
                mm.close()
            except BufferError:
                pass  # a read in another thread still holds the array: unmapped when it ends


# Python's mmap.mmap keeps a duplicate of the descriptor for the mapping's lifetime (until
# Python 3.13's trackfd=False): one descriptor per data file, so a dataset of 2,000 shards
# could not open under ``ulimit -n 1024``. A mapping needs no descriptor: map with libc.
_libc_mmap = _libc_munmap = None
if sys.version_info < (3, 13) and sys.platform.startswith("linux"):
    try:
        _libc = ctypes.CDLL(None, use_errno=True)
        _libc_mmap, _libc_munmap = _libc.mmap, _libc.munmap
        _libc_mmap.restype = ctypes.c_void_p
        _libc_mmap.argtypes = [ctypes.c_void_p, ctypes.c_size_t, ctypes.c_int, ctypes.c_int, ctypes.c_int, ctypes.c_int64]
        _libc_munmap.restype = ctypes.c_int
        _libc_munmap.argtypes = [ctypes.c_void_p, ctypes.c_size_t]
    except (OSError, AttributeError):
        _libc_mmap = _libc_munmap = None
_MAP_FAILED = ctypes.c_void_p(-1).value


class _Unmapper:
    """Unmaps a libc mapping when freed: owned by the ctypes buffer that every view keeps alive."""

    __slots__ = ("address", "length")

    def __init__(self, address: int, length: int):
        self.address, self.length = address, length

    def __del__(self):
        if _libc_munmap is not None:
            _libc_munmap(self.address, self.length)


def _map_read_only(fd: int, length: int) -> Any:
    """A read-only shared mapping of ``length`` bytes of ``fd`` that holds no descriptor.

    Returns an object with the buffer protocol; the mapping lives as long as it (and
    any array made from it) does.
    """
    if sys.version_info >= (3, 13):
        return mmap.mmap(fd, length, access=mmap.ACCESS_READ, trackfd=False)
    if _libc_mmap is None:
        return mmap.mmap(fd, length, access=mmap.ACCESS_READ)  # keeps a descriptor: no better way here
    address = _libc_mmap(None, length, mmap.PROT_READ, mmap.MAP_SHARED, fd, 0)
    if address is None or address == _MAP_FAILED:
        code = ctypes.get_errno()
        raise OSError(code, os.strerror(code))
    buffer = (ctypes.c_char * length).from_address(address)
    buffer._unmapper = _Unmapper(address, length)  # freed with the buffer, after the last view
    return buffer


def _prod(shape: Sequence[int]) -> int:
    """The product of ``shape`` as a Python int (numpy's int64 product would wrap)."""
    n = 1
    for d in shape:
        n *= int(d)
    return n


# Per-thread scratch buffer for gathers of unsorted rows, reused between calls. Gathers
# larger than this use a fresh temporary instead, so the scratch never pins much memory.
_SCRATCH_MAX_BYTES = 64 * 2**20
_scratch_local = threading.local()


def _scratch(shape: tuple[int, ...], dtype: np.dtype) -> np.ndarray:
    """An uninitialised array of ``shape`` and ``dtype``, from this thread's reusable buffer."""
    nbytes = int(np.prod(shape, dtype=np.int64)) * dtype.itemsize
    if nbytes > _SCRATCH_MAX_BYTES:
        return np.empty(shape, dtype)
    buf = getattr(_scratch_local, "buf", None)
    if buf is None or buf.nbytes < nbytes:
        buf = _scratch_local.buf = np.empty(nbytes, np.uint8)
    return buf[:nbytes].view(dtype).reshape(shape)


# Kept for memseq.sequence, which imports it from here; _checks.is_sorted is the one home.
_is_sorted = is_sorted


class Column:
    """A read-only, file-backed column: one field's rows across all shards.

    A column behaves like a read-only numpy array for reading: it has ``len``,
    ``shape``, ``dtype`` and ``ndim``, and indexing with an int, a slice, an
    integer array or a boolean mask returns a numpy array (a copy: nothing handed
    out points into the file). ``np.asarray(column)`` reads the whole column.

    Columns come from ``dataset[name]`` and from :func:`open_raw`; do not build
    them directly.

    Example:
        >>> images = memseq.open("data/train")["image"]
        >>> images.shape, images.dtype
        ((60000, 28, 28), dtype('uint8'))
        >>> batch = images[[5, 3, 9]]
    """

    def __init__(self, name: str, dtype: np.dtype, row_shape: tuple[int, ...], part_rows: Sequence[int]):
        self.name = name
        self.dtype = np.dtype(dtype)
        self.row_shape = tuple(row_shape)
        self._part_rows = tuple(int(n) for n in part_rows)
        # starts[i] is the first global row of part i; starts[-1] is the row count.
        self._starts = np.concatenate([[0], np.cumsum(self._part_rows, dtype=np.int64)]).astype(np.int64)
        self._num_rows = int(self._starts[-1])

    # -- subclasses provide the mapped files (opened lazily after unpickling)
    def _parts(self) -> Sequence[_MappedFile]:
        raise NotImplementedError

    @property
    def shape(self) -> tuple[int, ...]:
        """``(rows, *row_shape)``."""
        return (self._num_rows, *self.row_shape)

    @property
    def ndim(self) -> int:
        """Number of dimensions, rows included."""
        return 1 + len(self.row_shape)

    @property
    def size(self) -> int:
        """Number of elements."""
        return int(np.prod(self.shape, dtype=np.int64))

    @property
    def nbytes(self) -> int:
        """Bytes of data (on disk, excluding headers)."""
        return self.size * self.dtype.itemsize

    def __len__(self) -> int:
        return self._num_rows

    def __repr__(self) -> str:
        return f"<memseq.Column {self.name!r} shape={self.shape} dtype={self.dtype}>"

    def __array__(self, dtype=None, copy=None):
        out = self[:]
        return out if dtype is None else out.astype(dtype, copy=False)

    def __iter__(self) -> Iterator[np.ndarray]:
        for i in range(self._num_rows):
            yield self[i]

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
        if isinstance(key, (int, np.integer)) and not isinstance(key, (bool, np.bool_)):
            i = int(key)
            if not -self._num_rows <= i < self._num_rows:
                raise BatchIndexError(f"{self.name}: row index {i} is out of range for {self._num_rows} rows.")
            i %= max(self._num_rows, 1)
            row = self._read_range(i, i + 1)[0]
            return row
        if isinstance(key, slice):
            start, stop, step = key.indices(self._num_rows)
            if step == 1:
                return self._read_range(start, max(start, stop))
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
            CorruptFileError: If a file was truncated since it was opened.
            DatasetClosedError: If the dataset was closed.
        """
        if trusted:
            if out is None:
                out = np.empty((len(indices), *self.row_shape), self.dtype)
            self._gather_sorted(indices, out)
            return out
        idx, ascending = row_indices(indices, self._num_rows, what=self.name)
        if out is None:
            out = np.empty((len(idx), *self.row_shape), self.dtype)
        elif out.shape != (len(idx), *self.row_shape) or out.dtype != self.dtype or not out.flags.c_contiguous:
            raise SchemaError(
                f"{self.name}: out must be a C-contiguous {self.dtype} array of shape "
                f"{(len(idx), *self.row_shape)}. Received: {out.dtype} {out.shape}"
            )
        order = None if ascending else np.argsort(idx, kind="stable")
        self._take_valid(idx if order is None else idx[order], order, out)
        return out

    def _take_valid(self, sorted_idx: np.ndarray, order: np.ndarray | None, out: np.ndarray) -> None:
        """Fills ``out`` with rows ``sorted_idx[k]`` placed at ``order[k]`` (or at k if order is None)."""
        if order is None:
            self._gather_sorted(sorted_idx, out)
            return
        # Read in ascending order into a scratch buffer, then permute into ``out``. The
        # scratch is reused: a second fresh batch-sized allocation per call makes glibc
        # return the memory to the kernel after every batch and fault it in again
        # (measured: 1,500 page faults and 10x slower per 3 MiB batch).
        tmp = _scratch(out.shape, out.dtype)
        self._gather_sorted(sorted_idx, tmp)
        out[order] = tmp

    def _gather_sorted(self, idx: np.ndarray, out: np.ndarray) -> None:
        """Fills ``out`` with rows ``idx`` (ascending, in range): the hot path."""
        parts = self._parts()
        if len(parts) == 1:
            part = parts[0]
            array = part.data()
            part.check_size()
            # mode="clip" skips numpy's per-element bounds checks (indices are
            # already validated): twice as fast as the default mode="raise".
            array.take(idx, axis=0, out=out, mode="clip")
            return
        bounds = np.searchsorted(idx, self._starts)
        for p, part in enumerate(parts):
            a, b = int(bounds[p]), int(bounds[p + 1])
            if a == b:
                continue
            array = part.data()
            part.check_size()
            array.take(idx[a:b] - self._starts[p], axis=0, out=out[a:b], mode="clip")

    def _read_range(self, start: int, stop: int) -> np.ndarray:
        """Copies rows [start, stop) into a new array."""
        out = np.empty((stop - start, *self.row_shape), self.dtype)
        parts = self._parts()
        for p, part in enumerate(parts):
            lo, hi = max(start, int(self._starts[p])), min(stop, int(self._starts[p + 1]))
            if lo >= hi:
                continue
            array = part.data()
            part.check_size()
            base = int(self._starts[p])
            out[lo - start : hi - start] = array[lo - base : hi - base]
        return out

    def check_sizes(self) -> None:
        """Raises CorruptFileError if any of this column's files shrank since opening."""
        for part in self._parts():
            part.check_size()


class _DatasetColumn(Column):
    """A column of a :class:`Dataset`; pickles as (the dataset's files, field name).

    It refers to the dataset's :class:`_DatasetFiles`, not to the Dataset itself, so
    that a Dataset and its columns form no reference cycle, and a column outlives
    a dropped Dataset (keeping the mappings it needs).
    """

    def __init__(self, files: "_DatasetFiles", name: str):
        spec = files.manifest.fields[name]
        super().__init__(name, spec.dtype, spec.shape, [s.num_rows for s in files.manifest.shards])
        self._files = files

    def _parts(self) -> Sequence[_MappedFile]:
        return self._files.mapped()[self.name]

    def __reduce__(self):
        # The column's own metadata travels along, so unpickling does not open the
        # dataset: that happens on first read (like an unpickled Dataset), and a
        # missing or replaced dataset is reported there, not inside unpickling.
        return (_column_of, (self._files, self.name, self.dtype.str, self.row_shape, self._part_rows))

    def __repr__(self) -> str:
        return f"<memseq.Column {self.name!r} of {self._files.path!r} shape={self.shape} dtype={self.dtype}>"


def _column_of(files: "_DatasetFiles", name: str, dtype: str, row_shape: tuple[int, ...], part_rows: Sequence[int]) -> Column:
    column = _DatasetColumn.__new__(_DatasetColumn)
    Column.__init__(column, name, np.dtype(dtype), row_shape, part_rows)
    column._files = files
    return column


class RawColumn(Column):
    """A headerless raw file opened by :func:`open_raw`; pickles as its arguments."""

    def __init__(self, path: str, dtype: np.dtype, shape: tuple[int, ...], offset: int):
        super().__init__(os.path.basename(path), dtype, shape[1:], [shape[0]])
        self.path = path
        self.offset = offset
        self._lock = threading.Lock()
        self._file: _MappedFile | None = None
        self._closed = False

    def _parts(self) -> Sequence[_MappedFile]:
        f = self._file
        if f is None:
            with self._lock:
                if self._closed:
                    raise DatasetClosedError(f"{self.path}: the raw column was closed; open it again to read.")
                if self._file is None:
                    self._file = _MappedFile.open(self.path, self.dtype, self.shape, self.offset, "raw file")
                f = self._file
        return (f,)

    def close(self) -> None:
        """Unmaps the file; reading afterwards raises :class:`DatasetClosedError`."""
        with self._lock:
            self._closed = True
            f, self._file = self._file, None
        if f is not None:
            f.close()

    def __enter__(self) -> "RawColumn":
        return self

    def __exit__(self, *exc: Any) -> None:
        self.close()

    def __reduce__(self):
        return (_reopen_raw, (self.path, self.dtype.str, self.shape, self.offset))

    def __repr__(self) -> str:
        return f"<memseq.RawColumn {self.path!r} shape={self.shape} dtype={self.dtype} offset={self.offset}>"


def _reopen_raw(path: str, dtype: str, shape: tuple[int, ...], offset: int) -> RawColumn:
    # Lazy: the file is mapped (and its size checked) on first read in the new process.
    return RawColumn(path, np.dtype(dtype), tuple(shape), offset)


def open_raw(path: str | os.PathLike, dtype: Any, shape: Sequence[int] | int, offset: int = 0) -> Column:
    """Opens a headerless raw array file (as ``np.memmap(..., mode="w+")`` writes them).

    The file is mapped read-only. Its size minus ``offset`` must be exactly what
    ``dtype`` and ``shape`` imply; one ``-1`` in ``shape`` is inferred from the size.

    Args:
        path: The raw file.
        dtype: Element dtype (bool or numeric), e.g. ``"float32"``.
        shape: Full array shape, rows first, e.g. ``(-1, 64, 64, 3)``.
        offset: Bytes to skip at the start of the file.

    Returns:
        A read-only :class:`Column`; it pickles as these arguments, never as data.

    Raises:
        DatasetNotFoundError: If the file does not exist.
        NotRegularFileError: If it is a FIFO, socket, device or directory.
        DatasetPermissionError, FileAccessError: If it cannot be opened.
        SchemaError: If the path, dtype, shape or offset is invalid.
        CorruptFileError: If the size does not match (not divisible, too small or
            too large); the message gives the expected and the actual size.

    Example:
        >>> np.memmap("x.mmap", dtype="float32", mode="w+", shape=(100, 8))[:] = 1
        >>> x = memseq.open_raw("x.mmap", dtype="float32", shape=(-1, 8))
        >>> x.shape
        (100, 8)
    """
    path = _fs.check_path(path, "open_raw path")
    name = os.path.basename(path)
    dt = fmt.check_dtype(dtype, field=name)
    dims = (shape,) if isinstance(shape, (int, np.integer)) else shape
    try:
        dims = tuple(dims)
    except TypeError:
        dims = ()
    if not dims or any(isinstance(d, bool) or not isinstance(d, (int, np.integer)) or d < -1 for d in dims):
        raise SchemaError(
            f"{path}: shape must be a non-empty tuple of ints >= 0 (one may be -1). Received: {bounded_repr(shape)}"
        )
    if sum(d == -1 for d in dims) > 1:
        raise SchemaError(f"{path}: at most one dimension of shape may be -1. Received: {bounded_repr(shape)}")
    offset = check_int(offset, "offset", 0, where=path)
    fd, st = _fs.open_regular(path, "raw file")
    try:
        dims = _raw_shape(path, dt, dims, offset, st.st_size)
        part = _MappedFile(path, fd, st, dt, dims, offset)  # map now: a bad file fails here, not on first read
    finally:
        os.close(fd)
    column = RawColumn(path, dt, dims, offset)
    column._file = part
    return column


def _raw_shape(path: str, dt: np.dtype, dims: tuple[int, ...], offset: int, size: int) -> tuple[int, ...]:
    """The full shape of a raw file of ``size`` bytes, with -1 inferred; checks the size."""
    available = size - offset
    if available < 0:
        raise CorruptFileError(f"{path}: the file is {size} bytes, smaller than offset={offset}.")
    known = dt.itemsize * _prod(d for d in dims if d != -1)
    if -1 in dims:
        if known == 0:
            raise SchemaError(f"{path}: cannot infer -1 in shape {bounded_repr(dims)} when the other dimensions are 0.")
        if available % known:
            raise CorruptFileError(
                f"{path}: {available} bytes (file size {size} - offset {offset}) is not a multiple of "
                f"{known} bytes per {bounded_repr(tuple(d for d in dims if d != -1))} x {dt} unit; expected a size of "
                f"{offset} + k * {known} bytes. Check dtype and shape."
            )
        dims = tuple(available // known if d == -1 else int(d) for d in dims)
    dims = tuple(int(d) for d in dims)
    expected = offset + dt.itemsize * _prod(dims)
    if size != expected:
        raise CorruptFileError(
            f"{path}: expected {expected} bytes for shape {bounded_repr(dims)} of {dt} at offset {offset}, "
            f"but the file is {size} bytes ({'too small: truncated?' if size < expected else 'too large'}). "
            "Check dtype and shape."
        )
    return dims


class _DatasetFiles:
    """The opened state of a dataset: manifest and mappings, shared by a Dataset and its columns.

    Opening is lazy after unpickling. Pickles as (path, manifest fingerprint): a
    Dataset and its columns pickled together share one of these in the copy too.
    """

    def __init__(self, path: str, fingerprint: int | None = None):
        self.path = path
        self.fingerprint = fingerprint
        self._lock = threading.Lock()
        self._manifest: fmt.Manifest | None = None
        self._mapped: dict[str, list[_MappedFile]] | None = None
        self._closed = False

    def __reduce__(self):
        return (_DatasetFiles, (self.path, self.fingerprint))

    @property
    def manifest_path(self) -> str:
        return os.path.join(self.path, fmt.MANIFEST_NAME)

    @property
    def manifest(self) -> fmt.Manifest:
        if self._manifest is None:
            self.open()
        return self._manifest  # type: ignore[return-value]

    def mapped(self) -> dict[str, list[_MappedFile]]:
        mapped = self._mapped
        if mapped is None:
            self.open()
            mapped = self._mapped
            if mapped is None:  # closed by another thread meanwhile
                raise DatasetClosedError(f"{self.path}: the dataset was closed; open it again to read.")
        return mapped

    def open(self) -> None:
        with self._lock:
            if self._closed:
                raise DatasetClosedError(f"{self.path}: the dataset was closed; open it again to read.")
            if self._mapped is not None:
                return
            # An overwrite swaps the whole directory in one step. If that happens while
            # we read the manifest and open the files one by one, the old manifest could
            # be paired with some of the new files: fingerprint the manifest before and
            # after opening, and start again if it changed.
            for _ in range(_OPEN_ATTEMPTS):
                raw = fmt.read_manifest_bytes(self.path)
                crc = zlib.crc32(raw)
                if self.fingerprint is not None and crc != self.fingerprint:
                    raise DatasetReplacedError(
                        f"{self.manifest_path}: the dataset changed since this Dataset object was pickled; "
                        "open it again in the parent process."
                    )
                try:
                    manifest = fmt.parse_manifest(raw, self.path)
                    mapped = self._open_all(manifest)
                except MemseqError:
                    if _manifest_fingerprint(self.path) != crc:
                        continue  # replaced while opening: the error may be an artefact of that
                    raise
                if _manifest_fingerprint(self.path) == crc:
                    break
                _close_all(mapped)
            else:
                raise DatasetReplacedError(f"{self.manifest_path}: the dataset kept changing while it was being opened.")
            self._manifest = manifest
            self.fingerprint = crc
            self._mapped = mapped

    def _open_all(self, manifest: fmt.Manifest) -> dict[str, list[_MappedFile]]:
        mapped: dict[str, list[_MappedFile]] = {name: [] for name in manifest.fields}
        try:
            for shard in manifest.shards:
                for name, spec in manifest.fields.items():
                    mapped[name].append(self._open_data_file(shard, spec))
        except BaseException:
            _close_all(mapped)
            raise
        return mapped

    def _open_data_file(self, shard: fmt.ShardSpec, spec: fmt.FieldSpec) -> _MappedFile:
        rel = shard.files[spec.name].path
        path = fmt.resolve_inside(self.path, rel, manifest=self.manifest_path)
        fd, st = _fs.open_regular(path, f"data file of field {spec.name!r}")
        try:
            # One descriptor, for header, size and mapping alike, closed before returning:
            # a file swapped in between could otherwise pass the checks for another.
            with io.FileIO(fd, "rb", closefd=False) as f:
                dtype, shape, offset = fmt.read_npy_header(f, path)
            expected_shape = (shard.num_rows, *spec.shape)
            if dtype != spec.dtype:
                raise FormatError(
                    f"{path}: field {spec.name!r} should have dtype {spec.dtype} (manifest) but the file has {dtype}."
                )
            if shape != expected_shape:
                raise FormatError(
                    f"{path}: field {spec.name!r} should have shape {bounded_repr(expected_shape)} (manifest) "
                    f"but the file has {bounded_repr(shape)}."
                )
            expected_size = offset + shard.num_rows * spec.row_nbytes
            if st.st_size != expected_size:
                raise CorruptFileError(
                    f"{path}: expected {expected_size} bytes for {bounded_repr(shape)} of {dtype}, but the file is "
                    f"{st.st_size} bytes ({'truncated' if st.st_size < expected_size else 'has trailing bytes'})."
                )
            return _MappedFile(path, fd, st, dtype, shape, offset)
        finally:
            os.close(fd)

    def is_current(self) -> bool:
        """Whether the manifest and every mapped file on disk are still the ones opened."""
        if _manifest_fingerprint(self.path) != self.fingerprint:
            return False
        return all(part.is_current() for parts in self.mapped().values() for part in parts)

    def close(self) -> None:
        with self._lock:
            self._closed = True
            mapped, self._mapped = self._mapped, None
        if mapped is not None:
            _close_all(mapped)


def _close_all(mapped: dict[str, list[_MappedFile]]) -> None:
    for files in mapped.values():
        for f in files:
            f.close()


class Dataset(Mapping):
    """A memseq dataset opened for reading: a read-only table of columns.

    Like a pandas DataFrame, ``len(ds)`` is the number of rows, iterating yields
    field names, and ``ds[name]`` is a :class:`Column`. Nothing can be written
    through it. Use :func:`memseq.open` to get one.

    Attributes:
        path: The dataset directory.
        manifest: The parsed :class:`memseq.format.Manifest`.
        fields: Mapping of field name -> :class:`memseq.format.FieldSpec`.

    A Dataset holds no open file descriptor, only memory mappings; :meth:`close`
    (or leaving a ``with memseq.open(path) as ds:`` block) unmaps them at once, and
    so does dropping the last reference to the Dataset and its columns.

    Example:
        >>> ds = memseq.open("data/train")
        >>> len(ds), list(ds)
        (60000, ['image', 'label'])
        >>> batch = ds.take([7, 1, 3])          # {'image': ..., 'label': ...}
    """

    def __init__(
        self,
        path: str | os.PathLike,
        *,
        _fingerprint: int | None = None,
        _lazy: bool = False,
        _files: _DatasetFiles | None = None,
    ):
        if _files is None:
            _files = _DatasetFiles(os.path.abspath(_fs.check_path(path, "dataset path")), _fingerprint)
        self._state = _files
        self.path = _files.path
        if not _lazy:
            _files.open()

    # -- opening, closing and pickling

    def close(self) -> None:
        """Unmaps every data file now. Reads afterwards raise :class:`DatasetClosedError`.

        Columns taken from this Dataset are closed with it. Arrays already read are
        copies and stay valid. Calling ``close()`` again does nothing.
        """
        self._state.close()

    def __enter__(self) -> "Dataset":
        return self

    def __exit__(self, *exc: Any) -> None:
        self.close()

    def __reduce__(self):
        return (_dataset_of, (self._state,))

    def __getattr__(self, name: str):
        # After unpickling, manifest/fields/_columns appear on first use.
        if name in ("manifest", "fields", "_columns"):
            state = self.__dict__.get("_state")
            if state is None:
                raise AttributeError(name)
            manifest = state.manifest
            self.__dict__.setdefault("manifest", manifest)
            self.__dict__.setdefault("fields", dict(manifest.fields))
            if "_columns" not in self.__dict__:
                self.__dict__["_columns"] = {n: _DatasetColumn(state, n) for n in manifest.fields}
            return self.__dict__[name]
        raise AttributeError(name)

    # -- the table

    def __getitem__(self, name: str) -> Column:
        try:
            return self._columns[name]
        except (KeyError, TypeError):
            raise SchemaError(f"{self.path}: no field {bounded_repr(name)}; fields are {bounded_repr(list(self.fields))}.") from None

    def __iter__(self) -> Iterator[str]:
        return iter(self.fields)

    def __len__(self) -> int:
        """The number of rows (not of fields: use ``len(ds.fields)``)."""
        return self.manifest.num_rows

    def __contains__(self, name: object) -> bool:
        return name in self.fields

    def get(self, name: str, default: Any = None) -> Any:
        """``ds[name]`` if the field exists, else ``default``."""
        # Mapping.get catches only KeyError; an unknown field raises SchemaError.
        return self._columns.get(name, default)

    def keys(self) -> KeysView:
        return self._columns.keys()

    def values(self) -> ValuesView:
        return self._columns.values()

    def items(self) -> ItemsView:
        return self._columns.items()

    @property
    def num_rows(self) -> int:
        """The number of rows."""
        return self.manifest.num_rows

    @property
    def num_shards(self) -> int:
        """The number of shards."""
        return len(self.manifest.shards)

    def __repr__(self) -> str:
        fields = ", ".join(f"{n}: {s.dtype}{list(s.shape)}" for n, s in self.fields.items())
        return f"<memseq.Dataset {self.path!r} rows={self.num_rows} shards={self.num_shards} {{{fields}}}>"

    def take(self, indices: Any, fields: Sequence[str] | None = None) -> dict[str, np.ndarray]:
        """Gathers the same rows of several fields at once.

        Rows are read in ascending order and returned in the order asked for.

        Args:
            indices: 1-D integer row indices or a boolean mask.
            fields: Field names to read; all fields by default.

        Returns:
            A dict of field name -> numpy array of shape ``(len(indices), *row_shape)``.

        Raises:
            BatchIndexError: If an index is out of range.
            SchemaError: If a field does not exist.
            CorruptFileError: If a file was truncated since it was opened.

        Example:
            >>> ds.take([3, 1, 2], fields=["label"])
            {'label': array([3, 1, 2])}
        """
        names = list(self.fields) if fields is None else list(fields)
        columns = [self[name] for name in names]
        # Validate and sort the indices once for all fields.
        idx, ascending = row_indices(indices, self.num_rows, what=self.path)
        order = None if ascending else np.argsort(idx, kind="stable")
        sorted_idx = idx if order is None else idx[order]
        out = {}
        for name, col in zip(names, columns):
            out[name] = np.empty((len(idx), *col.row_shape), col.dtype)
            col._take_valid(sorted_idx, order, out[name])
        return out

    def verify(self) -> None:
        """Checks the bytes this Dataset serves against the manifest's checksums.

        The checksums are computed over the Dataset's own mappings, so they check
        exactly what reads return, even if the files on disk have been replaced since.
        Every file is read once, sequentially, without holding it in memory.

        Raises:
            CorruptFileError: Naming the first file whose size or checksum is wrong.
            DatasetReplacedError: If everything this Dataset serves is intact, but the
                dataset on disk was replaced since it was opened (open it again to
                verify the new one).
            DatasetClosedError: If the Dataset was closed.
        """
        from memseq._checksum import crc32_of_array

        files = self._state.mapped()
        for s, shard in enumerate(self.manifest.shards):
            for name, entry in shard.files.items():
                part = files[name][s]
                part.check_size()
                actual = fmt.format_checksum(crc32_of_array(part.data(), between=part.check_size))
                if actual != entry.checksum:
                    raise CorruptFileError(
                        f"{part.path}: checksum mismatch for field {name!r}: manifest says {entry.checksum}, "
                        f"the file has {actual}. The file is corrupt."
                    )
        if not self._state.is_current():
            raise DatasetReplacedError(
                f"{self.path}: the dataset on disk was replaced after this Dataset opened it. The data this "
                "Dataset serves (the version it opened) are intact; open the path again to read and verify the new one."
            )

    def records(self, fields: Sequence[str] | None = None) -> Any:
        """A Grain-ready record view: item ``i`` is ``{field: row i}`` (see :class:`memseq.Records`).

        Thread-safe, picklable by reference (workers reopen the dataset by path),
        with a batched ``_getitems``. Example:
        ``grain.MapDataset.source(ds.records()).shuffle(seed=0).batch(64)``.
        """
        from memseq._records import Records

        return Records(self, fields)


def _manifest_fingerprint(directory: str) -> int | None:
    """CRC-32 of the manifest's bytes, or None if it cannot be read (read_manifest reports why)."""
    try:
        return zlib.crc32(fmt.read_manifest_bytes(directory))
    except MemseqError:
        return None


def _dataset_of(files: _DatasetFiles) -> Dataset:
    return Dataset(files.path, _lazy=True, _files=files)


def _reopen_dataset(path: str, fingerprint: int | None) -> Dataset:
    # Pickles made before _DatasetFiles existed name this function.
    return Dataset(path, _fingerprint=fingerprint, _lazy=True)


def open(path: str | os.PathLike) -> Dataset:  # noqa: A001 - mirrors io.open / np.load naming
    """Opens a memseq dataset for reading.

    Validates the manifest, every ``.npy`` header (dtype, row shape, row count)
    and every file's size before returning; reads no data.

    Args:
        path: The dataset directory.

    Returns:
        A read-only :class:`Dataset`.

    Raises:
        DatasetNotFoundError: If the directory, manifest or a data file is missing.
        NotRegularFileError: If the manifest or a data file is a FIFO, socket,
            device or directory.
        DatasetPermissionError, FileAccessError: If a file cannot be opened.
        FormatError: If the manifest or a header is invalid or disagrees with the other.
        UnsafePathError: If the manifest names a file outside the directory.
        CorruptFileError: If a file has the wrong size.

    Example:
        >>> ds = memseq.open("data/train")
        >>> ds["image"][0:4].shape
        (4, 64, 64, 3)
    """
    return Dataset(path)
