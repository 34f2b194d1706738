"""The data model of a memseq dataset: fields, files, shards and the manifest that lists them.

The dataclasses here are what :mod:`memseq.storage.manifest` parses ``memseq.json``
into and writes it from; the rules for field names, dtypes and row shapes are the
ones every write and every manifest must obey. The format itself is specified in
:mod:`memseq.storage.format`.
"""

from __future__ import annotations

import dataclasses
import math
import re
from typing import Any, Mapping

import numpy as np

from memseq.errors import SchemaError
from memseq.storage.npy import MAX_BYTES, MAX_ROW_DIMS
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
]

MANIFEST_NAME = "memseq.json"
FORMAT_NAME = "memseq"
FORMAT_VERSION = 1
SUPPORTED_VERSIONS = (1,)

# Field names become file names: keep them portable and free of path syntax.
# (Matched with fullmatch: "$" would also accept a trailing newline.)
_FIELD_NAME_RE = re.compile(r"[A-Za-z0-9_][A-Za-z0-9_.\-]{0,127}")
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
