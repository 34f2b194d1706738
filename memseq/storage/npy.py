"""The ``.npy`` headers of memseq's data files: writing, reading and checking them.

Each data file is a standard ``.npy`` file, version 1.0, C order (see the format
specification in :mod:`memseq.storage.format`). Headers are parsed here rather than by
numpy's reader so that every malformed header, however hostile, gives one
:class:`FormatError`, and never more than :data:`MAX_NPY_HEADER_BYTES` are read.
"""

from __future__ import annotations

import ast
import math
import struct
from typing import BinaryIO

import numpy as np

from memseq.errors import FormatError, MemseqError
from memseq.storage import files as _fs
from memseq.util.checks import bounded_repr

__all__ = [
    "MAX_BYTES",
    "MAX_ROWS",
    "MAX_ROW_DIMS",
    "MAX_NPY_HEADER_BYTES",
    "npy_header",
    "reserved_header_length",
    "read_npy_header",
    "has_npy_magic",
]

# The .npy magic string and the version (1, 0) we write: a 2-byte little-endian
# header length, enough for any header memseq writes (65535 bytes).
_NPY_MAGIC = b"\x93NUMPY"
_NPY_VERSION_1_0 = b"\x01\x00"
# numpy aligns the data of a .npy file to 64 bytes; so do we (and tf.data can
# use 64-byte-aligned buffers without copying).
_NPY_ALIGN = 64
# Row counts are int64 at most: reserve header room for the widest possible count.
MAX_ROWS = 2**63 - 1
# Every byte count (a row, a file) must fit an int64: numpy indexes and mmap offsets
# are int64, and a product that overflows would silently wrap around.
MAX_BYTES = 2**63 - 1
# numpy arrays have at most 64 dimensions; one of them is the row dimension.
MAX_ROW_DIMS = 63
# A .npy header memseq writes is at most 65535 bytes (version 1.0); numpy's own
# reader refuses headers above 10,000 bytes by default. Anything larger is refused
# before it is read or parsed.
MAX_NPY_HEADER_BYTES = 2**16 + 16


def _header_dict(dtype: np.dtype, shape: tuple[int, ...]) -> str:
    descr = np.lib.format.dtype_to_descr(dtype)
    return "{'descr': %r, 'fortran_order': False, 'shape': %r, }" % (descr, tuple(shape))


def npy_header(dtype: np.dtype, shape: tuple[int, ...], length: int | None = None) -> bytes:
    """Returns a .npy version 1.0 header for a C-order array.

    Args:
        dtype: The array's dtype.
        shape: The array's full shape.
        length: Total header length in bytes (a multiple of 64), to pad to; by
            default the shortest multiple of 64 that fits.

    Returns:
        The header bytes; the array data follows immediately.
    """
    text = _header_dict(dtype, shape)
    minimum = len(_NPY_MAGIC) + 2 + 2 + len(text) + 1
    if length is None:
        length = -(-minimum // _NPY_ALIGN) * _NPY_ALIGN
    if length < minimum or length % _NPY_ALIGN or length - 10 > 0xFFFF:
        raise ValueError(f"Cannot fit a .npy header of {minimum} bytes into {length} bytes.")
    body = text + " " * (length - minimum) + "\n"
    return _NPY_MAGIC + _NPY_VERSION_1_0 + struct.pack("<H", len(body)) + body.encode("latin1")


def reserved_header_length(dtype: np.dtype, row_shape: tuple[int, ...]) -> int:
    """Header length that fits any row count, so data can be written before the count is known."""
    return len(npy_header(dtype, (MAX_ROWS, *row_shape)))


def read_npy_header(f: BinaryIO, path: str) -> tuple[np.dtype, tuple[int, ...], int]:
    """Reads and checks a .npy header written by memseq (or by ``np.save``).

    The header is parsed here, not by numpy's reader, so that every malformed
    header gives one error: unbalanced brackets, absurd or negative shapes, a shape
    whose size overflows int64, a huge header length, an unknown dtype. At most
    ``MAX_NPY_HEADER_BYTES`` bytes are read.

    Args:
        f: The file, positioned at its start.
        path: Its path, for error messages.

    Returns:
        ``(dtype, shape, data_offset)``.

    Raises:
        FormatError: If the file is not a C-order .npy file of a supported version,
            or its header is malformed.
    """
    try:
        dtype, shape, fortran, offset = _parse_npy_header(f)
    except FormatError as e:
        raise FormatError(f"{path}: not a readable .npy file ({e}).") from e
    except OSError as e:
        raise _fs.os_error(e, path, "data file") from e
    if fortran:
        raise FormatError(f"{path}: Fortran-order .npy files are not supported; save C-order arrays.")
    return dtype, shape, offset


def _read_exactly(f: BinaryIO, n: int, what: str) -> bytes:
    data = f.read(n)
    if data is None or len(data) != n:
        raise FormatError(f"the file ends inside the {what}")
    return data


def _parse_npy_header(f: BinaryIO) -> tuple[np.dtype, tuple[int, ...], bool, int]:
    magic = _read_exactly(f, len(_NPY_MAGIC) + 2, "magic string")
    if magic[: len(_NPY_MAGIC)] != _NPY_MAGIC:
        raise FormatError(f"the magic string is {bounded_repr(magic[:len(_NPY_MAGIC)])}, not {_NPY_MAGIC!r}")
    version = (magic[-2], magic[-1])
    if version == (1, 0):
        (length,) = struct.unpack("<H", _read_exactly(f, 2, "header length"))
        prefix, encoding = len(magic) + 2, "latin1"
    elif version in ((2, 0), (3, 0)):
        (length,) = struct.unpack("<I", _read_exactly(f, 4, "header length"))
        prefix, encoding = len(magic) + 4, "latin1" if version == (2, 0) else "utf8"
    else:
        raise FormatError(f"unsupported .npy version {version}")
    if length > MAX_NPY_HEADER_BYTES:
        raise FormatError(f"the header claims {length} bytes; at most {MAX_NPY_HEADER_BYTES} are allowed")
    try:
        text = _read_exactly(f, length, "header").decode(encoding)
    except UnicodeDecodeError as e:
        raise FormatError(f"the header is not {encoding} text") from e
    if "\\" in text:
        # No header of a plain numeric array has one; escapes only make literal_eval warn.
        raise FormatError(f"the header contains a backslash: {bounded_repr(text.strip())}")
    try:
        header = ast.literal_eval(text)
    except (SyntaxError, ValueError, TypeError, MemoryError, RecursionError, Warning) as e:
        # Warning: invalid escapes warn while parsing, and raise when warnings are errors.
        raise FormatError(f"the header is not a Python literal: {bounded_repr(text.strip())}") from e
    if not isinstance(header, dict) or set(header) != {"descr", "shape", "fortran_order"}:
        raise FormatError(
            f"the header must be a dict with the keys 'descr', 'fortran_order' and 'shape'. Received: {bounded_repr(header)}"
        )
    shape, fortran, descr = header["shape"], header["fortran_order"], header["descr"]
    if not isinstance(fortran, bool):
        raise FormatError(f"'fortran_order' must be True or False. Received: {bounded_repr(fortran)}")
    if (
        not isinstance(shape, tuple)
        or len(shape) > MAX_ROW_DIMS + 1
        or not all(isinstance(d, int) and not isinstance(d, bool) and 0 <= d <= MAX_ROWS for d in shape)
    ):
        raise FormatError(f"'shape' must be a tuple of at most 64 ints >= 0. Received: {bounded_repr(shape)}")
    try:
        dtype = np.lib.format.descr_to_dtype(descr)
    except Exception as e:  # numpy raises TypeError, ValueError, SyntaxError, KeyError... for bad descrs
        if isinstance(e, MemseqError):
            raise
        raise FormatError(f"'descr' is not a dtype. Received: {bounded_repr(descr)}") from e
    if math.prod(shape) * dtype.itemsize > MAX_BYTES:
        raise FormatError(f"shape {bounded_repr(shape)} of {dtype} takes more than 2**63 - 1 bytes")
    return dtype, shape, fortran, prefix + length



def has_npy_magic(head: bytes) -> bool:
    """Whether ``head`` (the first bytes of a file) starts with the ``.npy`` magic string."""
    return head.startswith(_NPY_MAGIC)
