"""The arrays of ``.npz`` archives (``np.savez``, ``np.savez_compressed``) as fields."""

from __future__ import annotations

import dataclasses
import os
import struct
import zipfile
import zlib
from collections.abc import Mapping, Sequence

import numpy as np

from memseq.convert._base import Source, check_file, field_spec_at
from memseq.errors import CorruptFileError, FormatError, SchemaError
from memseq.storage import format as fmt

__all__ = ["NpzSource", "ZIP_MAGIC"]

#: The first bytes of a zip archive's local file header (and so of an .npz file).
ZIP_MAGIC = b"PK\x03\x04"


@dataclasses.dataclass
class _NpzMember:
    key: str                 # member name without ".npy"
    compressed: bool
    dtype: np.dtype
    shape: tuple[int, ...]
    data_offset: int         # stored members: absolute offset of the array data in the .npz file
    header_length: int       # compressed members: bytes of .npy header inside the member


def _selection(keys: Mapping[str, str] | Sequence[str] | None, available: list[str]) -> dict[str, str]:
    """Field name -> array name, from the ``keys`` argument of :class:`NpzSource`."""
    if keys is None:
        return {k: k for k in available}
    if isinstance(keys, Mapping):
        return dict(keys)
    return {k: k for k in keys}


class NpzSource(Source):
    """Arrays of an ``.npz`` archive (``np.savez`` or ``np.savez_compressed``) as fields.

    Stored members (``np.savez``) are read in place with ``pread``; compressed members
    (``np.savez_compressed``) are decompressed as a stream (a job that starts in the
    middle of a compressed member has to decompress everything before its rows).

    Args:
        path: The ``.npz`` file.
        keys: Which arrays to take: a mapping of field name -> array name in the
            archive, a list of array names (used as field names), or None for all.

    Raises:
        DatasetNotFoundError: If the file does not exist.
        FormatError: If it is not a readable zip archive of ``.npy`` members.
        CorruptFileError: If a member's size does not match its header.
        SchemaError: For an unknown array name, an unsupported dtype (object arrays
            included: memseq never unpickles) or invalid names.
    """

    def __init__(self, path: str | os.PathLike, keys: Mapping[str, str] | Sequence[str] | None = None):
        self.path = check_file(path, "an .npz file")
        try:
            zf = zipfile.ZipFile(self.path)
        except (zipfile.BadZipFile, OSError) as e:
            raise FormatError(f"{self.path}: not a readable .npz (zip) archive ({e}); truncated or not an .npz?") from e
        with zf:
            available = [i.filename[:-4] for i in zf.infolist() if i.filename.endswith(".npy")]
            selection = _selection(keys, available)
            if not selection:
                raise FormatError(f"{self.path}: the archive holds no .npy arrays.")
            self.members: dict[str, _NpzMember] = {}
            fields = {}
            rows = {}
            for name, key in selection.items():
                if key not in available:
                    raise SchemaError(f"{self.path}: no array {key!r} in the archive; arrays are {available}.")
                member = self._inspect(zf, zf.getinfo(key + ".npy"), key)
                if not member.shape:
                    raise SchemaError(f"{self.path}[{key!r}]: a 0-d array has no rows.")
                fields[name] = field_spec_at(name, member.dtype, member.shape[1:], f"{self.path}[{key!r}]")
                self.members[name] = member
                rows[name] = member.shape[0]
        self._set_table(fields, rows, "arrays")
        self._open_fd = None
        self._open_zip = None
        self._open_streams = None

    def _inspect(self, zf: zipfile.ZipFile, info: zipfile.ZipInfo, key: str) -> _NpzMember:
        where = f"{self.path}[{key!r}]"
        try:
            with zf.open(info) as f:
                dtype, shape, header_length = fmt.read_npy_header(f, where)
        except (zipfile.BadZipFile, zlib.error, OSError, EOFError) as e:
            raise CorruptFileError(f"{where}: cannot read the member ({e}).") from e
        if dtype.hasobject:
            # np.save pickles object arrays: their size never matches the header, and
            # reading them would mean unpickling, which memseq never does.
            raise SchemaError(
                f"{where}: object arrays (dtype {dtype}) are not supported: memseq stores bool and numeric "
                "arrays only and never unpickles. Convert the array to a numeric dtype first."
            )
        nbytes = int(np.prod(shape, dtype=np.int64)) * dtype.itemsize
        if info.file_size != header_length + nbytes:
            raise CorruptFileError(
                f"{where}: the header says shape {shape} of {dtype} ({header_length + nbytes} bytes) "
                f"but the member holds {info.file_size} bytes."
            )
        compressed = info.compress_type != zipfile.ZIP_STORED
        data_offset = 0 if compressed else self._stored_data_offset(info, where, header_length, nbytes)
        return _NpzMember(key, compressed, dtype, shape, data_offset, header_length)

    def _stored_data_offset(self, info: zipfile.ZipInfo, where: str, header_length: int, nbytes: int) -> int:
        """Where a stored member's array data start in the archive file."""
        # The member's bytes start after its local file header (30 bytes plus
        # the name and the extra field, whose lengths sit at bytes 26..29).
        with open(self.path, "rb") as f:
            f.seek(info.header_offset)
            local = f.read(30)
        if len(local) != 30 or local[:4] != ZIP_MAGIC:
            raise CorruptFileError(f"{where}: bad local zip header.")
        name_len, extra_len = struct.unpack("<HH", local[26:30])
        data_offset = info.header_offset + 30 + name_len + extra_len + header_length
        if os.path.getsize(self.path) < data_offset + nbytes:
            raise CorruptFileError(f"{where}: the archive is truncated.")
        return data_offset

    def read(self, start: int, stop: int) -> dict[str, np.ndarray]:
        out = {}
        for name, member in self.members.items():
            spec = self.fields[name]
            buf = np.empty((stop - start, *spec.shape), spec.dtype)
            view = memoryview(buf.reshape(-1).view(np.uint8)) if buf.size else memoryview(b"")
            if not member.compressed:
                if self._open_fd is None:
                    self._open_fd = os.open(self.path, os.O_RDONLY | getattr(os, "O_CLOEXEC", 0))
                _pread_exact(self._open_fd, view, member.data_offset + start * spec.row_nbytes, f"{self.path}[{member.key!r}]")
            else:
                self._read_compressed(name, member, start, view)
            out[name] = buf
        return out

    def _read_compressed(self, name: str, member: _NpzMember, start: int, view: memoryview) -> None:
        where = f"{self.path}[{member.key!r}]"
        if self._open_zip is None:
            self._open_zip = zipfile.ZipFile(self.path)
            self._open_streams = {}
        streams = self._open_streams
        target = member.header_length + start * self.fields[name].row_nbytes
        try:
            stream = streams.get(name)
            if stream is None or stream.tell() > target:
                if stream is not None:
                    stream.close()
                stream = streams[name] = self._open_zip.open(member.key + ".npy")
            # Forward seeks decompress and discard: sequential units cost nothing extra.
            if stream.tell() != target:
                stream.seek(target)
            got = 0
            while got < len(view):
                n = stream.readinto(view[got:])
                if not n:
                    raise CorruptFileError(f"{where}: the compressed member ends early (truncated archive?).")
                got += n
        except (zipfile.BadZipFile, zlib.error, EOFError) as e:
            raise CorruptFileError(f"{where}: corrupt compressed data ({e}).") from e

    def close(self) -> None:
        for stream in (self._open_streams or {}).values():
            stream.close()
        if self._open_zip is not None:
            self._open_zip.close()
        if self._open_fd is not None:
            os.close(self._open_fd)
        self._open_fd = self._open_zip = self._open_streams = None


def _pread_exact(fd: int, view: memoryview, offset: int, where: str) -> None:
    got = 0
    while got < len(view):
        n = os.preadv(fd, [view[got:]], offset + got)
        if n == 0:
            raise CorruptFileError(f"{where}: the file ends early (truncated while converting?).")
        got += n
