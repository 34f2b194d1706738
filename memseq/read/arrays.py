"""Array coercion and rank checks shared by the readers: one rule and one message shape each.

A reader takes arrays from users (a mapping of field name -> array-like, a token
stream) and row ranges from readahead; each is turned into what the reader needs
here, so that every caller accepts the same inputs and says the same thing about a
wrong one.
"""

from __future__ import annotations

from typing import Any

import numpy as np

from memseq.errors import SchemaError
from memseq.util.checks import bounded_repr

__all__ = ["row_ranges", "rows_array"]


def rows_array(value: Any, what: str, *, expected: str = "a row dimension", ndim: int | None = None) -> Any:
    """``value`` as an array-like whose first dimension is its rows.

    Anything with ``shape`` and ``dtype`` (an ndarray, an ``np.memmap``, a memseq
    column, another library's array) is kept as it is: never copied, never read.
    Anything else (a list) becomes ``np.asarray(value)``.

    Args:
        value: The array-like.
        what: Who needs it, to start the message with (``"records(): field 'x'"``).
        expected: What is needed, for the message.
        ndim: The exact number of dimensions needed; by default at least one.

    Returns:
        ``value``, or ``np.asarray(value)``.

    Raises:
        SchemaError: ``"<what> needs <expected>. Received shape: <shape>"`` for a
            scalar, or for another number of dimensions than ``ndim``.
    """
    if not hasattr(value, "shape") or not hasattr(value, "dtype"):
        value = np.asarray(value)
    shape = tuple(value.shape)
    if len(shape) < 1 or (ndim is not None and len(shape) != ndim):
        raise SchemaError(f"{what} needs {expected}. Received shape: {bounded_repr(shape)}")
    return value


def row_ranges(ranges: Any) -> np.ndarray:
    """Row ranges ``[start, stop)`` as an ``(n, 2)`` int64 array (no copy when already one)."""
    return np.asarray(ranges, np.int64).reshape(-1, 2)
