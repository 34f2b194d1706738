"""Headerless raw array files (as ``np.memmap(..., mode="w+")`` writes them), as columns.

``memseq.open_raw(path, dtype, shape)`` checks the file's size against ``dtype`` and
``shape`` (one ``-1`` inferred), maps it read-only and returns a :class:`RawColumn`,
which pickles as its arguments, never as data.
"""

from __future__ import annotations

import os
import threading
from typing import Any, Sequence

import numpy as np

from memseq import _fs
from memseq import format as fmt
from memseq._checks import bounded_repr, check_int
from memseq._mapping import MappedFile, prod
from memseq.columns import Column
from memseq.errors import CorruptFileError, DatasetClosedError, SchemaError

__all__ = ["RawColumn", "open_raw"]


class RawColumn(Column):
    """A headerless raw file opened by :func:`open_raw`; pickles as its arguments."""

    def __init__(self, path: str, dtype: np.dtype, shape: tuple[int, ...], offset: int):
        super().__init__(os.path.basename(path), dtype, shape[1:], [shape[0]])
        self.path = path
        self.offset = offset
        self._lock = threading.Lock()
        self._file: MappedFile | None = None
        self._closed = False

    def _parts(self) -> Sequence[MappedFile]:
        f = self._file
        if f is None:
            with self._lock:
                if self._closed:
                    raise DatasetClosedError(f"{self.path}: the raw column was closed; open it again to read.")
                if self._file is None:
                    self._file = MappedFile.open(self.path, self.dtype, self.shape, self.offset, "raw file")
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
        part = MappedFile(path, fd, st, dt, dims, offset)  # map now: a bad file fails here, not on first read
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
    known = dt.itemsize * prod(d for d in dims if d != -1)
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
    expected = offset + dt.itemsize * prod(dims)
    if size != expected:
        raise CorruptFileError(
            f"{path}: expected {expected} bytes for shape {bounded_repr(dims)} of {dt} at offset {offset}, "
            f"but the file is {size} bytes ({'too small: truncated?' if size < expected else 'too large'}). "
            "Check dtype and shape."
        )
    return dims
