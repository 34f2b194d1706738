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
  the file's size with one ``fstat`` per file touched (about a microsecond). A file
  truncated *during* a read can still fault; nothing short of ``pread`` (a copy
  through the kernel, far slower for random rows) closes that window.
- Pickling stores paths (and a fingerprint of the manifest), never array data, and
  the unpickled object reopens the files on first use. Worker processes started
  by spawn or forkserver therefore start fast and share the page cache.
"""

from __future__ import annotations

import mmap
import os
import threading
import zlib
from collections.abc import ItemsView, KeysView, Mapping, ValuesView
from typing import Any, Iterator, Sequence

import numpy as np

from memseq import format as fmt
from memseq.errors import (
    BatchIndexError,
    CorruptFileError,
    DatasetNotFoundError,
    FormatError,
    MemseqError,
    SchemaError,
)

__all__ = ["Column", "Dataset", "open", "open_raw"]

_open_file = open  # ``open`` below is memseq's public function.
# How often to start opening a dataset again that was replaced while it was being opened.
_OPEN_ATTEMPTS = 3


class _MappedFile:
    """One data file, memory-mapped read-only, with its expected size.

    The mapping is private to this object; ``array`` is a read-only ndarray over it.
    """

    __slots__ = ("path", "offset", "expected_size", "array", "_fd", "_mmap")

    def __init__(self, path: str, dtype: np.dtype, shape: tuple[int, ...], offset: int):
        self.path = path
        self.offset = offset
        nbytes = int(np.prod(shape, dtype=np.int64)) * dtype.itemsize
        self.expected_size = offset + nbytes
        try:
            self._fd = os.open(path, os.O_RDONLY | getattr(os, "O_CLOEXEC", 0))
        except FileNotFoundError as e:
            raise DatasetNotFoundError(f"{path}: data file does not exist.") from e
        except IsADirectoryError as e:
            raise FormatError(f"{path}: is a directory, not a data file.") from e
        try:
            self.check_size()
            if nbytes == 0:
                # mmap cannot map zero bytes; an empty array needs no file pages.
                self._mmap = None
                self.array = np.empty(shape, dtype)
            else:
                self._mmap = mmap.mmap(self._fd, self.expected_size, access=mmap.ACCESS_READ)
                self.array = np.frombuffer(self._mmap, dtype=dtype, count=nbytes // dtype.itemsize, offset=offset).reshape(shape)
            self.array.flags.writeable = False
        except BaseException:
            os.close(self._fd)
            raise

    def check_size(self) -> None:
        """Raises CorruptFileError if the file is now shorter than when it was opened."""
        size = os.fstat(self._fd).st_size
        if size < self.expected_size:
            raise CorruptFileError(
                f"{self.path}: the file is {size} bytes but {self.expected_size} bytes are expected "
                "(truncated after it was opened?). Reopen the dataset after restoring the file."
            )

    def close(self) -> None:
        # Arrays handed out are copies, so closing never invalidates user data; a
        # still-exported buffer (our own ``array``) keeps the mapping alive until freed.
        fd, self._fd = self._fd, -1
        if fd >= 0:
            os.close(fd)

    def __del__(self):
        try:
            self.close()
        except Exception:  # interpreter shutdown: os may be gone already
            pass


def _row_indices(key: Any, num_rows: int, *, what: str) -> tuple[np.ndarray, bool]:
    """Normalises integer or boolean-mask indices to a flat int64 array in [0, num_rows).

    Returns the indices and whether they are in ascending order. (Batches usually
    arrive sorted: then the bounds come from the ends, without two more passes.)
    """
    idx = np.asarray(key)
    if idx.dtype == bool:
        if idx.shape != (num_rows,):
            raise BatchIndexError(
                f"{what}: a boolean mask must have shape ({num_rows},). Received shape: {idx.shape}"
            )
        return np.flatnonzero(idx), True
    if idx.size == 0:
        return np.empty(0, np.int64), True
    if idx.dtype.kind not in "iu":
        raise BatchIndexError(f"{what}: row indices must be integers or a boolean mask. Received dtype: {idx.dtype}")
    if idx.ndim != 1:
        raise BatchIndexError(f"{what}: row indices must be one-dimensional. Received shape: {idx.shape}")
    idx = idx.astype(np.int64, copy=False)
    ascending = _is_sorted(idx)
    lo, hi = (int(idx[0]), int(idx[-1])) if ascending else (int(idx.min()), int(idx.max()))
    if lo < -num_rows or hi >= num_rows:
        bad = lo if lo < -num_rows else hi
        raise BatchIndexError(f"{what}: row index {bad} is out of range for {num_rows} rows.")
    if lo < 0:
        idx = np.where(idx < 0, idx + num_rows, idx)
        ascending = _is_sorted(idx)
    return idx, ascending


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


def _is_sorted(idx: np.ndarray) -> bool:
    return idx.size < 2 or bool((idx[1:] >= idx[:-1]).all())  # the method: 1 us faster than np.all


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

    def take(self, indices: Any, out: np.ndarray | None = None) -> np.ndarray:
        """Gathers rows by integer index or boolean mask, in the order asked for.

        Rows are read from the file in ascending order (friendlier to the disk and
        its read-ahead) and placed in the order of ``indices``.

        Args:
            indices: 1-D integers (negative count from the end) or a boolean mask.
            out: Optional C-contiguous array of shape ``(len(indices), *row_shape)``
                and this column's dtype to fill.

        Returns:
            A numpy array of shape ``(len(indices), *row_shape)``.

        Raises:
            BatchIndexError: If an index is out of range or not an integer.
            CorruptFileError: If a file was truncated since it was opened.
        """
        idx, ascending = _row_indices(indices, self._num_rows, what=self.name)
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
            part.check_size()
            # mode="clip" skips numpy's per-element bounds checks (indices are
            # already validated): twice as fast as the default mode="raise".
            part.array.take(idx, axis=0, out=out, mode="clip")
            return
        bounds = np.searchsorted(idx, self._starts)
        for p, part in enumerate(parts):
            a, b = int(bounds[p]), int(bounds[p + 1])
            if a == b:
                continue
            part.check_size()
            part.array.take(idx[a:b] - self._starts[p], axis=0, out=out[a:b], mode="clip")

    def _read_range(self, start: int, stop: int) -> np.ndarray:
        """Copies rows [start, stop) into a new array."""
        out = np.empty((stop - start, *self.row_shape), self.dtype)
        parts = self._parts()
        for p, part in enumerate(parts):
            lo, hi = max(start, int(self._starts[p])), min(stop, int(self._starts[p + 1]))
            if lo >= hi:
                continue
            part.check_size()
            base = int(self._starts[p])
            out[lo - start : hi - start] = part.array[lo - base : hi - base]
        return out

    def check_sizes(self) -> None:
        """Raises CorruptFileError if any of this column's files shrank since opening."""
        for part in self._parts():
            part.check_size()


class _DatasetColumn(Column):
    """A column of a :class:`Dataset`; pickles as (dataset, field name)."""

    def __init__(self, dataset: "Dataset", name: str):
        spec = dataset.fields[name]
        super().__init__(name, spec.dtype, spec.shape, [s.num_rows for s in dataset.manifest.shards])
        self._dataset = dataset

    def _parts(self) -> Sequence[_MappedFile]:
        return self._dataset._files()[self.name]

    def __reduce__(self):
        # The column's own metadata travels along, so unpickling does not open the
        # dataset: that happens on first read (like an unpickled Dataset), and a
        # missing or replaced dataset is reported there, not inside unpickling.
        return (_column_of, (self._dataset, self.name, self.dtype.str, self.row_shape, self._part_rows))

    def __repr__(self) -> str:
        return f"<memseq.Column {self.name!r} of {self._dataset.path!r} shape={self.shape} dtype={self.dtype}>"


def _column_of(dataset: "Dataset", name: str, dtype: str, row_shape: tuple[int, ...], part_rows: Sequence[int]) -> Column:
    column = _DatasetColumn.__new__(_DatasetColumn)
    Column.__init__(column, name, np.dtype(dtype), row_shape, part_rows)
    column._dataset = dataset
    return column


class RawColumn(Column):
    """A headerless raw file opened by :func:`open_raw`; pickles as its arguments."""

    def __init__(self, path: str, dtype: np.dtype, shape: tuple[int, ...], offset: int):
        super().__init__(os.path.basename(path), dtype, shape[1:], [shape[0]])
        self.path = path
        self.offset = offset
        self._lock = threading.Lock()
        self._file: _MappedFile | None = None

    def _parts(self) -> Sequence[_MappedFile]:
        f = self._file
        if f is None:
            with self._lock:
                if self._file is None:
                    self._file = _MappedFile(self.path, self.dtype, self.shape, self.offset)
                f = self._file
        return (f,)

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
        SchemaError: If the dtype or shape is invalid.
        CorruptFileError: If the size does not match (not divisible, too small or
            too large); the message gives the expected and the actual size.

    Example:
        >>> np.memmap("x.mmap", dtype="float32", mode="w+", shape=(100, 8))[:] = 1
        >>> x = memseq.open_raw("x.mmap", dtype="float32", shape=(-1, 8))
        >>> x.shape
        (100, 8)
    """
    path = os.fspath(path)
    name = os.path.basename(path)
    dt = fmt.check_dtype(dtype, field=name)
    dims = (shape,) if isinstance(shape, (int, np.integer)) else tuple(shape)
    if not dims or any(isinstance(d, bool) or not isinstance(d, (int, np.integer)) or d < -1 for d in dims):
        raise SchemaError(f"{path}: shape must be a non-empty tuple of ints >= 0 (one may be -1). Received: {shape!r}")
    if sum(d == -1 for d in dims) > 1:
        raise SchemaError(f"{path}: at most one dimension of shape may be -1. Received: {shape!r}")
    if isinstance(offset, bool) or not isinstance(offset, (int, np.integer)) or offset < 0:
        raise SchemaError(f"{path}: offset must be an int >= 0. Received: {offset!r}")
    try:
        size = os.stat(path).st_size
    except FileNotFoundError as e:
        raise DatasetNotFoundError(f"{path}: raw file does not exist.") from e
    available = size - offset
    if available < 0:
        raise CorruptFileError(f"{path}: the file is {size} bytes, smaller than offset={offset}.")
    known = dt.itemsize * int(np.prod([d for d in dims if d != -1], dtype=np.int64))
    if -1 in dims:
        if known == 0:
            raise SchemaError(f"{path}: cannot infer -1 in shape {dims} when the other dimensions are 0.")
        if available % known:
            raise CorruptFileError(
                f"{path}: {available} bytes (file size {size} - offset {offset}) is not a multiple of "
                f"{known} bytes per {tuple(d for d in dims if d != -1)} x {dt} unit; expected a size of "
                f"{offset} + k * {known} bytes. Check dtype and shape."
            )
        dims = tuple(available // known if d == -1 else int(d) for d in dims)
    dims = tuple(int(d) for d in dims)
    expected = offset + dt.itemsize * int(np.prod(dims, dtype=np.int64))
    if size != expected:
        raise CorruptFileError(
            f"{path}: expected {expected} bytes for shape {dims} of {dt} at offset {offset}, "
            f"but the file is {size} bytes ({'too small: truncated?' if size < expected else 'too large'}). "
            "Check dtype and shape."
        )
    column = RawColumn(path, dt, dims, int(offset))
    column._parts()  # map now, so a bad file fails here rather than on first read
    return column


class Dataset(Mapping):
    """A memseq dataset opened for reading: a read-only table of columns.

    Like a pandas DataFrame, ``len(ds)`` is the number of rows, iterating yields
    field names, and ``ds[name]`` is a :class:`Column`. Nothing can be written
    through it. Use :func:`memseq.open` to get one.

    Attributes:
        path: The dataset directory.
        manifest: The parsed :class:`memseq.format.Manifest`.
        fields: Mapping of field name -> :class:`memseq.format.FieldSpec`.

    Example:
        >>> ds = memseq.open("data/train")
        >>> len(ds), list(ds)
        (60000, ['image', 'label'])
        >>> batch = ds.take([7, 1, 3])          # {'image': ..., 'label': ...}
    """

    def __init__(self, path: str | os.PathLike, *, _fingerprint: int | None = None, _lazy: bool = False):
        self.path = os.path.abspath(os.fspath(path))
        self._lock = threading.Lock()
        self._mapped: dict[str, list[_MappedFile]] | None = None
        self._manifest_crc = _fingerprint
        if not _lazy:
            self._open()

    # -- opening and pickling

    def _open(self) -> None:
        with self._lock:
            if self._mapped is not None:
                return
            manifest_path = os.path.join(self.path, fmt.MANIFEST_NAME)
            # An overwrite swaps the whole directory in one step. If that happens while
            # we read the manifest and open the files one by one, the old manifest could
            # be paired with some of the new files: fingerprint the manifest before and
            # after opening, and start again if it changed.
            for _ in range(_OPEN_ATTEMPTS):
                crc = _manifest_fingerprint(manifest_path)
                if self._manifest_crc is not None and crc is not None and crc != self._manifest_crc:
                    raise CorruptFileError(
                        f"{manifest_path}: the dataset changed since this Dataset object was pickled; "
                        "open it again in the parent process."
                    )
                try:
                    manifest, mapped = self._open_all()
                except MemseqError:
                    if _manifest_fingerprint(manifest_path) != crc:
                        continue  # replaced while opening: the error may be an artefact of that
                    raise
                if _manifest_fingerprint(manifest_path) == crc:
                    break
                for files in mapped.values():
                    for f in files:
                        f.close()
            else:
                raise CorruptFileError(f"{manifest_path}: the dataset kept changing while it was being opened.")
            self.manifest = manifest
            self.fields = dict(manifest.fields)
            self._columns = {name: _DatasetColumn(self, name) for name in manifest.fields}
            self._manifest_crc = crc
            self._mapped = mapped

    def _open_all(self) -> tuple[fmt.Manifest, dict[str, list[_MappedFile]]]:
        manifest = fmt.read_manifest(self.path)
        mapped: dict[str, list[_MappedFile]] = {name: [] for name in manifest.fields}
        try:
            for shard in manifest.shards:
                for name, spec in manifest.fields.items():
                    mapped[name].append(self._open_data_file(manifest, shard, spec))
        except BaseException:
            for files in mapped.values():
                for f in files:
                    f.close()
            raise
        return manifest, mapped

    def _open_data_file(self, manifest: fmt.Manifest, shard: fmt.ShardSpec, spec: fmt.FieldSpec) -> _MappedFile:
        rel = shard.files[spec.name].path
        path = fmt.resolve_inside(self.path, rel, manifest=os.path.join(self.path, fmt.MANIFEST_NAME))
        try:
            f = _open_file(path, "rb")
        except FileNotFoundError as e:
            raise DatasetNotFoundError(f"{path}: data file of field {spec.name!r} does not exist.") from e
        except IsADirectoryError as e:
            raise FormatError(f"{path}: data file of field {spec.name!r} is a directory.") from e
        with f:
            dtype, shape, offset = fmt.read_npy_header(f, path)
            size = os.fstat(f.fileno()).st_size
        expected_shape = (shard.num_rows, *spec.shape)
        if dtype != spec.dtype:
            raise FormatError(f"{path}: field {spec.name!r} should have dtype {spec.dtype} (manifest) but the file has {dtype}.")
        if shape != expected_shape:
            raise FormatError(
                f"{path}: field {spec.name!r} should have shape {expected_shape} (manifest) but the file has {shape}."
            )
        expected_size = offset + shard.num_rows * spec.row_nbytes
        if size != expected_size:
            raise CorruptFileError(
                f"{path}: expected {expected_size} bytes for {shape} of {dtype}, but the file is {size} bytes"
                f" ({'truncated' if size < expected_size else 'has trailing bytes'})."
            )
        return _MappedFile(path, dtype, shape, offset)

    def _files(self) -> dict[str, list[_MappedFile]]:
        if self._mapped is None:
            self._open()
        return self._mapped  # type: ignore[return-value]

    def __reduce__(self):
        return (_reopen_dataset, (self.path, self._manifest_crc))

    def __getattr__(self, name: str):
        # After unpickling, manifest/fields/_columns appear on first use.
        if name in ("manifest", "fields", "_columns"):
            self._open()
            return self.__dict__[name]
        raise AttributeError(name)

    # -- the table

    def __getitem__(self, name: str) -> Column:
        try:
            return self._columns[name]
        except (KeyError, TypeError):
            raise SchemaError(f"{self.path}: no field {name!r}; fields are {list(self.fields)}.") from None

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
        idx, ascending = _row_indices(indices, self.num_rows, what=self.path)
        order = None if ascending else np.argsort(idx, kind="stable")
        sorted_idx = idx if order is None else idx[order]
        out = {}
        for name, col in zip(names, columns):
            out[name] = np.empty((len(idx), *col.row_shape), col.dtype)
            col._take_valid(sorted_idx, order, out[name])
        return out

    def verify(self) -> None:
        """Checks every data file's size and checksum against the manifest.

        Reads every file once, sequentially, without holding it in memory.

        Raises:
            CorruptFileError: Naming the first file whose size or checksum is wrong.
        """
        from memseq._checksum import crc32_of_file

        files = self._files()
        for s, shard in enumerate(self.manifest.shards):
            for name, entry in shard.files.items():
                part = files[name][s]
                part.check_size()
                path = part.path
                actual = fmt.format_checksum(crc32_of_file(path, part.offset))
                if actual != entry.checksum:
                    raise CorruptFileError(
                        f"{path}: checksum mismatch for field {name!r}: manifest says {entry.checksum}, "
                        f"the file has {actual}. The file is corrupt."
                    )


def _manifest_fingerprint(manifest_path: str) -> int | None:
    """CRC-32 of the manifest's bytes, or None if it cannot be read (read_manifest reports why)."""
    try:
        with _open_file(manifest_path, "rb") as f:
            return zlib.crc32(f.read())
    except OSError:
        return None


def _reopen_dataset(path: str, fingerprint: int | None) -> Dataset:
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
        FormatError: If the manifest or a header is invalid or disagrees with the other.
        UnsafePathError: If the manifest names a file outside the directory.
        CorruptFileError: If a file has the wrong size.

    Example:
        >>> ds = memseq.open("data/train")
        >>> ds["image"][0:4].shape
        (4, 64, 64, 3)
    """
    return Dataset(path)
