"""A random-access record view of a memseq dataset (or a mapping of arrays), for Grain.

Grain reads any object with ``__len__`` and ``__getitem__`` as a data source
(``grain.MapDataset.source(...)``, ``grain.DataLoader(data_source=...)``). Item ``i``
of a :class:`Records` view is ``{field: row i}``. The view is

- **thread-safe**: reads are numpy gathers from read-only memory maps (a
  :class:`memseq.Column` maps its files once, under a lock);
- **deterministic**: item ``i`` is always the same row;
- **picklable by reference**: a dataset's columns and ``open_raw`` results pickle
  as their paths, and so does a file-backed ``np.memmap`` inside a view, so
  Grain's worker processes reopen the files instead of receiving their data;
- **batched**: ``_getitems(indices)`` gathers all asked-for rows of each field with
  one sorted read, which Grain uses where it can.

This module imports neither Grain nor the dataset module: it works on anything
that maps field names to array-likes.
"""

from __future__ import annotations

import os
from collections.abc import Mapping, Sequence
from typing import Any

import numpy as np

from memseq.errors import BatchIndexError, SchemaError
from memseq.read.arrays import rows_array
from memseq.read.raw import memmap_reference, reopen_raw
from memseq.read.source import is_row_number
from memseq.storage.identity import FileIdentity, identity_of, refreshed
from memseq.util.checks import equal_row_counts

__all__ = ["Records", "records"]


def _identity_now(array: Any) -> FileIdentity | None:
    """The identity of the file an ``np.memmap`` names now, or None (not a file-backed memmap)."""
    if not isinstance(array, np.memmap) or array.filename is None:
        return None
    try:
        return identity_of(os.stat(array.filename))
    except OSError:
        return None


class Records:
    """Rows of a dataset as records: item ``i`` is ``{field: row i}``.

    A Grain random-access data source (``__len__``, ``__getitem__``, batched
    ``_getitems``). Build it with :meth:`memseq.Dataset.records` or
    :func:`memseq.records`, not directly.

    Args:
        columns: Mapping of field name -> array-like (``memseq.Column``,
            ``np.ndarray``, ``np.memmap``) with equal lengths.
        fields: The fields to serve (in this order); all by default.

    Raises:
        SchemaError: For an unknown field, an empty selection or unequal lengths.

    Example:
        >>> source = memseq.open("data/train").records(fields=["image", "label"])
        >>> source[3]
        {'image': array(...), 'label': array(7)}
        >>> ds = grain.MapDataset.source(source).shuffle(seed=0).batch(64)
    """

    def __init__(self, columns: Mapping[str, Any], fields: Sequence[str] | None = None):
        if not isinstance(columns, Mapping):
            raise SchemaError(
                f"records() takes a memseq.Dataset or a mapping of field name -> array. Received: {type(columns).__name__}"
            )
        names = list(columns) if fields is None else ([fields] if isinstance(fields, str) else list(fields))
        if not names:
            raise SchemaError(f"records() needs at least one field; the data has {list(columns)}.")
        selected = {}
        for name in names:
            if not isinstance(name, str) or name not in columns:
                raise SchemaError(f"records(): no field {name!r}; fields are {list(columns)}.")
            selected[name] = rows_array(columns[name], f"records(): field {name!r}")
        self._columns = selected
        # The files the np.memmaps name now: a worker that unpickles this view maps
        # them again and refuses another file (replaced, truncated, rewritten since).
        self._identities = {name: _identity_now(a) for name, a in selected.items() if isinstance(a, np.memmap)}
        self._num_rows = equal_row_counts({name: a.shape[0] for name, a in selected.items()}, "records fields")

    @property
    def fields(self) -> list[str]:
        """The fields of every record."""
        return list(self._columns)

    def __len__(self) -> int:
        return self._num_rows

    def _index(self, index: Any) -> int:
        if not is_row_number(index):
            raise BatchIndexError(f"Record index must be an integer. Received: {index!r}")
        i = int(index)
        if not -self._num_rows <= i < self._num_rows:
            raise BatchIndexError(f"Record index {i} is out of range for {self._num_rows} records.")
        return i % self._num_rows

    def __getitem__(self, index: int) -> dict[str, np.ndarray]:
        i = self._index(index)
        return {name: np.asarray(column[i]) for name, column in self._columns.items()}

    def _getitems(self, indices: Sequence[int]) -> list[dict[str, np.ndarray]]:
        """Records ``indices``, read with one gather per field (Grain's batched read)."""
        idx = np.fromiter((self._index(i) for i in indices), dtype=np.int64, count=len(indices))
        order = np.argsort(idx, kind="stable")
        sorted_idx = idx[order]
        gathered = {}
        for name, column in self._columns.items():
            if isinstance(column, np.ndarray):  # np.memmap included
                rows = np.take(column, sorted_idx, axis=0, mode="clip")  # indices checked above
            else:
                rows = np.asarray(column[sorted_idx])  # a memseq Column: one ascending gather
            out = np.empty_like(rows)
            out[order] = rows
            gathered[name] = out
        return [{name: rows[k] for name, rows in gathered.items()} for k in range(len(idx))]

    def __getstate__(self) -> dict[str, Any]:
        # File-backed np.memmaps travel as references with the identity of their file
        # (Grain pickles the source to each worker process) and arrive as read-only
        # memseq raw columns, which refuse to serve another file; memseq columns
        # pickle by reference by themselves.
        state = dict(self.__dict__)
        columns = {}
        for name, array in self._columns.items():
            ref = memmap_reference(array) if isinstance(array, np.memmap) else None
            if ref is None:
                columns[name] = ("array", array)
                continue
            identity = refreshed(ref[0], self._identities.get(name))
            columns[name] = ("raw", (*ref, None if identity is None else tuple(identity)))
        state["_columns"] = columns
        return state

    def __setstate__(self, state: dict[str, Any]) -> None:
        columns = {}
        for name, (kind, value) in state["_columns"].items():
            columns[name] = reopen_raw(*value) if kind == "raw" else value
        state.setdefault("_identities", {})
        self.__dict__.update(state, _columns=columns)

    def __repr__(self) -> str:
        return f"<memseq.Records rows={self._num_rows} fields={self.fields}>"


def records(data: Mapping[str, Any], fields: Sequence[str] | None = None) -> Records:
    """A Grain-ready record view of a dataset or a mapping of arrays.

    Item ``i`` is ``{field: row i}``; see :class:`Records`. For a
    :class:`memseq.Dataset` this is ``ds.records(fields)``.

    Args:
        data: A :class:`memseq.Dataset` or a mapping of field name -> array-like
            (``np.ndarray``, ``np.memmap``, :func:`memseq.open_raw` results) with
            equal lengths.
        fields: The fields to serve; all by default.

    Returns:
        A :class:`Records` view (thread-safe, picklable by reference for file-backed data).

    Raises:
        SchemaError: For an unknown field or unequal lengths.

    Example:
        >>> source = memseq.records({"x": np.load("x.npy", mmap_mode="r"), "y": labels})
        >>> grain.MapDataset.source(source).shuffle(seed=0).batch(32)
    """
    return Records(data, fields)
