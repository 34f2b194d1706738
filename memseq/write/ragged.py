"""Rows of a variable-length (ragged) field on their way to disk: checked, then flattened.

:class:`memseq.Writer` takes a ragged field's rows as a sequence of arrays (a list,
a tuple, or a ragged column). They are checked up front, all of them, before anything
is written (dtype casts safely, trailing dimensions match), then written in pieces
of about a fixed number of bytes: values concatenated, lengths turned into offsets.
"""

from __future__ import annotations

from typing import Any, Iterator, Sequence

import numpy as np

from memseq.errors import SchemaError
from memseq.util.checks import bounded_repr

__all__ = ["OFFSETS_DTYPE", "flat_pieces", "infer_ragged_field", "is_ragged_input", "offsets_name", "ragged_rows"]

# Offsets are little-endian int64 on every machine (the format's rule).
OFFSETS_DTYPE = np.dtype("<i8")


def offsets_name(field: str) -> str:
    """The stem of a ragged field's offsets file: ``"tokens.offsets"``."""
    return f"{field}.offsets"


def is_ragged_input(value: Any) -> bool:
    """Whether ``value`` holds variable-length rows: a non-empty list or tuple of ndarrays, or a ragged column.

    A list of numbers (or of nested lists) stays what it always was: an array.
    """
    if isinstance(value, (list, tuple)):
        return bool(value) and all(isinstance(row, np.ndarray) and row.ndim >= 1 for row in value)
    return getattr(value, "ragged", False) is True


def _row_array(row: Any) -> np.ndarray:
    return row if isinstance(row, np.ndarray) else np.asarray(row)


def _fits(row: np.ndarray, dtype: np.dtype) -> bool:
    """Integers into a narrower integer dtype: accepted when every value fits (checked, never wrapped).

    Token rows are usually built as int64 (``np.arange``, Python lists) for a uint16
    field; refusing them would force a cast that hides real overflow.
    """
    if row.dtype.kind not in "iu" or dtype.kind not in "iu":
        return False
    info = np.iinfo(dtype)
    return bool(int(row.min()) >= info.min and int(row.max()) <= info.max)


def ragged_rows(value: Any, dtype: np.dtype, value_shape: tuple[int, ...], where: str) -> Sequence[Any]:
    """``value`` as a sequence of rows, once every row is checked against the field.

    Args:
        value: A list or tuple of arrays (one per row), or a ragged column.
        dtype: The field's dtype; each row's dtype must cast to it safely, or be
            an integer dtype whose values all fit in ``dtype`` (checked).
        value_shape: The field's trailing dimensions (``()`` for 1-D rows).
        where: The start of error messages (dataset path and field).

    Returns:
        A sequence whose slices are lists (or sequences) of rows.

    Raises:
        SchemaError: If a row is not an array of ``(length, *value_shape)`` or its
            dtype does not cast safely to ``dtype``.
    """
    if getattr(value, "ragged", False) is True:
        got = np.dtype(value.dtype)
        if got != dtype and not np.can_cast(got, dtype, casting="safe"):
            raise SchemaError(f"{where}: has dtype {dtype}; {got} does not cast to it safely.")
        if tuple(value.row_shape[1:]) != tuple(value_shape):
            raise SchemaError(f"{where}: rows must have shape (length, *{value_shape}). Received rows of {value.row_shape}")
        return value
    if not isinstance(value, (list, tuple)):
        raise SchemaError(
            f"{where}: a variable-length field takes a list of arrays, one per row. Received: {type(value).__name__}"
        )
    rows = [_row_array(row) for row in value]
    for i, row in enumerate(rows):
        # An empty row (np.asarray([]) is float64) has nothing to cast.
        if row.size and row.dtype != dtype and not np.can_cast(row.dtype, dtype, casting="safe") and not _fits(row, dtype):
            raise SchemaError(
                f"{where}: has dtype {dtype}; row {i} has dtype {row.dtype}, which does not cast to it safely. "
                f"Convert explicitly (e.g. row.astype({str(dtype)!r})) if that is what you want."
            )
        if row.ndim != 1 + len(value_shape) or tuple(row.shape[1:]) != tuple(value_shape):
            raise SchemaError(
                f"{where}: rows must have shape (length, {', '.join(map(str, value_shape))}"
                f"{',' if len(value_shape) == 1 else ''}). Row {i} has shape {bounded_repr(row.shape)}"
            )
    return rows


def infer_ragged_field(name: str, value: Any) -> tuple[np.dtype, tuple[Any, ...]]:
    """``(dtype, (None, *trailing))`` of the rows in ``value``, for :func:`memseq.save`.

    Raises:
        SchemaError: If there is no row to infer from, or rows differ in trailing shape.
    """
    if getattr(value, "ragged", False) is True:
        return np.dtype(value.dtype), tuple(value.row_shape)
    rows = [_row_array(row) for row in value]
    if not rows:
        raise SchemaError(
            f"Field {name!r}: cannot infer the dtype of a variable-length field without rows; "
            "use memseq.Writer with fields={name: (dtype, (None,))}."
        )
    trailing = {tuple(row.shape[1:]) for row in rows if row.ndim >= 1}
    if any(row.ndim < 1 for row in rows) or len(trailing) != 1:
        raise SchemaError(f"Field {name!r}: rows must be arrays of (length, *same trailing dims). Received shapes "
                          f"{bounded_repr(sorted({row.shape for row in rows}))}")
    return np.result_type(*rows), (None, *trailing.pop())


def flat_pieces(rows: Sequence[Any], dtype: np.dtype, value_nbytes: int, piece_bytes: int) -> Iterator[tuple[np.ndarray, np.ndarray]]:
    """``(values, lengths)`` of consecutive pieces of ``rows``, about ``piece_bytes`` of values each.

    A single row larger than ``piece_bytes`` is one piece.
    """
    n = len(rows)
    start = 0
    while start < n:
        stop = start
        size = 0
        while stop < n and (stop == start or size < piece_bytes):
            size += len(rows[stop]) * value_nbytes
            stop += 1
        piece = [np.asarray(row) for row in rows[start:stop]]
        lengths = np.array([len(row) for row in piece], np.int64)
        values = np.concatenate(piece).astype(dtype, copy=False) if piece else np.empty(0, dtype)
        yield np.ascontiguousarray(values), lengths
        start = stop
