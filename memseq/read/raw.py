"""Headerless raw array files (as ``np.memmap(..., mode="w+")`` writes them), as columns.

``memseq.open_raw(path, dtype, shape)`` checks the file's size against ``dtype`` and
``shape`` (one ``-1`` inferred), maps it read-only and returns a :class:`RawColumn`,
which pickles as its arguments and the file's identity, never as data.
"""

from __future__ import annotations

import io
import mmap
import os
import threading
from typing import Any, Sequence

import numpy as np

from memseq.errors import CorruptFileError, DatasetClosedError, FormatError, SchemaError
from memseq.read.columns import Column
from memseq.read.mapping import MappedFile, prod
from memseq.storage import files as _fs
from memseq.storage import format as fmt
from memseq.storage import identity as _identity
from memseq.storage.identity import FileIdentity
from memseq.util import forksafe as _forksafe
from memseq.util.checks import bounded_repr, check_int

__all__ = ["RawColumn", "memmap_reference", "open_raw", "reopen_raw"]


class RawColumn(Column):
    """A headerless raw file opened by :func:`open_raw`; pickles as its arguments and the file's identity.

    The path is kept absolute, so a process with another working directory reads the
    same file. The pickle also carries the identity of the file this object maps
    (device, inode, size, modification time; see :mod:`memseq.storage.identity`): the
    unpickled copy maps the path again on first read and refuses another file
    (replaced by a rename, or written to after pickling) with
    :class:`DatasetReplacedError` and another size with :class:`CorruptFileError`,
    instead of serving data its parent never served. A closed column pickles closed.
    """

    def __init__(
        self,
        path: str,
        dtype: np.dtype,
        shape: tuple[int, ...],
        offset: int,
        *,
        identity: FileIdentity | None = None,
        closed: bool = False,
    ):
        path = os.path.abspath(path)
        super().__init__(os.path.basename(path), dtype, shape[1:], [shape[0]])
        self.path = path
        self.offset = offset
        self._lock = threading.Lock()
        self._file: MappedFile | None = None
        self._closed = closed
        self._unpickled = False
        if identity is None:
            # Built over a file someone else opened (an np.memmap given to a sequence):
            # the file the path names now is the one to serve, here and in workers.
            try:
                identity = _identity.identity_of(os.stat(path))
            except OSError:
                identity = None  # reported by the first read
        self._identity = identity
        _forksafe.register(self)

    def _after_fork_in_child(self) -> None:
        self._lock = threading.Lock()

    def parts(self) -> Sequence[MappedFile]:
        """The raw file, mapped (again, on first use after unpickling): one part.

        Raises:
            DatasetClosedError: If the column was closed.
            DatasetReplacedError, CorruptFileError: If an unpickled copy finds another
                file, or another size, than the one that was pickled.
        """
        f = self._file
        if f is None:
            with self._lock:
                if self._closed:
                    raise DatasetClosedError(f"{self.path}: the raw column was closed; open it again to read.")
                if self._file is None:
                    self._file = self._map()
                f = self._file
        return (f,)

    def _map(self) -> MappedFile:
        fd, st = _fs.open_regular(self.path, "raw file")
        try:
            # In the process that made it, writes since (to an np.memmap given to a
            # sequence, say) are what that process reads anyway: only an unpickled copy
            # refuses a file written to after it was pickled.
            _identity.check(self.path, st, self._identity, "raw column", modified=self._unpickled)
            mapped = MappedFile(self.path, fd, st, self.dtype, self.shape, self.offset)
            self._identity = _identity.identity_of(st)
            return mapped
        finally:
            os.close(fd)

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
        identity = _identity.refreshed(self.path, self._identity)
        identity = None if identity is None else tuple(identity)
        return (reopen_raw, (self.path, self.dtype.str, self.shape, self.offset, identity, self._closed))

    def __repr__(self) -> str:
        return f"<memseq.RawColumn {self.path!r} shape={self.shape} dtype={self.dtype} offset={self.offset}>"


def reopen_raw(
    path: str, dtype: str, shape: tuple[int, ...], offset: int, identity: tuple | None = None, closed: bool = False
) -> RawColumn:
    """A :class:`RawColumn` from its pickled reference: what unpickling one calls.

    Maps nothing: the file is mapped on first read, and its identity and size are
    checked then, so a missing or replaced file is reported by that read, not inside
    unpickling. Also rebuilds the file-backed ``np.memmap`` fields of a pickled
    :class:`~memseq.Records` view.

    Args:
        path: The absolute path of the raw file.
        dtype: The dtype, as ``np.dtype.str``.
        shape: The full shape, rows first.
        offset: Bytes skipped at the start of the file.
        identity: The :class:`~memseq.storage.identity.FileIdentity` fields of the file
            that was pickled; None to accept the file the path names (nothing to compare).
        closed: Whether the pickled column was closed (the copy is then closed too).

    Returns:
        An unmapped :class:`RawColumn` that refuses another file than ``identity`` names.
    """
    column = RawColumn.__new__(RawColumn)
    Column.__init__(column, os.path.basename(path), np.dtype(dtype), tuple(shape)[1:], [tuple(shape)[0]])
    column.path, column.offset = path, offset
    column._lock = threading.Lock()
    column._file = None
    column._closed = bool(closed)
    column._unpickled = True
    column._identity = None if identity is None else FileIdentity(*identity)
    return _forksafe.register(column)


def memmap_reference(array: np.memmap) -> tuple[str, str, tuple[int, ...], int] | None:
    """``(path, dtype, shape, file offset)`` of a read-only-mappable ``np.memmap``, or None.

    Pickling an ``np.memmap`` copies its data; readers pickle these instead and
    map the file again on unpickling (``RawColumn(*reference)`` reads the same
    bytes; :class:`~memseq.Records` does this). Copy-on-write, 0-d or
    non-contiguous memmaps give None (they pickle as data, as they must).
    """
    raw = getattr(array, "_mmap", None)
    if array.filename is None or array.mode == "c" or not array.flags.c_contiguous or array.ndim == 0 or raw is None:
        return None
    mapping_start = np.frombuffer(raw, np.uint8).ctypes.data
    map_offset = array.offset - array.offset % mmap.ALLOCATIONGRANULARITY
    file_offset = map_offset + (array.ctypes.data - mapping_start)
    return os.fspath(array.filename), array.dtype.str, tuple(array.shape), int(file_offset)


def open_raw(path: str | os.PathLike, dtype: Any, shape: Sequence[int] | int, offset: int = 0) -> Column:
    """Opens a headerless raw array file (as ``np.memmap(..., mode="w+")`` writes them).

    The file is mapped read-only. Its size minus ``offset`` must be exactly what
    ``dtype`` and ``shape`` imply; one ``-1`` in ``shape`` is inferred from the size.

    What cannot be checked: a headerless file does not record its dtype. With a
    ``-1`` in ``shape``, a wrong dtype whose item size still divides the file (say
    ``float32`` for ``float64`` data, or ``uint8`` for anything) opens, with another
    row count, and reads wrong values. Pass the full shape when you know the row
    count: then a wrong dtype is a size mismatch, an error. A file that does carry a
    header (a ``.npy`` file) is checked against it: another dtype, shape or offset
    than its header says is refused (reading all its bytes as 1-D ``uint8`` is not).

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
        SchemaError: If the path, dtype, shape or offset is invalid, or the file is a
            ``.npy`` file whose header says another dtype, shape or data offset.
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
        _refuse_npy_mismatch(path, fd, dt, dims, offset)
        part = MappedFile(path, fd, st, dt, dims, offset)  # map now: a bad file fails here, not on first read
    finally:
        os.close(fd)
    column = RawColumn(path, dt, dims, offset, identity=_identity.identity_of(st))
    column._file = part
    return column


def _refuse_npy_mismatch(path: str, fd: int, dt: np.dtype, dims: tuple[int, ...], offset: int) -> None:
    """Refuses a ``.npy`` file read with another dtype or shape than its header says.

    A headerless file cannot tell its dtype, but a ``.npy`` file can: if the file
    starts with the ``.npy`` magic string and has a valid header, ``open_raw`` must
    skip exactly the header and agree with its dtype and shape.
    """
    try:
        head = os.pread(fd, 8, 0)
    except OSError:
        return  # the mapping reports unreadable files
    if not fmt.has_npy_magic(head):
        return
    try:
        with io.FileIO(fd, "rb", closefd=False) as f:
            npy_dtype, npy_shape, npy_offset = fmt.read_npy_header(f, path)
    except FormatError:
        return  # raw bytes that happen to start like a .npy file: nothing to compare with
    if offset == npy_offset and dt == npy_dtype and dims == tuple(npy_shape):
        return
    if dt == np.uint8 and offset == 0 and len(dims) == 1:
        return  # the file's bytes, header included, on purpose
    raise SchemaError(
        f"{path}: this is a .npy file, not a headerless raw file: its header says dtype {npy_dtype}, shape "
        f"{bounded_repr(tuple(npy_shape))}, data at byte {npy_offset}. Received: dtype={dt}, shape={bounded_repr(dims)}, "
        f"offset={offset}. Open it with np.load(path, mmap_mode='r'), or pass "
        f"open_raw(path, dtype={npy_dtype.str!r}, shape={bounded_repr(tuple(npy_shape))}, offset={npy_offset})."
    )


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
