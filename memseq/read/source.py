"""The column-source protocol: what a memseq column is built on, and what it gives back.

Every array memseq reads (a dataset field, an :func:`~memseq.open_raw` file, token
:func:`~memseq.windows`, the values of a variable-length field) is a
:class:`~memseq.Column`. Numpy-style indexing, ``take``, ``len``/``shape``, output
checks and memory-bounded allocation are written once, in :class:`Column` (and
:class:`ColumnBase`, which it shares with :class:`~memseq.RaggedColumn`), on top of a
few reads that each kind of column provides. Those reads are public and named by the
runtime-checkable protocols below, as Grain names its ``RandomAccessDataSource``: a
new kind of column is a subclass that implements them, and no module calls another
module's underscore hooks.

What a :class:`Column` subclass implements, one of:

- **File-backed** (dataset fields, raw files): ``parts()``, the memory-mapped files
  holding the rows (:class:`~memseq.read.mapping.MappedFile`, e.g. from
  ``MappedFile.open(path, dtype, shape, offset)``), part ``i`` holding
  ``part_rows[i]`` rows, in row order. :class:`Column` then provides every read
  over them: ``gather_sorted``, ``read_range``, ``read_windows``, ``prefetch``,
  ``is_cached`` and ``check_sizes``. ``parts()`` may return a lazy sequence whose
  ``parts[i]`` opens part ``i`` on first use (a dataset at a URL downloads the shard);
  if it has ``is_mapped(i)``, reads index only the parts they need, and ``prefetch`` and
  ``is_cached`` skip parts not opened yet instead of waiting for them.
- **Computed** (:class:`~memseq.TokenWindows`): ``gather_sorted(idx, out)`` and
  ``read_range(start, stop)`` themselves; ``prefetch``/``is_cached``
  (:class:`memseq.readahead.batches.Prefetchable`) if readahead can help them, and
  ``check_sizes`` if they copy from mappings. Such a column has no parts of its own:
  its ``parts()`` raises ``NotImplementedError``.

What :class:`Column` gives it: ``len``, ``shape``, ``ndim``, ``size``, ``nbytes``,
iteration, ``np.asarray(column)``, indexing by int, slice, integer array, boolean mask
and tuples, ``take`` (indices validated and sorted once, rows read in ascending order
and placed in the order asked for, ``out`` checked), ``take_sorted`` (the same for
indices already validated), and the refusal of a read larger than the memory
available. :class:`~memseq.MemmapSequence` gathers every batch of a :class:`Column`
through ``take(rows, out=buffer, trusted=...)``, hence through ``gather_sorted``, and
reads ahead through ``prefetch``/``is_cached``.

The contract of the reads, which every caller relies on:

- ``gather_sorted(idx, out)`` gets a 1-D int64 array of ascending row numbers, all in
  ``[0, len(column))``, and a C-contiguous ``out`` of shape
  ``(len(idx), *row_shape)`` and the column's dtype; it fills ``out[k]`` with row
  ``idx[k]`` and checks nothing (the batch hot path).
- ``read_range(start, stop)`` returns a new array of rows ``[start, stop)``
  (``0 <= start <= stop <= len(column)``).
- Both are thread-safe and deterministic (the same rows every time), copy rows out
  (nothing returned points into a file), and call ``check_size`` on every mapped file
  they copied from *after* the copy (:mod:`memseq.read.mapping`), so a truncated
  file raises :class:`~memseq.CorruptFileError` instead of serving zeros.
- A column pickles by reference (paths and file identities, never array data):
  subclasses define ``__reduce__`` (see :func:`memseq.read.raw.reopen_raw`).

A :class:`~memseq.RaggedColumn` shares :class:`ColumnBase` and implements
``parts()`` as :class:`~memseq.read.ragged.RaggedPart` objects (a values file and an
offsets file per shard); what padding and the tf.data adapter use of it is
:class:`RaggedSource`.
"""

from __future__ import annotations

from typing import Any, Iterator, Protocol, Sequence, runtime_checkable

import numpy as np

from memseq.errors import BatchIndexError
from memseq.util.checks import row_indices

__all__ = ["ColumnBase", "ColumnSource", "RaggedSource", "is_row_number"]


@runtime_checkable
class ColumnSource(Protocol):
    """The reads a fixed-shape :class:`~memseq.Column` is built on (see the module docstring).

    Every memseq column implements it; a class that does (usually a ``Column``
    subclass) is read by ``take``, indexing and :class:`~memseq.MemmapSequence`.

    Attributes:
        name: The field name, used in messages.
        dtype: The dtype of the rows.
        row_shape: The shape of one row.
    """

    name: str
    dtype: np.dtype
    row_shape: tuple[int, ...]

    def __len__(self) -> int:
        """The number of rows."""

    def parts(self) -> Sequence[Any]:
        """The mapped files holding the rows, in row order; ``NotImplementedError`` for a computed column."""

    def gather_sorted(self, idx: np.ndarray, out: np.ndarray) -> None:
        """Fills ``out[k]`` with row ``idx[k]``: ``idx`` ascending, in range, int64; ``out`` fits. Checks nothing."""

    def read_range(self, start: int, stop: int) -> np.ndarray:
        """A new array of rows ``[start, stop)``, in bounds."""

    def check_sizes(self) -> None:
        """Raises :class:`~memseq.CorruptFileError` if a file read from shrank or tore since it was opened."""


@runtime_checkable
class RaggedSource(Protocol):
    """What a variable-length column gives padding and the tf.data adapter (:class:`~memseq.RaggedColumn`).

    Attributes:
        name: The field name, used in messages.
        dtype: The dtype of the values.
        value_shape: The trailing dimensions of a row.
    """

    name: str
    dtype: np.dtype
    value_shape: tuple[int, ...]

    def __len__(self) -> int:
        """The number of rows."""

    def parts(self) -> Sequence[Any]:
        """One :class:`~memseq.read.ragged.RaggedPart` per shard, in row order."""

    def bounds(self, rows: np.ndarray) -> tuple[list[np.ndarray], np.ndarray, np.ndarray, np.ndarray]:
        """``(values arrays, part of each row, starts, stops)`` of valid rows ``rows``, offsets checked."""

    def check_sizes(self) -> None:
        """Raises if a file shrank or tore: call it after copying from :meth:`bounds`' arrays."""


def is_row_number(key: Any) -> bool:
    """Whether ``key`` indexes a single row: a Python or numpy integer, not a bool."""
    return isinstance(key, (int, np.integer)) and not isinstance(key, (bool, np.bool_))


class ColumnBase:
    """The skeleton every memseq column shares: one field's rows across parts (shards).

    Gives ``len``, ``shape``, ``ndim``, iteration, :meth:`check_sizes`, and one
    normalisation of row indices with one message for every kind of column. A
    subclass implements :meth:`parts` and indexing.

    Args:
        name: The field name, used in messages.
        dtype: The dtype of the rows (of the values, for a variable-length column).
        row_shape: The shape of one row (``(None, *value_shape)`` for a variable-length one).
        part_rows: The number of rows of each part, in order.
    """

    def __init__(self, name: str, dtype: Any, row_shape: Sequence[Any], part_rows: Sequence[int]):
        self.name = name
        self.dtype = np.dtype(dtype)
        self.row_shape = tuple(row_shape)
        self._part_rows = tuple(int(n) for n in part_rows)
        # starts[i] is the first global row of part i; starts[-1] is the row count.
        self._starts = np.concatenate([[0], np.cumsum(self._part_rows, dtype=np.int64)]).astype(np.int64)
        self._num_rows = int(self._starts[-1])

    def parts(self) -> Sequence[Any]:
        """The files holding the rows, one per part in row order (opened lazily after unpickling).

        Raises:
            NotImplementedError: In a subclass that computes its rows instead.
            DatasetClosedError: If the column (or its dataset) was closed.
        """
        raise NotImplementedError(f"{type(self).__name__} has no mapped parts: it implements its reads itself.")

    @property
    def shape(self) -> tuple[Any, ...]:
        """``(rows, *row_shape)``."""
        return (self._num_rows, *self.row_shape)

    @property
    def ndim(self) -> int:
        """Number of dimensions, rows included."""
        return 1 + len(self.row_shape)

    def __len__(self) -> int:
        return self._num_rows

    def __iter__(self) -> Iterator[np.ndarray]:
        for i in range(self._num_rows):
            yield self[i]  # type: ignore[index]

    def check_sizes(self) -> None:
        """Raises CorruptFileError if any of this column's files shrank since opening (or tore in a read)."""
        parts = self.parts()
        is_mapped = getattr(parts, "is_mapped", None)  # a lazy sequence: parts never opened were never read
        for p in range(len(parts)):
            if is_mapped is None or is_mapped(p):
                parts[p].check_size(self.name)

    def _row_number(self, key: Any) -> int:
        """The row ``key`` (an int, negative from the end) names, in ``[0, len)``; BatchIndexError if out of range."""
        i = int(key)
        if not -self._num_rows <= i < self._num_rows:
            raise BatchIndexError(f"{self.name}: row index {i} is out of range for {self._num_rows} rows.")
        return i % self._num_rows

    def _row_numbers(self, indices: Any) -> tuple[np.ndarray, bool]:
        """Integer indices or a boolean mask as valid int64 row numbers, and whether they ascend (see ``row_indices``)."""
        return row_indices(indices, self._num_rows, what=self.name)
