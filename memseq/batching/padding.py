"""Padded batches of variable-length fields, and the lengths and masks that go with them.

:class:`~memseq.MemmapSequence` serves a variable-length field padded to the longest
row of the batch (truncated to ``max_length``, rounded up to a multiple of
``multiple``). For a ragged field ``"tokens"`` it also offers two derived fields that
``x``, ``y`` and ``sample_weight`` can select like any other:

- ``"tokens:lengths"``: int32 ``(batch,)``, each row's length after truncation;
- ``"tokens:mask"``: bool ``(batch, padded_length)``, True on real values.

(``:`` cannot appear in a field name, so these never clash with stored fields.) Each
derived field computes the batch's padded length from the same offsets, so a mask
always fits the padded tokens beside it. Everything is a pure function of the rows,
hence bit-identical in every worker and in ``to_tf_dataset``.
"""

from __future__ import annotations

import dataclasses
import math
import os
from collections.abc import Mapping
from typing import Any

import numpy as np

from memseq.errors import SchemaError
from memseq.read.ragged import RaggedColumn
from memseq.util.checks import INT64_MAX, bounded_repr, check_int

__all__ = ["BatchField", "Padding", "padded_length", "padding_fraction", "row_nbytes", "selectable"]

# A padded row is assumed this long when estimating bytes per row (readahead, block sizes).
_ASSUMED_LENGTH = 256


@dataclasses.dataclass(frozen=True)
class Padding:
    """How a variable-length field is padded into a batch.

    Args:
        value: The pad value (cast to the field's dtype; it must fit).
        max_length: Rows longer than this are truncated to their first ``max_length``
            values. ``None`` keeps whole rows.
        multiple: The padded length is rounded up to a multiple of this, so that a
            model sees few distinct shapes (fewer retraces). It may then exceed
            ``max_length``, by pad values only.

    Example:
        >>> seq = memseq.MemmapSequence(ds, x=["tokens", "tokens:mask"], y="label", batch_size=32,
        ...                             padding=memseq.Padding(value=0, max_length=512, multiple=64))
    """

    value: Any = 0
    max_length: int | None = None
    multiple: int = 1

    def __post_init__(self) -> None:
        if self.max_length is not None:
            check_int(self.max_length, "max_length", 1, where="Padding")
        check_int(self.multiple, "multiple", 1, where="Padding")
        if isinstance(self.value, (bool, np.bool_)) or not isinstance(self.value, (int, float, np.integer, np.floating)):
            raise SchemaError(f"Padding: value must be a number. Received: {bounded_repr(self.value)}")


def _empty(buffers: Any, shape: tuple[int, ...], dtype: np.dtype) -> np.ndarray:
    """A recycled array of ``shape``: a view of a pooled flat buffer whose size is a power of two.

    Padded shapes change from batch to batch; pooling them by exact shape would fill
    the pool with buffers never asked for again and allocate (and page-fault) every
    batch. A view keeps its pooled buffer referenced, so the pool reuses it only once
    the batch is dropped.
    """
    n = int(np.prod(shape, dtype=np.int64))
    capacity = 1 << max(12, (n - 1).bit_length())
    return buffers.empty((capacity,), dtype)[:n].reshape(shape)


def _physical_memory() -> int | None:
    try:
        return os.sysconf("SC_PHYS_PAGES") * os.sysconf("SC_PAGE_SIZE")
    except (AttributeError, OSError, ValueError):
        return None


def _check_fits_in_memory(shape: tuple[int, ...], dtype: np.dtype, name: str) -> None:
    """Refuses a padded batch larger than the machine's memory before allocating it.

    A huge ``Padding.multiple`` pads every batch to it; allocating that would end in a
    bare ``MemoryError`` (or an int64 product that wraps), far from the cause.
    """
    nbytes = math.prod(shape) * dtype.itemsize
    limit = _physical_memory() or INT64_MAX
    if nbytes > min(limit, INT64_MAX):
        raise SchemaError(
            f"Padding: a padded batch of field {name!r} would have shape {bounded_repr(shape)} of {dtype}, "
            f"{nbytes} bytes, more than this machine's memory ({limit} bytes). Lower Padding.multiple or "
            "Padding.max_length, or the batch size."
        )


def padded_length(lengths: np.ndarray, padding: Padding) -> int:
    """The padded length of a batch whose (truncated) row lengths are ``lengths``: at least 1."""
    longest = max(1, int(lengths.max())) if len(lengths) else 1
    return -(-longest // padding.multiple) * padding.multiple


class BatchField:
    """A field of a sequence that builds its batch itself (padded, lengths, mask)."""

    dtype: np.dtype
    shape: tuple[Any, ...]

    def gather(self, rows: np.ndarray, buffers: Any) -> np.ndarray:
        raise NotImplementedError


class PaddedField(BatchField):
    """A ragged column served as padded batches ``(batch, padded_length, *value_shape)``."""

    def __init__(self, column: RaggedColumn, padding: Padding):
        self.column = column
        self.padding = padding
        self.dtype = column.dtype
        self.shape = column.shape
        self.pad = np.array(padding.value).astype(self.dtype)
        if self.pad != padding.value and self.pad == self.pad:  # (NaN pads NaN)
            raise SchemaError(f"Padding: value {padding.value!r} does not fit {column.name!r}'s dtype {self.dtype}.")

    def lengths(self, rows: np.ndarray) -> tuple[list[np.ndarray], np.ndarray, np.ndarray, np.ndarray]:
        """``(values arrays, part of each row, starts, truncated lengths)`` of ``rows``."""
        arrays, part_of, starts, stops = self.column.bounds(rows)
        lengths = stops - starts
        if self.padding.max_length is not None:
            np.minimum(lengths, self.padding.max_length, out=lengths)
        return arrays, part_of, starts, lengths

    def gather(self, rows: np.ndarray, buffers: Any) -> np.ndarray:
        arrays, part_of, starts, lengths = self.lengths(rows)
        shape = (len(rows), padded_length(lengths, self.padding), *self.column.value_shape)
        _check_fits_in_memory(shape, self.dtype, self.column.name)
        out = _empty(buffers, shape, self.dtype)
        out.fill(self.pad)
        if len(arrays) == 1:
            values = arrays[0]
            for k, (a, n) in enumerate(zip(starts.tolist(), lengths.tolist())):
                out[k, :n] = values[a : a + n]
        else:
            for k, (p, a, n) in enumerate(zip(part_of.tolist(), starts.tolist(), lengths.tolist())):
                out[k, :n] = arrays[p][a : a + n]
        self.column.check_sizes()  # after the copies, before handing them out (memseq.read.mapping)
        return out


class LengthsField(BatchField):
    """``"<field>:lengths"``: int32 row lengths (after truncation)."""

    def __init__(self, padded: PaddedField):
        self.padded = padded
        self.dtype = np.dtype(np.int32)
        self.shape = (padded.shape[0],)

    def gather(self, rows: np.ndarray, buffers: Any) -> np.ndarray:
        lengths = self.padded.lengths(rows)[3]
        out = buffers.empty((len(rows),), self.dtype)
        out[...] = lengths
        return out


class MaskField(BatchField):
    """``"<field>:mask"``: bool ``(batch, padded_length)``, True where a value is real."""

    def __init__(self, padded: PaddedField):
        self.padded = padded
        self.dtype = np.dtype(bool)
        self.shape = (padded.shape[0], None)

    def gather(self, rows: np.ndarray, buffers: Any) -> np.ndarray:
        lengths = self.padded.lengths(rows)[3]
        out = _empty(buffers, (len(rows), padded_length(lengths, self.padded.padding)), self.dtype)
        np.less(np.arange(out.shape[1]), lengths[:, None], out=out)
        return out


def selectable(columns: Mapping[str, Any], padding: Any) -> Mapping[str, Any]:
    """The fields a sequence can select: ragged columns padded, plus their ``:lengths`` and ``:mask``.

    Args:
        columns: Field name -> column, as the sequence's ``data`` resolves.
        padding: ``None`` (default padding), a :class:`Padding` for every ragged
            field, or a dict of field name -> :class:`Padding`.

    Returns:
        ``columns`` itself if it has no ragged field, else a new dict.

    Raises:
        SchemaError: If ``padding`` is not one of those, names a field that is not
            variable-length, or is given while no field is.
    """
    ragged = [name for name, column in columns.items() if isinstance(column, RaggedColumn)]
    if isinstance(padding, Mapping):
        unknown = [name for name in padding if name not in ragged]
        if unknown:
            raise SchemaError(f"padding names fields that are not variable-length: {bounded_repr(unknown)}; "
                              f"variable-length fields: {ragged}.")
        bad = [p for p in padding.values() if not isinstance(p, Padding)]
    else:
        bad = [] if padding is None or isinstance(padding, Padding) else [padding]
    if bad:
        raise SchemaError(f"padding must be a memseq.Padding or a dict of field -> Padding. Received: {bounded_repr(bad[0])}")
    if not ragged:
        if padding is not None:
            raise SchemaError(f"padding is given, but no field is variable-length. Fields: {list(columns)}")
        return columns
    out = dict(columns)
    for name in ragged:
        spec = padding.get(name, Padding()) if isinstance(padding, Mapping) else (padding or Padding())
        out[name] = padded = PaddedField(columns[name], spec)
        out[f"{name}:lengths"] = LengthsField(padded)
        out[f"{name}:mask"] = MaskField(padded)
    return out


def row_nbytes(column: Any) -> int:
    """Bytes per row of a column, a variable length counted as a few hundred values."""
    dims = [_ASSUMED_LENGTH if d is None else int(d) for d in column.shape[1:]]
    return int(np.prod(dims, dtype=np.int64)) * np.dtype(column.dtype).itemsize


def padding_fraction(lengths: Any, batches: Any, padding: Padding | None = None) -> float:
    """The fraction of a padded epoch that is padding.

    Args:
        lengths: Every row's length (``ds["tokens"].lengths``).
        batches: The row numbers of each batch (``[seq.batch_rows(i) for i in range(len(seq))]``).
        padding: The padding (truncation and multiple); default ``Padding()``.

    Returns:
        Pad values divided by all values served, in ``[0, 1)``.

    Example:
        >>> memseq.padding_fraction(ds["tokens"].lengths, [seq.batch_rows(i) for i in range(len(seq))])
        0.41
    """
    padding = padding or Padding()
    lengths = np.asarray(lengths, np.int64)
    real = total = 0
    for rows in batches:
        mine = lengths[np.asarray(rows, np.int64)]
        if padding.max_length is not None:
            mine = np.minimum(mine, padding.max_length)
        real += int(mine.sum())
        total += len(mine) * padded_length(mine, padding)
    return 0.0 if total == 0 else 1.0 - real / total
