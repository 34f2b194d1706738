"""The ragged column: a read-only, file-backed field whose rows vary in length.

A variable-length field is stored per shard as a flat values file and an int64
offsets file (see the format specification in :mod:`memseq.storage.format`): row ``i`` of a
shard is ``values[offsets[i]:offsets[i+1]]``. A :class:`RaggedColumn` presents the
rows of all shards as one sequence: ``column[i]`` is an ndarray of that row's
length, slices, index arrays and masks give lists of ndarrays, and
:attr:`RaggedColumn.lengths` gives every row's length from the offsets alone.

Every read checks the offsets it uses (``0 <= start <= stop <= num_values``), so a
corrupt offsets file is a :class:`~memseq.CorruptFileError`, never a read outside
the values; :attr:`RaggedColumn.lengths` checks all it reads (never a negative
length), and :meth:`RaggedColumn.check_offsets` checks them all (``Dataset.verify``).
As for fixed-shape columns, the files' sizes (and the SIGBUS guard, see
:mod:`memseq.read.mapping`) are checked after each copy out of the mappings.
"""

from __future__ import annotations

from typing import Any, Sequence

import numpy as np

from memseq.errors import CorruptFileError, SchemaError
from memseq.read.columns import Column, allocate
from memseq.read.mapping import MappedFile
from memseq.read.source import ColumnBase, is_row_number

__all__ = ["RaggedColumn", "RaggedPart", "check_offsets"]

# Offsets are checked in pieces of this many entries (8 MiB), so that verifying a
# huge field never holds more than that in anonymous memory.
_CHECK_CHUNK = 2**20


class RaggedPart:
    """One shard of a ragged field: its mapped values file and offsets file."""

    __slots__ = ("values", "offsets")

    def __init__(self, values: MappedFile, offsets: MappedFile):
        self.values = values
        self.offsets = offsets

    @property
    def path(self) -> str:
        return self.values.path

    def check_size(self, field: str | None = None) -> None:
        """Raises CorruptFileError if either file shrank since it was opened (or tore in a read)."""
        self.values.check_size(field)
        self.offsets.check_size(field)

    def is_current(self) -> bool:
        return self.values.is_current() and self.offsets.is_current()

    def close(self) -> None:
        self.values.close()
        self.offsets.close()

    def check_ends(self) -> None:
        """The cheap check done on open: ``offsets[0] == 0`` and ``offsets[-1] == num_values``."""
        offsets = self.offsets.data()
        num_values = len(self.values.data())
        first, last = int(offsets[0]), int(offsets[-1])
        self.offsets.check_size()  # after the read: see memseq.read.mapping
        if first != 0 or last != num_values:
            raise CorruptFileError(
                f"{self.offsets.path}: offsets must start at 0 and end at the number of values ({num_values}). "
                f"Received: first {first}, last {last}. The file is corrupt."
            )

    def bounds(self, local: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
        """``(starts, stops)`` of the shard's rows ``local`` (valid row numbers), checked."""
        offsets = self.offsets.data()
        num_values = len(self.values.data())
        starts = offsets.take(local, mode="clip")
        stops = offsets.take(local + 1, mode="clip")
        self.offsets.check_size()  # after the read: see memseq.read.mapping
        if len(local) and not ((starts <= stops).all() and starts.min() >= 0 and stops.max() <= num_values):
            bad = int(np.flatnonzero((starts > stops) | (starts < 0) | (stops > num_values))[0])
            raise CorruptFileError(
                f"{self.offsets.path}: row {int(local[bad])} spans values [{int(starts[bad])}, {int(stops[bad])}), "
                f"outside [0, {num_values}] or backwards. The offsets file is corrupt."
            )
        return starts, stops


def check_offsets(part: RaggedPart) -> None:
    """Checks every offset of ``part``: starts at 0, never decreases, ends at the number of values.

    Raises:
        CorruptFileError: Naming the offsets file and the first bad row.
    """
    part.check_ends()
    offsets = part.offsets.data()
    for a in range(0, len(offsets) - 1, _CHECK_CHUNK):
        piece = np.asarray(offsets[a : a + _CHECK_CHUNK + 1])
        down = np.flatnonzero(piece[1:] < piece[:-1])
        part.offsets.check_size()  # after the read: see memseq.read.mapping
        if len(down):
            row = a + int(down[0])
            raise CorruptFileError(
                f"{part.offsets.path}: offsets decrease at row {row} ({int(piece[down[0]])} then "
                f"{int(piece[down[0] + 1])}); they must never decrease. The file is corrupt."
            )


class RaggedColumn(ColumnBase):
    """A read-only, file-backed variable-length field: one field's rows across all shards.

    ``len(column)`` is the number of rows; ``column[i]`` is an ndarray of shape
    ``(length_i, *value_shape)``; slices, integer arrays and boolean masks return a
    list of such arrays. Every array is a copy of just the rows asked for.

    It shares :class:`~memseq.read.source.ColumnBase` with :class:`~memseq.Column`
    (``len``, iteration, row indices, size checks) and implements :meth:`parts` as
    one :class:`RaggedPart` per shard (see :mod:`memseq.read.source`).

    Attributes:
        name: The field name.
        dtype: The dtype of the values.
        row_shape: ``(None, *value_shape)``.
        value_shape: The trailing dimensions of a row (``()`` for token rows).

    Example:
        >>> tokens = memseq.open("data/text")["tokens"]
        >>> tokens[1].shape, tokens.lengths[:3]
        ((3,), array([5, 3, 9]))
    """

    ragged = True

    def __init__(self, name: str, dtype: np.dtype, value_shape: tuple[int, ...], part_rows: Sequence[int]):
        self.value_shape = tuple(value_shape)
        super().__init__(name, dtype, (None, *self.value_shape), part_rows)

    def parts(self) -> Sequence[RaggedPart]:
        """One :class:`RaggedPart` (values and offsets files) per shard, in row order; implemented by subclasses.

        Raises:
            DatasetClosedError: If the dataset was closed.
        """
        return super().parts()

    @property
    def shape(self) -> tuple[Any, ...]:
        """``(rows, None, *value_shape)``: the second dimension varies."""
        return super().shape

    def __repr__(self) -> str:
        return f"<memseq.RaggedColumn {self.name!r} rows={self._num_rows} row_shape={self.row_shape} dtype={self.dtype}>"

    def __array__(self, dtype=None, copy=None):
        raise SchemaError(
            f"{self.name}: a variable-length column has no single array form. Use column[i] or column[a:b] "
            "(lists of arrays), column.values (all values concatenated), or MemmapSequence for padded batches."
        )

    @property
    def lengths(self) -> np.ndarray:
        """Every row's length (int64), from the offsets only: no value is read.

        Raises:
            CorruptFileError: If the offsets do not start at 0, end at the number of
                values and never decrease (a length would be negative or point
                outside the values), naming the offsets file and the first bad row.
        """
        pieces = []
        for part in self.parts():
            part.check_ends()
            lengths = np.diff(part.offsets.data())
            part.offsets.check_size(self.name)  # after the read: see memseq.read.mapping
            down = np.flatnonzero(lengths < 0)
            if len(down):
                row = int(down[0])
                raise CorruptFileError(
                    f"{part.offsets.path}: offsets decrease at row {row} (a length of {int(lengths[row])}); "
                    "they must never decrease. The file is corrupt."
                )
            pieces.append(lengths)
        return np.concatenate(pieces).astype(np.int64, copy=False) if pieces else np.empty(0, np.int64)

    @property
    def num_values(self) -> int:
        """The number of values of all rows together."""
        return sum(len(part.values.data()) for part in self.parts())

    @property
    def values(self) -> Column:
        """All rows' values concatenated, as a :class:`~memseq.Column` of shape ``(num_values, *value_shape)``.

        Reads nothing; pickles by reference like this column. ``memseq.windows`` over
        a token field uses it: windows then run across row boundaries.
        """
        return _ValuesColumn(self)

    def __getitem__(self, key: Any) -> Any:
        if is_row_number(key):
            values, _ = self.gather(np.array([self._row_number(key)], np.int64))
            return values
        if isinstance(key, slice):
            return self.take(np.arange(*key.indices(self._num_rows), dtype=np.int64))
        return self.take(key)

    def take(self, indices: Any) -> list[np.ndarray]:
        """The rows at ``indices`` (integers, negative from the end, or a boolean mask), as a list of copies."""
        idx, _ = self._row_numbers(indices)
        values, lengths = self.gather(idx)
        return np.split(values, np.cumsum(lengths)[:-1]) if len(idx) else []

    def bounds(self, rows: np.ndarray) -> tuple[list[np.ndarray], np.ndarray, np.ndarray, np.ndarray]:
        """Where rows ``rows`` (valid row numbers) live: ``(values arrays, part of each row, starts, stops)``.

        The values array of a part that none of the rows live in is None (it is not
        opened: a remote dataset does not download that shard).

        The values arrays are the mappings: a caller that copies from them calls
        :meth:`check_sizes` after its copies, before handing them out.
        """
        parts = self.parts()
        if len(parts) == 1:
            starts, stops = parts[0].bounds(rows)
            return [parts[0].values.data()], np.zeros(len(rows), np.intp), starts, stops
        part_of = np.searchsorted(self._starts, rows, side="right") - 1
        starts = np.empty(len(rows), np.int64)
        stops = np.empty(len(rows), np.int64)
        touched = np.unique(part_of).tolist()
        for p in touched:
            mine = part_of == p
            starts[mine], stops[mine] = parts[p].bounds(rows[mine] - self._starts[p])
        # Only the parts these rows live in: a remote dataset's other shards stay undownloaded.
        arrays = [None] * len(parts)
        for p in touched:
            arrays[p] = parts[p].values.data()
        return arrays, part_of, starts, stops

    def gather(self, rows: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
        """Rows ``rows`` (valid row numbers, any order) concatenated: ``(values, lengths)``."""
        arrays, part_of, starts, stops = self.bounds(np.asarray(rows, np.int64))
        lengths = stops - starts
        out = allocate((int(lengths.sum()), *self.value_shape), self.dtype, self.name)
        pos = 0
        for p, a, b in zip(part_of.tolist(), starts.tolist(), stops.tolist()):
            out[pos : pos + b - a] = arrays[p][a:b]
            pos += b - a
        self.check_sizes()  # after the copies: see memseq.read.mapping
        return out, lengths

    def check_sizes(self) -> None:
        """Raises if a file shrank since opening or tore in a read: call it after copying from :meth:`bounds`' arrays."""
        super().check_sizes()

    def check_offsets(self) -> None:
        """Checks every offset of every shard (see :func:`check_offsets`)."""
        for part in self.parts():
            check_offsets(part)


class _ValuesColumn(Column):
    """The values of a :class:`RaggedColumn`, all shards concatenated, as a fixed-shape column."""

    def __init__(self, ragged: RaggedColumn):
        sizes = [len(part.values.data()) for part in ragged.parts()]
        super().__init__(f"{ragged.name} (values)", ragged.dtype, ragged.value_shape, sizes)
        self.ragged = ragged

    def parts(self) -> Sequence[MappedFile]:
        return [part.values for part in self.ragged.parts()]
