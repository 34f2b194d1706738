"""Memory mapping of one data file: read-only, holding no descriptor, checked for truncation.

- A file that shrinks after it was mapped raises :class:`CorruptFileError` instead of
  killing the process with SIGBUS. Every mapping is guarded (:mod:`memseq.read.sigbus`): a
  fault inside it marks it torn and turns its pages into zeros, so a copy out of it
  always finishes. Every reader calls :meth:`MappedFile.check_size` *after* each copy
  and before handing anything out: it raises if the mapping was torn or the file is
  now shorter than mapped (a truncation that lands in the last page reads zeros
  without a fault). The size comes from one ``stat`` of the path per file touched
  (about 2 us; an ``fstat`` would take 1.4 us but needs a descriptor kept open per
  file), and counts only if the path still names *the mapped file* (same device and
  inode: an inode number cannot be reused while our mapping keeps the inode alive); a
  path that now names another file (the dataset was overwritten) or nothing cannot be
  used to truncate the mapped file, so the old data stay readable.
- No file descriptor stays open: a file is opened (regular files only, never
  blocking), mapped, and closed again, so a dataset of thousands of shards opens
  under ``ulimit -n 1024``.
"""

from __future__ import annotations

import ctypes
import errno
import mmap
import os
import sys
import weakref
from typing import Any, Sequence

import numpy as np

from memseq.errors import CorruptFileError, DatasetClosedError, DatasetReplacedError
from memseq.read import sigbus as _sigbus
from memseq.storage import files as _fs
from memseq.util import libc as _libc

__all__ = ["MappedFile", "map_read_only", "prod"]


class MappedFile:
    """One data file, memory-mapped read-only, with its expected size; holds no descriptor.

    The mapping is private to this object; ``array`` is a read-only ndarray over it.
    """

    __slots__ = ("path", "offset", "expected_size", "array", "_mmap", "_identity", "_address", "_region")

    def __init__(self, path: str, fd: int, st: os.stat_result, dtype: np.dtype, shape: tuple[int, ...], offset: int):
        """Maps the open regular file ``fd`` (``st`` its fstat); the caller closes ``fd``."""
        self.path = path
        self.offset = offset
        nbytes = prod(shape) * dtype.itemsize
        self.expected_size = offset + nbytes
        self._identity = (st.st_dev, st.st_ino)
        self._mmap = None
        self.array = None
        self._region = _sigbus.Region(0, 0)
        self._check(st.st_size)
        if nbytes == 0:
            # mmap cannot map zero bytes; an empty array needs no file pages.
            array = np.empty(shape, dtype)
        else:
            try:
                self._mmap, self._region = map_read_only(fd, self.expected_size)
            except (OSError, ValueError, OverflowError) as e:
                raise _fs.os_error(e if isinstance(e, OSError) else OSError(errno.EINVAL, str(e)), path, "data file") from e
            array = np.frombuffer(self._mmap, dtype=dtype, count=nbytes // dtype.itemsize, offset=offset).reshape(shape)
        array.flags.writeable = False
        self.array = array
        self._address = array.ctypes.data

    @classmethod
    def open(cls, path: str, dtype: np.dtype, shape: tuple[int, ...], offset: int, what: str = "data file") -> "MappedFile":
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

    def check_size(self, field: str | None = None) -> None:
        """Raises if data copied from the mapping may be wrong: call it after every copy.

        Stats the path, and trusts the size only if the path still names the mapped
        file (same device and inode). Otherwise the file was replaced or removed:
        the mapping keeps the old inode alive, and no path leads to it any more.

        Args:
            field: The field this file holds, named in the message of a torn mapping.

        Raises:
            CorruptFileError: If the file is now shorter than when it was opened, or
                it was truncated while a read ran (the mapping is torn for good).
            DatasetReplacedError: If the mapping is torn and the path now names
                another file (the dataset was replaced while it was read).
        """
        try:
            st = os.stat(self.path)
        except OSError:
            st = None
        current = st is not None and (st.st_dev, st.st_ino) == self._identity
        if current:
            self._check(st.st_size)
        if self._region.torn:
            self._torn(field, current)

    def _torn(self, field: str | None, current: bool) -> None:
        where = f"{self.path}" + (f" (field {field!r})" if field else "")
        if not current:
            raise DatasetReplacedError(
                f"{where}: the file was truncated while it was being read, and the path now names another "
                "file or none (the dataset was replaced). Open the dataset again to read the new version."
            )
        raise CorruptFileError(
            f"{where}: the file was truncated while it was being read (its size is back to "
            f"{self.expected_size} bytes, but the bytes read cannot be trusted). Open the dataset again."
        )

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

    def address(self) -> int:
        """The address of the first data byte in memory; DatasetClosedError once closed."""
        if self.array is None:
            self.data()  # raises
        return self._address

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
                return  # a read in another thread still holds the array: unmapped when it ends
            _sigbus.forget(self._region)


# Python's mmap.mmap keeps a duplicate of the descriptor for the mapping's lifetime (until
# Python 3.13's trackfd=False): one descriptor per data file, so a dataset of 2,000 shards
# could not open under ``ulimit -n 1024``. A mapping needs no descriptor: map with libc
# (on Linux, where memseq.read.sigbus guards the mappings).
_LIBC_MAPS = sys.version_info < (3, 13) and sys.platform.startswith("linux") and _libc.available("mmap", "munmap")


class _Unmapper:
    """Unmaps a libc mapping when freed: owned by the ctypes buffer that every view keeps alive."""

    __slots__ = ("address", "length", "region")

    def __init__(self, address: int, length: int, region: _sigbus.Region):
        self.address, self.length, self.region = address, length, region

    def __del__(self, _finalizing=sys.is_finalizing):
        if _finalizing():  # interpreter shutdown: module globals may be gone; the process's exit unmaps
            return
        _sigbus.forget(self.region)  # first: the address range may be reused once unmapped
        try:
            _libc.munmap(self.address, self.length)
        except OSError:
            pass  # nothing to do from a finalizer: the range stays mapped


def map_read_only(fd: int, length: int) -> tuple[Any, _sigbus.Region]:
    """A read-only shared mapping of ``length`` bytes of ``fd`` that holds no descriptor, guarded.

    Returns an object with the buffer protocol, and the mapping's
    :class:`~memseq.read.sigbus.Region` (torn by a fault inside it). The mapping lives
    as long as the object (and any array made from it) does.
    """
    if not _LIBC_MAPS:
        if sys.version_info >= (3, 13):
            mm = mmap.mmap(fd, length, access=mmap.ACCESS_READ, trackfd=False)
        else:
            mm = mmap.mmap(fd, length, access=mmap.ACCESS_READ)  # keeps a descriptor: no better way here
        view = np.frombuffer(mm, np.uint8, count=1)
        region = _sigbus.register(view.ctypes.data, length)
        del view  # an export of mm: close() refuses while one lives
        weakref.finalize(mm, _sigbus.forget, region)  # if the mapping goes without close()
        return mm, region
    address = _libc.mmap(None, length, mmap.PROT_READ, mmap.MAP_SHARED, fd, 0)
    region = _sigbus.register(address, length)
    buffer = (ctypes.c_char * length).from_address(address)
    buffer._unmapper = _Unmapper(address, length, region)  # freed with the buffer, after the last view
    return buffer, region


def prod(shape: Sequence[int]) -> int:
    """The product of ``shape`` as a Python int (numpy's int64 product would wrap)."""
    n = 1
    for d in shape:
        n *= int(d)
    return n
