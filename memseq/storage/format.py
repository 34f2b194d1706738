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
- ``layout`` is ``"fixed"`` (every row has ``shape``) or ``"ragged"`` (a
  variable-length field, see below). Manifests without ragged fields are exactly
  what memseq wrote before ragged fields existed.
- ``path`` is relative to the dataset directory, uses ``/`` separators, and must
  stay inside the directory: absolute paths, ``..`` components and symlinks that
  resolve outside the directory are refused.
- ``checksum`` is ``"crc32:"`` followed by eight lowercase hex digits: the CRC-32
  (zlib) of the file's data bytes, that is everything after the ``.npy`` header.
  The header itself is checked field by field on open instead. CRC-32 detects
  corruption (it is no defence against tampering) and runs at several GB/s.
  Unknown keys are refused, so that a misspelt key never goes unnoticed.

Variable-length (ragged) fields
-------------------------------
A field whose rows differ in length (token sequences, audio) has ``"layout":
"ragged"`` and ``null`` as the first entry of its shape: ``"shape": [null]`` for
1-D rows, ``"shape": [null, 80]`` for rows of 80-band frames. Each shard stores it
in two ``.npy`` files: the *values* of all its rows, concatenated, of shape
``(num_values, *trailing)``, and an int64 *offsets* file of shape
``(num_rows + 1,)``, where row ``i`` of the shard is ``values[offsets[i]:offsets[i+1]]``.
Its file entry names both and the number of values::

    "tokens": {"path": "tokens.npy", "checksum": "crc32:...", "num_values": 51234,
               "offsets": {"path": "tokens.offsets.npy", "checksum": "crc32:..."}}

Offsets must start at 0, never decrease, and end at ``num_values``. Opening checks
the offsets file's dtype (``<i8``), shape, first and last value (two reads); every
read checks the offsets it uses; ``Dataset.verify()`` checks them all. A violation is
a :class:`~memseq.CorruptFileError`, never a read outside the values.

Version policy
--------------
``version`` is a single integer. A reader refuses any version it does not know,
newer or older, with a message that says which versions it reads. Additions that
older readers could misread bump the version.

Code
----
This module holds the manifest: its schema, reading, validation and writing. The
``.npy`` headers live in :mod:`memseq.storage.npy` and the shard layout in
:mod:`memseq.storage.layout`; their public functions are re-exported here.
"""

from __future__ import annotations

import dataclasses
import json
import math
import os
import re
import stat
from typing import Any, Mapping

import numpy as np

from memseq.errors import (
    DatasetNotFoundError,
    FormatError,
    SchemaError,
    UnsafePathError,
)
from memseq.storage import files as _fs
from memseq.storage.layout import (
    check_shard_rows,
    shard_directory,
    shard_file,
    shard_layout,
)
from memseq.storage.manifest_json import count as _count
from memseq.storage.manifest_json import expect as _expect
from memseq.storage.manifest_json import json_object as _object
from memseq.storage.manifest_json import no_unknown_keys as _no_unknown_keys
from memseq.storage.npy import (
    MAX_BYTES,
    MAX_ROW_DIMS,
    has_npy_magic,
    npy_header,
    read_npy_header,
    reserved_header_length,
)
from memseq.util.checks import bounded_repr

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
    "format_checksum",
    # Re-exported from memseq.storage.npy (the .npy headers) and memseq.storage.layout (the shard layout):
    "npy_header",
    "reserved_header_length",
    "read_npy_header",
    "has_npy_magic",
    "check_shard_rows",
    "shard_layout",
    "shard_directory",
    "shard_file",
]

MANIFEST_NAME = "memseq.json"
FORMAT_NAME = "memseq"
FORMAT_VERSION = 1
SUPPORTED_VERSIONS = (1,)

# A manifest larger than this is not one we wrote: refuse it while reading, never
# reading more than this (plus one byte) from it.
_MAX_MANIFEST_BYTES = 64 * 2**20
# JSON integers longer than this cannot be an int64 (19 digits and a sign): refused
# before Python converts them (a million-digit int takes quadratic time to parse).
_MAX_INT_CHARS = 20
# Field names become file names: keep them portable and free of path syntax.
# (Matched with fullmatch: "$" would also accept a trailing newline.)
_FIELD_NAME_RE = re.compile(r"[A-Za-z0-9_][A-Za-z0-9_.\-]{0,127}")
_CHECKSUM_RE = re.compile(r"crc32:[0-9a-f]{8}")
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
    shape: tuple[Any, ...]

    @property
    def ragged(self) -> bool:
        """Whether rows vary in length (``shape[0] is None``)."""
        return bool(self.shape) and self.shape[0] is None

    @property
    def value_shape(self) -> tuple[int, ...]:
        """The shape of one element along the row: ``shape[1:]`` if ragged, else ``shape``."""
        return tuple(self.shape[1:]) if self.ragged else tuple(self.shape)

    @property
    def row_nbytes(self) -> int:
        """Bytes per row; for a ragged field, bytes per value (one step along the row)."""
        return int(self.dtype.itemsize * int(np.prod(self.value_shape, dtype=np.int64)))

    def to_json(self) -> dict[str, Any]:
        """The manifest entry for this field."""
        return {"dtype": self.dtype.str, "shape": list(self.shape), "layout": "ragged" if self.ragged else "fixed"}


@dataclasses.dataclass(frozen=True)
class FileEntry:
    """One data file of a shard: its path relative to the dataset and its checksum."""

    path: str
    checksum: str
    # Ragged fields only: the number of values and the offsets file.
    num_values: int | None = None
    offsets: "FileEntry | None" = None

    def to_json(self) -> dict[str, Any]:
        """The manifest entry for this file."""
        entry: dict[str, Any] = {"path": self.path, "checksum": self.checksum}
        if self.offsets is not None:
            entry["num_values"] = self.num_values
            entry["offsets"] = self.offsets.to_json()
        return entry


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
    if not isinstance(name, str) or not _FIELD_NAME_RE.fullmatch(name):
        raise SchemaError(
            "Field names must be 1-128 letters, digits, '_', '.' or '-', not starting "
            f"with '.' or '-'. Received: {bounded_repr(name)}"
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
    except (TypeError, ValueError, SyntaxError, RecursionError, MemoryError) as e:
        # numpy parses comma-separated dtype strings with ast: "i4,(" is a SyntaxError.
        raise SchemaError(f"Field {bounded_repr(field)}: not a dtype. Received: {bounded_repr(dtype)}") from e
    if dt.kind not in _ALLOWED_KINDS or dt.fields is not None or dt.subdtype is not None:
        raise SchemaError(
            f"Field {bounded_repr(field)}: memseq stores bool and numeric dtypes only "
            f"(no objects, strings or records). Received dtype: {bounded_repr(dt)}"
        )
    return dt


def field_spec(name: str, dtype: Any, shape: Any) -> FieldSpec:
    """Builds a validated :class:`FieldSpec`.

    Args:
        name: The field name.
        dtype: Anything ``np.dtype`` accepts (bool or numeric).
        shape: The row shape: a tuple of non-negative ints, or an int. A ``None``
            first dimension makes a variable-length (ragged) field: ``(None,)``,
            ``(None, 80)``.

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
        raise SchemaError(f"Field {name!r}: row shape must be a tuple of ints. Received: {bounded_repr(shape)}") from e
    ragged = bool(dims) and dims[0] is None
    for d in dims[1:] if ragged else dims:
        if isinstance(d, bool) or not isinstance(d, (int, np.integer)) or d < 0:
            raise SchemaError(
                f"Field {name!r}: row shape must be a tuple of non-negative ints. Received: {bounded_repr(shape)}"
            )
    if len(dims) > MAX_ROW_DIMS:
        raise SchemaError(f"Field {name!r}: a row has at most {MAX_ROW_DIMS} dimensions. Received {len(dims)}.")
    dims = (None,) * ragged + tuple(int(d) for d in dims[ragged:])
    # Python ints: a numpy int64 product would wrap around silently.
    if math.prod(dims[ragged:]) * dt.itemsize > MAX_BYTES:
        raise SchemaError(
            f"Field {name!r}: one row of shape {bounded_repr(dims)} and dtype {dt} would take more than "
            f"2**63 - 1 bytes. Received shape: {bounded_repr(dims)}"
        )
    return FieldSpec(name, dt, dims)


# --------------------------------------------------------------------------- manifest


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
            f"{manifest}: file paths must be relative to the dataset directory. Received: {bounded_repr(relative)}"
        )
    if any(part in ("..", "") for part in relative.split("/")):
        raise UnsafePathError(
            f"{manifest}: file paths must not contain '..' or empty components. Received: {bounded_repr(relative)}"
        )
    try:
        os.fsencode(relative)
    except UnicodeEncodeError:
        raise UnsafePathError(
            f"{manifest}: file path cannot be encoded for the filesystem. Received: {bounded_repr(relative)}"
        ) from None
    try:
        root = os.path.realpath(directory)
        target = os.path.realpath(os.path.join(root, relative))
    except (OSError, ValueError) as e:  # realpath is lenient; stay safe if it is not
        raise UnsafePathError(f"{manifest}: cannot resolve {bounded_repr(relative)} ({bounded_repr(str(e))}).") from e
    if os.path.commonpath([root, target]) != root:
        raise UnsafePathError(
            f"{manifest}: {bounded_repr(relative)} resolves to {bounded_repr(target)}, outside the dataset directory "
            f"{bounded_repr(root)}."
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
    raw = read_manifest_bytes(directory)
    return parse_manifest(raw, directory)


def read_manifest_bytes(directory: str) -> bytes:
    """The bytes of ``directory/memseq.json``, read safely.

    The manifest must be a regular file (a FIFO or ``/dev/zero`` in its place is
    refused before it is opened) and is read up to its size limit, never further.

    Raises:
        DatasetNotFoundError: If the directory or the manifest does not exist.
        NotRegularFileError: If the manifest is a FIFO, socket, device or directory.
        FormatError: If it is larger than the limit.
        DatasetPermissionError, FileAccessError: For other OS failures.
    """
    path = os.path.join(directory, MANIFEST_NAME)
    try:
        fd, _ = _fs.open_regular(path, "manifest")
    except DatasetNotFoundError as e:
        try:
            st = os.stat(directory)
        except (OSError, ValueError):
            raise DatasetNotFoundError(
                f"No memseq dataset at {bounded_repr(directory)}: no such directory.", errno=e.errno, filename=directory
            ) from e
        if not stat.S_ISDIR(st.st_mode):
            raise DatasetNotFoundError(
                f"No memseq dataset at {bounded_repr(directory)}: it is "
                f"{'a file' if stat.S_ISREG(st.st_mode) else _fs.describe_mode(st.st_mode)}"
                f"; a dataset is a directory with a {MANIFEST_NAME}.",
                errno=e.errno,
                filename=directory,
            ) from e
        raise DatasetNotFoundError(
            f"{bounded_repr(directory)} is not a memseq dataset (or its write never committed): {MANIFEST_NAME} is missing.",
            errno=e.errno,
            filename=path,
        ) from e
    try:
        raw = _fs.read_at_most(fd, _MAX_MANIFEST_BYTES, path, "manifest")
    finally:
        os.close(fd)
    if len(raw) > _MAX_MANIFEST_BYTES:
        raise FormatError(f"{path}: larger than {_MAX_MANIFEST_BYTES} bytes; not a memseq manifest.")
    return raw


def _parse_int(text: str) -> int:
    if len(text) > _MAX_INT_CHARS:
        raise FormatError(f"an integer of {len(text)} digits cannot be an int64. Received: {bounded_repr(text)}")
    return int(text)


def _parse_constant(text: str) -> float:
    raise FormatError(f"{text} is not valid JSON.")


def parse_manifest(raw: bytes, directory: str) -> Manifest:
    """Parses and strictly validates the bytes of a manifest (see :func:`read_manifest`)."""
    path = os.path.join(directory, MANIFEST_NAME)
    doc = _load_document(raw, path)
    _no_unknown_keys(doc, {"format", "version", "num_rows", "fields", "shards"}, "manifest", path)
    num_rows = _count(doc, "num_rows", "manifest", path)
    fields = _parse_fields(_expect(doc, "fields", dict, "manifest", path), path)
    shards = [
        _parse_shard(shard, f"shards[{i}]", fields, directory, path)
        for i, shard in enumerate(_expect(doc, "shards", list, "manifest", path))
    ]
    total = sum(s.num_rows for s in shards)
    if total != num_rows:
        raise FormatError(f"{path}: 'num_rows' is {num_rows} but the shards hold {total} rows.")
    return Manifest(num_rows, fields, tuple(shards))


def _load_document(raw: bytes, path: str) -> dict:
    """The manifest's JSON object, once its format name and version are checked."""
    try:
        doc = json.loads(raw.decode("utf-8"), parse_int=_parse_int, parse_constant=_parse_constant)
    except FormatError as e:
        raise FormatError(f"{path}: {e}") from e
    except (UnicodeDecodeError, ValueError) as e:  # json.JSONDecodeError is a ValueError
        raise FormatError(f"{path}: not valid UTF-8 JSON ({bounded_repr(str(e))}).") from e
    except RecursionError as e:
        raise FormatError(f"{path}: nested too deeply to be a memseq manifest.") from e
    if not isinstance(doc, dict):
        raise FormatError(f"{path}: the manifest must be a JSON object. Received: {type(doc).__name__}")
    fmt = doc.get("format")
    if fmt != FORMAT_NAME:
        raise FormatError(f"{path}: 'format' must be {FORMAT_NAME!r}. Received: {bounded_repr(fmt)}")
    version = _expect(doc, "version", int, "manifest", path)
    if version not in SUPPORTED_VERSIONS:
        newer = version > max(SUPPORTED_VERSIONS)
        raise FormatError(
            f"{path}: format version {version} is not supported; this memseq reads "
            f"version(s) {list(SUPPORTED_VERSIONS)}."
            + (" The dataset was written by a newer memseq: upgrade memseq." if newer else "")
        )
    return doc


def _parse_fields(fields_doc: dict, path: str) -> dict[str, FieldSpec]:
    fields: dict[str, FieldSpec] = {}
    for name, entry in fields_doc.items():
        where = f"fields[{bounded_repr(name)}]"
        _object(entry, {"dtype", "shape", "layout"}, where, path)
        layout = _expect(entry, "layout", str, where, path)
        if layout not in ("fixed", "ragged"):
            raise FormatError(
                f"{path}: {where} has layout {bounded_repr(layout)}; this memseq reads 'fixed' and 'ragged'."
            )
        dtype_str = _expect(entry, "dtype", str, where, path)
        shape = _expect(entry, "shape", list, where, path)
        if (layout == "ragged") != (bool(shape) and shape[0] is None):
            raise FormatError(
                f"{path}: {where}: a 'ragged' field has null as the first dimension of its shape, a 'fixed' one "
                f"has none. Received: layout {layout!r}, shape {bounded_repr(shape)}"
            )
        try:
            dtype = np.dtype(dtype_str)
        except (TypeError, ValueError, SyntaxError, RecursionError, MemoryError) as e:
            raise FormatError(f"{path}: {where}['dtype'] is not a dtype. Received: {bounded_repr(dtype_str)}") from e
        try:
            fields[name] = field_spec(name, dtype, shape)
        except SchemaError as e:
            raise FormatError(f"{path}: {e}") from e
    if not fields:
        raise FormatError(f"{path}: the manifest has no fields.")
    return fields


def _parse_shard(shard: Any, where: str, fields: dict[str, FieldSpec], directory: str, path: str) -> ShardSpec:
    _object(shard, {"num_rows", "files"}, where, path)
    rows = _count(shard, "num_rows", where, path)
    files_doc = _expect(shard, "files", dict, where, path)
    if set(files_doc) != set(fields):
        raise FormatError(
            f"{path}: {where}['files'] must name exactly the fields {bounded_repr(sorted(fields))}. "
            f"Received: {bounded_repr(sorted(files_doc))}"
        )
    files: dict[str, FileEntry] = {}
    for name, spec in fields.items():
        fwhere = f"{where}['files'][{name!r}]"
        if spec.ragged:
            files[name] = _parse_ragged_entry(files_doc[name], fwhere, spec, rows, directory, path)
            continue
        if rows * spec.row_nbytes > MAX_BYTES:
            raise FormatError(
                f"{path}: {where} holds {rows} rows of field {name!r} ({spec.row_nbytes} bytes each): "
                "more than 2**63 - 1 bytes."
            )
        entry = _object(files_doc[name], {"path", "checksum"}, fwhere, path)
        files[name] = _parse_file_entry(entry, fwhere, directory, path)
    return ShardSpec(rows, files)


def _parse_file_entry(entry: dict, where: str, directory: str, path: str) -> FileEntry:
    rel = _expect(entry, "path", str, where, path)
    checksum = _expect(entry, "checksum", str, where, path)
    if not _CHECKSUM_RE.fullmatch(checksum):
        raise FormatError(
            f"{path}: {where}['checksum'] must look like 'crc32:0123abcd'. Received: {bounded_repr(checksum)}"
        )
    resolve_inside(directory, rel, manifest=path)
    return FileEntry(rel, checksum)


def _parse_ragged_entry(doc: Any, where: str, spec: FieldSpec, rows: int, directory: str, path: str) -> FileEntry:
    """A ragged field's entry: values file, checksum, num_values and the offsets file."""
    entry = _object(doc, {"path", "checksum", "num_values", "offsets"}, where, path)
    values = _parse_file_entry(entry, where, directory, path)
    num_values = _count(entry, "num_values", where, path)
    if num_values * spec.row_nbytes > MAX_BYTES or (rows + 1) * 8 > MAX_BYTES:
        raise FormatError(f"{path}: {where} holds more than 2**63 - 1 bytes.")
    offsets_doc = _object(_expect(entry, "offsets", dict, where, path), {"path", "checksum"}, f"{where}['offsets']", path)
    offsets = _parse_file_entry(offsets_doc, f"{where}['offsets']", directory, path)
    return FileEntry(values.path, values.checksum, num_values, offsets)


def manifest_to_json(manifest: Manifest) -> str:
    """Serialises a manifest the way memseq writes it (indented, final newline).

    Keys keep their order: the fixed order of :meth:`Manifest.to_json`, and fields
    in the order they were declared, which is the order a Dataset lists them in.
    """
    return json.dumps(manifest.to_json(), indent=2) + "\n"


def format_checksum(crc: int) -> str:
    """Formats a CRC-32 value as a manifest checksum string, e.g. ``'crc32:0000abcd'``."""
    return f"crc32:{crc & 0xFFFFFFFF:08x}"
