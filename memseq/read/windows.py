"""Token windows: fixed-length windows over one long 1-D column, as rows.

The most copied memmap training loop reads random windows of a token stream::

    data = np.memmap("train.bin", dtype=np.uint16, mode="r")
    ix = np.random.randint(len(data) - block_size, size=(batch_size,))
    x = np.stack([data[i : i + block_size] for i in ix])
    y = np.stack([data[i + 1 : i + 1 + block_size] for i in ix])

``memseq.windows(tokens, length=block_size + 1, stride=block_size)`` turns the stream
into a table whose row ``i`` is ``tokens[i * stride : i * stride + length]``: every
token is served once per epoch (not a random sample with repeats), the order is a
pure function of ``(seed, epoch)``, and it works as a :class:`~memseq.MemmapSequence`
field with full or block shuffle, thread and process workers and ``to_tf_dataset``.
Inputs and shifted targets are ``window[:, :-1]`` and ``window[:, 1:]``, split in a
subclass's ``augment``.
"""

from __future__ import annotations

import mmap
import os
from typing import Any

import numpy as np

from memseq.errors import MemseqError, SchemaError
from memseq.read.arrays import row_ranges, rows_array
from memseq.read.columns import Column
from memseq.read.raw import open_raw
from memseq.util.checks import bounded_repr, check_int

__all__ = ["TokenWindows", "windows"]

# Window starts and ends are int64 offsets into the tokens, and a window of ``length``
# tokens is a numpy row of ``length * itemsize`` bytes: both must fit an int64.
_INT64_MAX = 2**63 - 1


def _check_size(value: Any, name: str, maximum: int) -> int:
    value = check_int(value, name, 1, where="windows()")
    if value > maximum:
        raise SchemaError(
            f"windows(): {name} must be an int in [1, {maximum}] (int64 offsets into the tokens). "
            f"Received: {bounded_repr(value)}"
        )
    return value


def _as_source(tokens: Any) -> Any:
    """A 1-D column or array to take windows from; an ``np.memmap`` becomes a :class:`RawColumn`."""
    if isinstance(tokens, np.memmap) and tokens.filename is not None and isinstance(tokens.base, mmap.mmap):
        # A whole-file memmap (not a view): the same bytes, pickled by path instead of by value.
        try:
            return open_raw(os.fspath(tokens.filename), tokens.dtype, tuple(tokens.shape), int(tokens.offset))
        except MemseqError:
            return tokens
    if getattr(tokens, "ragged", False) is True:
        return tokens.values  # a variable-length field: its rows' tokens, concatenated
    if isinstance(tokens, (Column, np.ndarray)):
        return tokens
    raise SchemaError(
        "windows() takes a 1-D memseq column (open_raw(...) or a dataset field) or a numpy array. "
        f"Received: {type(tokens).__name__}"
    )


class TokenWindows(Column):
    """A read-only table of windows over a 1-D column: row ``i`` is ``tokens[i*stride : i*stride + length]``.

    A :class:`~memseq.Column` of shape ``(num_windows, length)``: indexing, ``take``
    and :class:`~memseq.MemmapSequence` work as for any column. Windows are copies.
    A computed column (see :mod:`memseq.read.source`): it implements
    :meth:`gather_sorted` and :meth:`read_range` over the tokens, and has no parts.
    Pickles by reference when the tokens are a memseq column or an ``np.memmap``.
    Build one with :func:`windows`.

    Attributes:
        tokens: The 1-D column (or array) windows are taken from.
        length: Tokens per window.
        stride: Tokens between the starts of consecutive windows.
    """

    def __init__(self, tokens: Any, length: int, stride: int):
        self.tokens = tokens
        self.length = length
        self.stride = stride
        n = len(tokens)
        num_windows = 0 if n < length else (n - length) // stride + 1
        name = f"windows({getattr(tokens, 'name', 'array')}, length={length}, stride={stride})"
        super().__init__(name, tokens.dtype, (length,), [num_windows])

    def gather_sorted(self, idx: np.ndarray, out: np.ndarray) -> None:
        """Fills ``out[k]`` with window ``idx[k]`` (ascending, in range): one read per window."""
        starts = np.asarray(idx, np.int64) * self.stride
        if isinstance(self.tokens, Column):
            self.tokens.read_windows(starts, self.length, out)
            return
        for k, a in enumerate(starts.tolist()):
            out[k] = self.tokens[a : a + self.length]

    def read_range(self, start: int, stop: int) -> np.ndarray:
        """Windows ``[start, stop)`` (in bounds) as a new array."""
        out = np.empty((stop - start, self.length), self.dtype)
        self.gather_sorted(np.arange(start, stop, dtype=np.int64), out)
        return out

    def prefetch(self, ranges: Any, now: bool = False) -> int:
        """Reads ahead the tokens of windows ``[start, stop)`` of each range (see :meth:`Column.prefetch`)."""
        if not isinstance(self.tokens, Column):
            return 0
        ranges = row_ranges(ranges)
        tokens = np.stack([ranges[:, 0] * self.stride, (ranges[:, 1] - 1) * self.stride + self.length], axis=1)
        return self.tokens.prefetch(tokens[ranges[:, 1] > ranges[:, 0]], now)

    def is_cached(self, row: int) -> bool:
        """Whether the last token of window ``row`` is in the page cache (see :meth:`Column.is_cached`)."""
        if not isinstance(self.tokens, Column):
            return True
        return self.tokens.is_cached(row * self.stride + self.length - 1)

    def check_sizes(self) -> None:
        """Checks the files of the tokens (see :meth:`Column.check_sizes`)."""
        if isinstance(self.tokens, Column):
            self.tokens.check_sizes()

    def __repr__(self) -> str:
        return f"<memseq.TokenWindows {self.name} shape={self.shape} dtype={self.dtype}>"


def windows(tokens: Any, *, length: int, stride: int | None = None) -> TokenWindows:
    """Fixed-length windows over a 1-D token column, as a table of rows.

    Row ``i`` is ``tokens[i * stride : i * stride + length]``; there are
    ``(len(tokens) - length) // stride + 1`` rows (none if the tokens are shorter
    than one window). Trailing tokens that do not fill a window are not served.

    Args:
        tokens: A 1-D column: ``memseq.open_raw("train.bin", dtype="uint16", shape=(-1,))``,
            a 1-D dataset field, an ``np.memmap`` or an ndarray; or a variable-length
            token field, whose rows are taken concatenated (``column.values``).
        length: Tokens per window (>= 1): ``block_size + 1`` for next-token training.
        stride: Tokens between window starts (>= 1); defaults to ``length``.
            ``stride=length - 1`` makes every token a target exactly once.

    Returns:
        A :class:`TokenWindows` of shape ``(num_windows, length)``.

    Raises:
        SchemaError: If ``tokens`` is not 1-D, or ``length``/``stride`` are not ints >= 1,
            or too large for int64 offsets (``length * itemsize`` and ``stride`` at most
            ``2**63 - 1``).

    Example:
        >>> tokens = memseq.open_raw("train.bin", dtype="uint16", shape=(-1,))
        >>> win = memseq.windows(tokens, length=1025, stride=1024)
        >>> seq = memseq.MemmapSequence({"window": win}, x="window", batch_size=12, seed=0)
    """
    source = _as_source(tokens)
    source = rows_array(source, "windows()", expected="a 1-D column of tokens", ndim=1)
    length = _check_size(length, "length", _INT64_MAX // source.dtype.itemsize)
    stride = length if stride is None else _check_size(stride, "stride", _INT64_MAX)
    return TokenWindows(source, length, stride)
