"""Argument checks shared by every module: one rule and one message for each.

Integers, flags, equal row counts and row indices are checked in many places
(constructors, the writer, conversion, ``open_raw``, the tf.data adapter). They are
checked here, once, so that the same mistake always gets the same message:
``"<where>: <name> must be ... Received: <value>"``. Offending values are shown with
:func:`bounded_repr`, so a hostile 50 MB string never becomes a 50 MB message.
"""

from __future__ import annotations

import reprlib
from collections.abc import Mapping
from typing import Any

import numpy as np

from memseq.errors import BatchIndexError, SchemaError

__all__ = [
    "INT64_MAX",
    "bounded_repr",
    "bounded_text",
    "check_bool",
    "check_int",
    "equal_row_counts",
    "is_sorted",
    "row_indices",
]

# The largest integer any count, size, seed, epoch or index of memseq may be: what numpy
# (int64 arrays), tf.data (int64 tensors) and Python's sequences (``len``) represent.
INT64_MAX = 2**63 - 1

# Long enough for any legitimate value (a path, a shape, a dict of row counts),
# short enough that a message stays readable.
_REPR_LIMIT = 200
_repr = reprlib.Repr()
_repr.maxstring = _REPR_LIMIT
_repr.maxother = _REPR_LIMIT
_repr.maxlist = _repr.maxtuple = _repr.maxdict = _repr.maxset = 20


def bounded_repr(value: Any) -> str:
    """``repr(value)``, shortened with ``...`` to at most a few hundred characters."""
    return _repr.repr(value)


def bounded_text(text: str) -> str:
    """``text`` itself if short, else its start and end around ``...`` (for paths in messages)."""
    text = str(text)
    if len(text) <= _REPR_LIMIT:
        return text
    half = _REPR_LIMIT // 2 - 2
    return f"{text[:half]}...{text[-half:]}"


def _prefix(where: str | None) -> str:
    return f"{where}: " if where else ""


def check_int(
    value: Any, name: str, minimum: int = 0, *, maximum: int = INT64_MAX, where: str | None = None
) -> int:
    """``value`` as an ``int`` if it is an integer (not a bool) in ``[minimum, maximum]``.

    Every integer argument has an upper bound, by default :data:`INT64_MAX`: a larger
    value cannot be represented where memseq passes it on (numpy, tf.data, ``len``),
    and would fail later with an ``OverflowError`` far from its cause.

    Args:
        value: The argument to check.
        name: The argument's name, for the message.
        minimum: The smallest accepted value.
        maximum: The largest accepted value.
        where: Optional context (a path) to start the message with.

    Returns:
        ``int(value)``.

    Raises:
        SchemaError: ``"<name> must be an int >= <minimum>. Received: <value>"``, or
            ``"... <= <maximum> ..."`` for a value above ``maximum``.

    Example:
        >>> check_int(4, "workers", 0)
        4
    """
    if isinstance(value, (bool, np.bool_)) or not isinstance(value, (int, np.integer)) or value < minimum:
        raise SchemaError(f"{_prefix(where)}{name} must be an int >= {minimum}. Received: {bounded_repr(value)}")
    if value > maximum:
        bound = "2**63 - 1" if maximum == INT64_MAX else str(maximum)
        raise SchemaError(
            f"{_prefix(where)}{name} must be an int from {minimum} to {bound}. Received: {bounded_repr(value)}"
        )
    return int(value)


def check_bool(value: Any, name: str, *, where: str | None = None) -> bool:
    """``value`` as a ``bool`` if it is ``True`` or ``False`` (numpy bools included).

    Raises:
        SchemaError: ``"<name> must be True or False. Received: <value>"``; strings
            such as ``"no"`` are refused rather than read as true.
    """
    if not isinstance(value, (bool, np.bool_)):
        raise SchemaError(f"{_prefix(where)}{name} must be True or False. Received: {bounded_repr(value)}")
    return bool(value)


def equal_row_counts(lengths: Mapping[str, int], what: str = "fields", *, where: str | None = None) -> int:
    """The common row count of ``lengths`` (name -> rows).

    Args:
        lengths: Name -> number of rows; must not be empty.
        what: What the names are, for the message ("fields", "selected fields", "sources").
        where: Optional context (a path) to start the message with.

    Returns:
        The number of rows every entry has.

    Raises:
        SchemaError: ``"All <what> need the same number of rows. Received: {...}"``.
    """
    counts = {name: int(n) for name, n in lengths.items()}
    if len(set(counts.values())) > 1:
        text = f"All {what}" if not where else f"all {what}"
        raise SchemaError(f"{_prefix(where)}{text} need the same number of rows. Received: {bounded_repr(counts)}")
    return next(iter(counts.values()))


def is_sorted(idx: np.ndarray) -> bool:
    """Whether a 1-D array is in ascending (non-decreasing) order."""
    return idx.size < 2 or bool((idx[1:] >= idx[:-1]).all())  # the method: 1 us faster than np.all


def row_indices(
    key: Any,
    num_rows: int,
    *,
    what: str,
    allow_negative: bool = True,
    invalid: type[Exception] = BatchIndexError,
) -> tuple[np.ndarray, bool]:
    """Normalises integer or boolean-mask row indices to a flat int64 array in ``[0, num_rows)``.

    One set of rules for every row index memseq accepts: 1-D integers or a boolean
    mask of shape ``(num_rows,)``; negative integers count from the end (as in numpy)
    unless ``allow_negative=False``; anything out of range is a
    :class:`~memseq.BatchIndexError`.

    Args:
        key: The indices (anything ``np.asarray`` takes).
        num_rows: The number of rows indexed into.
        what: What is indexed (a field name, ``"indices"``), to start messages with.
        allow_negative: Whether negative indices count from the end.
        invalid: The error for indices of the wrong kind or shape (not integers, not
            1-D, a mask of the wrong length): ``BatchIndexError`` when indexing a
            column (numpy raises ``IndexError`` there too), ``SchemaError`` for a
            constructor argument.

    Returns:
        The indices, and whether they are in ascending order (batches usually arrive
        sorted: the bounds then come from the ends, without two more passes).

    Raises:
        BatchIndexError: For an index out of range.
        ``invalid``: For indices of the wrong kind or shape.
    """
    idx = np.asarray(key)
    hint = f"Pass 1-D integers or a boolean mask of shape ({num_rows},)."
    if idx.dtype == bool:
        if idx.shape != (num_rows,):
            raise invalid(f"{what}: a boolean mask must have shape ({num_rows},). Received shape: {idx.shape}")
        return np.flatnonzero(idx), True
    if idx.size == 0 and idx.ndim <= 1:
        return np.empty(0, np.int64), True
    if idx.dtype.kind not in "iu":
        raise invalid(f"{what}: row indices must be integers or a boolean mask. Received dtype: {idx.dtype}. {hint}")
    if idx.ndim != 1:
        raise invalid(f"{what}: row indices must be one-dimensional. Received shape: {idx.shape}. {hint}")
    if idx.dtype.kind == "u" and idx.dtype.itemsize == 8 and idx.size and int(idx.max()) > INT64_MAX:
        # Cast to int64 such an index would wrap to a negative one, which counts from the end.
        raise BatchIndexError(f"{what}: row index {int(idx.max())} is out of range for {num_rows} rows.")
    idx = idx.astype(np.int64, copy=False)
    ascending = is_sorted(idx)
    lo, hi = (int(idx[0]), int(idx[-1])) if ascending else (int(idx.min()), int(idx.max()))
    lowest = -num_rows if allow_negative else 0
    if lo < lowest or hi >= num_rows:
        bad = lo if lo < lowest else hi
        note = "" if allow_negative else " (negative indices are not allowed)"
        raise BatchIndexError(f"{what}: row index {bad} is out of range for {num_rows} rows{note}.")
    if lo < 0:
        idx = np.where(idx < 0, idx + num_rows, idx)
        ascending = is_sorted(idx)
    return idx, ascending
