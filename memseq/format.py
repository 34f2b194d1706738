"""The memseq on-disk format, version 1: specification, reading and writing.

Goals
-----
A dataset must be readable by plain numpy, describe itself completely (no dtype
or shape kept in anybody's head), be safe to open from untrusted directories, and
be written atomically so that a crash never leaves something that opens with
wrong contents.

Layout
------
A dataset is a directory::

    train/
      memseq.json          the manifest (written last)
      image.npy            one standard .npy file per field and shard
      label.npy

A dataset written in several shards keeps each shard in a sub-directory::

    train/
      memseq.json
      shard-00000/image.npy
      shard-00000/label.npy
      shard-00001/...

The reader presents the shards as one table: shard 0's rows first, then shard 1's.

Data files
----------
Each data file is a ``.npy`` file, format version 1.0 (``np.load(path,
mmap_mode="r")`` opens it), C order, whose shape is ``(rows_in_shard,
*row_shape)``. The header dictionary may be padded with spaces beyond numpy's usual
64-byte alignment: the streaming writer reserves room for any row count up front
and fills the real count in when it commits. The data start at a multiple of 64
bytes. The file size must equal ``header_length + rows * row_nbytes`` exactly.

Manifest
--------
``memseq.json`` is a UTF-8 JSON object::

    {
      "format": "memseq",              # always this string
      "version": 1,                    # integer major version, see below
      "num_rows": 1000,                # sum of the shards' num_rows
      "fields": {
        "image": {"dtype": "|u1", "shape": [64, 64, 3], "layout": "fixed"},
        "label": {"dtype": "<i8", "shape": [], "layout": "fixed"}
      },
      "shards": [
        {
          "num_rows": 1000,
          "files": {
            "image": {"path": "image.npy", "checksum": "crc32:1c291ca3"},
            "label": {"path": "label.npy", "checksum": "crc32:0b5e2c91"}
          }
        }
      ]
    }

- ``dtype`` is numpy's ``dtype.str`` (byte order, kind, item size). Only bool,
  signed and unsigned integers, floats and complex numbers are allowed: never
  objects, strings or structured records.
- ``shape`` is the shape of one row; ``[]`` for scalar rows.
- ``layout`` is ``"fixed"`` (every row has ``shape``). The value ``"ragged"`` is
  reserved for variable-length fields stored flat with an int64 offsets array;
  this version refuses it.
- ``path`` is relative to the dataset directory, uses ``/`` separators, and must
  stay inside the directory: absolute paths, ``..`` components and symlinks that
  resolve outside the directory are refused.
- ``checksum`` is ``"crc32:"`` followed by eight lowercase hex digits: the CRC-32
  (zlib) of the file's data bytes, that is everything after the ``.npy`` header.
  The header itself is checked field by field on open instead. CRC-32 detects
  corruption (it is no defence against tampering) and runs at several GB/s.
  Unknown keys are refused, so that a misspelt key never goes unnoticed.

Version policy
--------------
``version`` is a single integer. A reader refuses any version it does not know,
newer or older, with a message that says which versions it reads. Additions that
older readers could misread bump the version.
"""

from __future__ import annotations

import dataclasses
import json
import os
import re
import struct
from typing import Any, BinaryIO, Mapping

import numpy as np

from memseq.errors import DatasetNotFoundError, FormatError, SchemaError, UnsafePathError

__all__ = [
    "MANIFEST_NAME",
    "FORMAT_NAME",
    "FORMAT_VERSION",
    "SUPPORTED_VERSIONS",
    "FieldSpec",
    "FileEntry",
    "ShardSpec",
    "Manifest",
    "field_spec",
    "check_field_name",
    "check_dtype",
    "read_manifest",
    "manifest_to_json",
    "resolve_inside",
    "npy_header",
    "reserved_header_length",
    "read_npy_header",
    "format_checksum",
]

MANIFEST_NAME = "memseq.json"
FORMAT_NAME = "memseq"
FORMAT_VERSION = 1
SUPPORTED_VERSIONS = (1,)

# The .npy magic string and the version (1, 0) we write: a 2-byte little-endian
# header length, enough for any header memseq writes (65535 bytes).
_NPY_MAGIC = b"\x93NUMPY"
_NPY_VERSION_1_0 = b"\x01\x00"
# numpy aligns the data of a .npy file to 64 bytes; so do we (and tf.data can
# use 64-byte-aligned buffers without copying).
_NPY_ALIGN = 64
# Row counts are int64 at most: reserve header room for the widest possible count.
_MAX_ROWS = 2**63 - 1
# A manifest larger than this is not one we wrote: refuse before parsing it.
_MAX_MANIFEST_BYTES = 64 * 2**20
# Field names become file names: keep them portable and free of path syntax.
_FIELD_NAME_RE = re.compile(r"^[A-Za-z0-9_][A-Za-z0-9_.\-]{0,127}$")
_CHECKSUM_RE = re.compile(r"^crc32:[0-9a-f]{8}$")
_ALLOWED_KINDS = "biufc"


@dataclasses.dataclass(frozen=True)
class FieldSpec:
    """The type of one field: a dtype and the shape of one row.

    Attributes:
        name: The field name (also the data file's stem).
        dtype: The numpy dtype of the elements.
        shape: The shape of one row; ``()`` for scalar rows.
    """

    name: str
    dtype: np.dtype
    shape: tuple[int, ...]

    @property
    def row_nbytes(self) -> int:
        """Bytes per row."""
        return int(self.dtype.itemsize * int(np.prod(self.shape, dtype=np.int64)))

    def to_json(self) -> dict[str, Any]:
        """The manifest entry for this field."""
        return {"dtype": self.dtype.str, "shape": list(self.shape), "layout": "fixed"}


@dataclasses.dataclass(frozen=True)
class FileEntry:
    """One data file of a shard: its path relative to the dataset and its checksum."""

    path: str
    checksum: str

    def to_json(self) -> dict[str, Any]:
        """The manifest entry for this file."""
        return {"path": self.path, "checksum": self.checksum}


@dataclasses.dataclass(frozen=True)
class ShardSpec:
    """One shard: its row count and one file per field."""

    num_rows: int
    files: Mapping[str, FileEntry]

    def to_json(self) -> dict[str, Any]:
        """The manifest entry for this shard."""
        return {
            "num_rows": self.num_rows,
            "files": {name: entry.to_json() for name, entry in self.files.items()},
        }


@dataclasses.dataclass(frozen=True)
class Manifest:
    """A parsed, validated ``memseq.json``."""

    num_rows: int
    fields: Mapping[str, FieldSpec]
    shards: tuple[ShardSpec, ...]

    def to_json(self) -> dict[str, Any]:
        """The manifest as a JSON-ready dict."""
        return {
            "format": FORMAT_NAME,
            "version": FORMAT_VERSION,
            "num_rows": self.num_rows,
            "fields": {name: spec.to_json() for name, spec in self.fields.items()},
            "shards": [shard.to_json() for shard in self.shards],
        }


def check_field_name(name: Any) -> str:
    """Returns ``name`` if it is a valid field name.

    Raises:
        SchemaError: If it is not a string of letters, digits, ``_``, ``.`` and
            ``-`` (not starting with ``.`` or ``-``, at most 128 characters).
    """
    if not isinstance(name, str) or not _FIELD_NAME_RE.match(name):
        raise SchemaError(
            "Field names must be 1-128 letters, digits, '_', '.' or '-', not starting "
            f"with '.' or '-'. Received: {name!r}"
        )
    return name


def check_dtype(dtype: Any, *, field: str) -> np.dtype:
    """Returns ``dtype`` as a numpy dtype if memseq can store it.

    Raises:
        SchemaError: For object, string, structured, datetime and other dtypes
            that are not bool or numeric.
    """
    try:
        dt = np.dtype(dtype)
    except (TypeError, ValueError, SyntaxError) as e:
        # numpy parses comma-separated dtype strings with ast: "i4,(" is a SyntaxError.
        raise SchemaError(f"Field {field!r}: not a dtype. Received: {dtype!r}") from e
    if dt.kind not in _ALLOWED_KINDS or dt.fields is not None or dt.subdtype is not None:
        raise SchemaError(
            f"Field {field!r}: memseq stores bool and numeric dtypes only "
            f"(no objects, strings or records). Received dtype: {dt!r}"
        )
    return dt


def field_spec(name: str, dtype: Any, shape: Any) -> FieldSpec:
    """Builds a validated :class:`FieldSpec`.

    Args:
        name: The field name.
        dtype: Anything ``np.dtype`` accepts (bool or numeric).
        shape: The row shape: a tuple of non-negative ints, or an int.

    Returns:
        The field spec.

    Raises:
        SchemaError: If the name, dtype or shape is invalid.

    Example:
        >>> field_spec("image", "uint8", (64, 64, 3)).row_nbytes
        12288
    """
    check_field_name(name)
    dt = check_dtype(dtype, field=name)
    if isinstance(shape, (int, np.integer)) and not isinstance(shape, bool):
        shape = (shape,)
    try:
        dims = tuple(shape)
    except TypeError as e:
        raise SchemaError(f"Field {name!r}: row shape must be a tuple of ints. Received: {shape!r}") from e
    for d in dims:
        if isinstance(d, bool) or not isinstance(d, (int, np.integer)) or d < 0:
            raise SchemaError(
                f"Field {name!r}: row shape must be a tuple of non-negative ints. Received: {shape!r}"
            )
    return FieldSpec(name, dt, tuple(int(d) for d in dims))


# --------------------------------------------------------------------------- manifest


def _expect(obj: Any, key: str, kind: type | tuple[type, ...], where: str, path: str) -> Any:
    if not isinstance(obj, dict) or key not in obj:
        raise FormatError(f"{path}: {where} is missing the key {key!r}.")
    value = obj[key]
    # bool is an int subclass; JSON true/false must never pass as a number.
    if isinstance(value, bool) and bool not in (kind if isinstance(kind, tuple) else (kind,)):
        raise FormatError(f"{path}: {where}[{key!r}] has the wrong type. Received: {value!r}")
    if not isinstance(value, kind):
        raise FormatError(f"{path}: {where}[{key!r}] has the wrong type. Received: {value!r}")
    return value


def _no_unknown_keys(obj: dict, allowed: set[str], where: str, path: str) -> None:
    unknown = sorted(set(obj) - allowed)
    if unknown:
        raise FormatError(f"{path}: {where} has unknown keys {unknown}; allowed: {sorted(allowed)}.")


def _count(obj: dict, key: str, where: str, path: str) -> int:
    value = _expect(obj, key, int, where, path)
    if value < 0:
        raise FormatError(f"{path}: {where}[{key!r}] must be >= 0. Received: {value!r}")
    return value


def resolve_inside(directory: str, relative: str, *, manifest: str) -> str:
    """Returns the real path of ``relative`` if it stays inside ``directory``.

    Args:
        directory: The dataset directory.
        relative: A path from the manifest.
        manifest: The manifest's path, for error messages.

    Returns:
        The absolute, symlink-free path of the file.

    Raises:
        UnsafePathError: If ``relative`` is absolute, contains ``..`` or a
            backslash, or resolves outside ``directory`` through symlinks.
    """
    if not relative or "\\" in relative or "\x00" in relative or relative.startswith("/") or os.path.isabs(relative):
        raise UnsafePathError(
            f"{manifest}: file paths must be relative to the dataset directory. Received: {relative!r}"
        )
    if any(part in ("..", "") for part in relative.split("/")):
        raise UnsafePathError(
            f"{manifest}: file paths must not contain '..' or empty components. Received: {relative!r}"
        )
    root = os.path.realpath(directory)
    target = os.path.realpath(os.path.join(root, relative))
    if os.path.commonpath([root, target]) != root:
        raise UnsafePathError(
            f"{manifest}: {relative!r} resolves to {target!r}, outside the dataset directory {root!r}."
        )
    return target


def read_manifest(directory: str) -> Manifest:
    """Reads and strictly validates ``directory/memseq.json``.

    Args:
        directory: The dataset directory.

    Returns:
        The validated manifest.

    Raises:
        DatasetNotFoundError: If the manifest does not exist.
        FormatError: If it is not valid JSON, has the wrong format name or an
            unsupported version, misses keys, has wrong types or unknown keys.
        UnsafePathError: If a file path leaves the dataset directory.
    """
    path = os.path.join(directory, MANIFEST_NAME)
    try:
        with open(path, "rb") as f:
            raw = f.read(_MAX_MANIFEST_BYTES + 1)
    except (FileNotFoundError, NotADirectoryError) as e:
        if os.path.exists(directory) and not os.path.isdir(directory):
            raise DatasetNotFoundError(
                f"No memseq dataset at {directory!r}: it is a file; a dataset is a directory with a {MANIFEST_NAME}."
            ) from e
        if not os.path.isdir(directory):
            raise DatasetNotFoundError(f"No memseq dataset at {directory!r}: no such directory.") from e
        raise DatasetNotFoundError(
            f"{directory!r} is not a memseq dataset (or its write never committed): {MANIFEST_NAME} is missing."
        ) from e
    except IsADirectoryError as e:
        raise FormatError(f"{path}: is a directory, not a memseq manifest.") from e
    if len(raw) > _MAX_MANIFEST_BYTES:
        raise FormatError(f"{path}: larger than {_MAX_MANIFEST_BYTES} bytes; not a memseq manifest.")
    try:
        doc = json.loads(raw.decode("utf-8"))
    except (UnicodeDecodeError, json.JSONDecodeError) as e:
        raise FormatError(f"{path}: not valid UTF-8 JSON ({e}).") from e
    if not isinstance(doc, dict):
        raise FormatError(f"{path}: the manifest must be a JSON object. Received: {type(doc).__name__}")
    fmt = doc.get("format")
    if fmt != FORMAT_NAME:
        raise FormatError(f"{path}: 'format' must be {FORMAT_NAME!r}. Received: {fmt!r}")
    version = _expect(doc, "version", int, "manifest", path)
    if version not in SUPPORTED_VERSIONS:
        newer = version > max(SUPPORTED_VERSIONS)
        raise FormatError(
            f"{path}: format version {version} is not supported; this memseq reads "
            f"version(s) {list(SUPPORTED_VERSIONS)}."
            + (" The dataset was written by a newer memseq: upgrade memseq." if newer else "")
        )
    _no_unknown_keys(doc, {"format", "version", "num_rows", "fields", "shards"}, "manifest", path)
    num_rows = _count(doc, "num_rows", "manifest", path)

    fields: dict[str, FieldSpec] = {}
    for name, entry in _expect(doc, "fields", dict, "manifest", path).items():
        where = f"fields[{name!r}]"
        if not isinstance(entry, dict):
            raise FormatError(f"{path}: {where} must be an object. Received: {entry!r}")
        _no_unknown_keys(entry, {"dtype", "shape", "layout"}, where, path)
        layout = _expect(entry, "layout", str, where, path)
        if layout != "fixed":
            raise FormatError(
                f"{path}: {where} has layout {layout!r}; this memseq reads only 'fixed' "
                "(variable-length 'ragged' fields are planned, not yet supported)."
            )
        dtype_str = _expect(entry, "dtype", str, where, path)
        shape = _expect(entry, "shape", list, where, path)
        try:
            dtype = np.dtype(dtype_str)
        except (TypeError, ValueError, SyntaxError) as e:
            raise FormatError(f"{path}: {where}['dtype'] is not a dtype. Received: {dtype_str!r}") from e
        try:
            fields[name] = field_spec(name, dtype, shape)
        except SchemaError as e:
            raise FormatError(f"{path}: {e}") from e
    if not fields:
        raise FormatError(f"{path}: the manifest has no fields.")

    shards: list[ShardSpec] = []
    for i, shard in enumerate(_expect(doc, "shards", list, "manifest", path)):
        where = f"shards[{i}]"
        if not isinstance(shard, dict):
            raise FormatError(f"{path}: {where} must be an object. Received: {shard!r}")
        _no_unknown_keys(shard, {"num_rows", "files"}, where, path)
        rows = _count(shard, "num_rows", where, path)
        files_doc = _expect(shard, "files", dict, where, path)
        if set(files_doc) != set(fields):
            raise FormatError(
                f"{path}: {where}['files'] must name exactly the fields {sorted(fields)}. "
                f"Received: {sorted(files_doc)}"
            )
        files: dict[str, FileEntry] = {}
        for name in fields:
            fwhere = f"{where}['files'][{name!r}]"
            entry = files_doc[name]
            if not isinstance(entry, dict):
                raise FormatError(f"{path}: {fwhere} must be an object. Received: {entry!r}")
            _no_unknown_keys(entry, {"path", "checksum"}, fwhere, path)
            rel = _expect(entry, "path", str, fwhere, path)
            checksum = _expect(entry, "checksum", str, fwhere, path)
            if not _CHECKSUM_RE.match(checksum):
                raise FormatError(
                    f"{path}: {fwhere}['checksum'] must look like 'crc32:0123abcd'. Received: {checksum!r}"
                )
            resolve_inside(directory, rel, manifest=path)
            files[name] = FileEntry(rel, checksum)
        shards.append(ShardSpec(rows, files))
    total = sum(s.num_rows for s in shards)
    if total != num_rows:
        raise FormatError(f"{path}: 'num_rows' is {num_rows} but the shards hold {total} rows.")
    return Manifest(num_rows, fields, tuple(shards))


def manifest_to_json(manifest: Manifest) -> str:
    """Serialises a manifest the way memseq writes it (indented, final newline).

    Keys keep their order: the fixed order of :meth:`Manifest.to_json`, and fields
    in the order they were declared, which is the order a Dataset lists them in.
    """
    return json.dumps(manifest.to_json(), indent=2) + "\n"


def format_checksum(crc: int) -> str:
    """Formats a CRC-32 value as a manifest checksum string, e.g. ``'crc32:0000abcd'``."""
    return f"crc32:{crc & 0xFFFFFFFF:08x}"


# --------------------------------------------------------------------------- .npy headers


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
    return len(npy_header(dtype, (_MAX_ROWS, *row_shape)))


def read_npy_header(f: BinaryIO, path: str) -> tuple[np.dtype, tuple[int, ...], int]:
    """Reads and checks a .npy header written by memseq (or by ``np.save``).

    Args:
        f: The file, positioned at its start.
        path: Its path, for error messages.

    Returns:
        ``(dtype, shape, data_offset)``.

    Raises:
        FormatError: If the file is not a C-order .npy file of a supported version.
    """
    try:
        major, minor = np.lib.format.read_magic(f)
        if (major, minor) == (1, 0):
            shape, fortran, dtype = np.lib.format.read_array_header_1_0(f)
        elif (major, minor) in ((2, 0), (3, 0)):
            shape, fortran, dtype = np.lib.format.read_array_header_2_0(f)
        else:
            raise ValueError(f"unsupported .npy version {(major, minor)}")
    except (ValueError, SyntaxError, struct.error, EOFError, OSError) as e:
        raise FormatError(f"{path}: not a readable .npy file ({e}).") from e
    if fortran:
        raise FormatError(f"{path}: Fortran-order .npy files are not supported; save C-order arrays.")
    return dtype, tuple(shape), f.tell()




# --------------------------------------------------------------------------- shard layout
# One rule for Writer and convert, so both write the same files for the same rows.

__all__ += ["check_shard_rows", "shard_layout", "shard_directory", "shard_file", "has_npy_magic"]


def check_shard_rows(shard_rows: Any) -> int | None:
    """Returns ``shard_rows`` if it is a positive int or None; else raises SchemaError."""
    if shard_rows is not None and (isinstance(shard_rows, bool) or not isinstance(shard_rows, int) or shard_rows < 1):
        raise SchemaError(f"shard_rows must be a positive int or None. Received: {shard_rows!r}")
    return shard_rows


def shard_layout(num_rows: int, shard_rows: int | None, first_row: int = 0) -> list[tuple[int, int, int]]:
    """Which shard holds which rows: ``(shard, start, stop)`` pieces of rows ``[first_row, num_rows)``.

    Shard ``k`` holds rows ``[k * shard_rows, (k + 1) * shard_rows)``; without
    ``shard_rows`` shard 0 holds every row. A table without rows has one empty shard
    0. A streaming writer passes the rows written so far as ``first_row``.

    Example:
        >>> shard_layout(5, 2)
        [(0, 0, 2), (1, 2, 4), (2, 4, 5)]
    """
    if num_rows == 0:
        return [(0, 0, 0)]
    if shard_rows is None:
        return [(0, first_row, num_rows)] if first_row < num_rows else []
    pieces = []
    start = first_row
    while start < num_rows:
        shard = start // shard_rows
        stop = min(num_rows, (shard + 1) * shard_rows)
        pieces.append((shard, start, stop))
        start = stop
    return pieces


def shard_directory(shard: int, shard_rows: int | None) -> str:
    """The sub-directory of shard ``shard`` (``"shard-00000"``), or ``""`` when unsharded."""
    return "" if shard_rows is None else f"shard-{shard:05d}"


def shard_file(shard: int, field: str, shard_rows: int | None) -> str:
    """The manifest path (relative, ``/``-separated) of ``field``'s file in shard ``shard``."""
    directory = shard_directory(shard, shard_rows)
    return f"{directory}/{field}.npy" if directory else f"{field}.npy"


def has_npy_magic(head: bytes) -> bool:
    """Whether ``head`` (the first bytes of a file) starts with the ``.npy`` magic string."""
    return head.startswith(_NPY_MAGIC)
