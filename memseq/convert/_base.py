"""The base of conversion sources, and the file checks every source kind shares."""

from __future__ import annotations

import importlib
import os
from collections.abc import Sequence
from typing import Any

import numpy as np

from memseq.errors import DatasetNotFoundError, MemseqError, SchemaError
from memseq.storage import format as fmt

__all__ = ["Source", "check_file", "missing_file", "field_spec_at", "optional_module"]


class Source:
    """Base class of conversion sources: a table of rows read on demand.

    Every source is a :class:`memseq.write.parallel.RowSource`, the protocol the
    parallel writer reads rows from; this class adds the shared pickling rule and
    helpers. Subclasses set ``fields`` (name -> :class:`memseq.storage.format.FieldSpec`),
    ``num_rows`` and ``description`` in their constructor, after validating the
    input, and implement :meth:`read`. A source is pickled to worker processes: it
    must hold paths and small metadata only, and reopen files lazily.

    Attributes:
        fields: The fields this source provides.
        num_rows: Its number of rows.
        description: A short human-readable description (for messages).
        max_unit_rows: Largest number of rows per work unit, or None for no limit
            (sources that decode rows one by one, like images, set a small one).
    """

    fields: dict[str, fmt.FieldSpec]
    num_rows: int
    description: str
    max_unit_rows: int | None = None

    def read(self, start: int, stop: int) -> dict[str, np.ndarray]:
        """Returns rows ``[start, stop)`` of every field."""
        raise NotImplementedError

    def close(self) -> None:
        """Releases open files (they are reopened on the next read)."""

    def _set_table(self, fields: dict[str, fmt.FieldSpec], rows: dict[str, int], what: str) -> None:
        """Sets ``fields`` and ``num_rows`` of a container of several arrays, which need equal row counts."""
        if len(set(rows.values())) > 1:
            raise SchemaError(f"{self.path}: the {what} have different numbers of rows: {rows}.")
        self.fields = fields
        self.num_rows = next(iter(rows.values()))
        self.description = self.path

    def __getstate__(self) -> dict[str, Any]:
        # Open files, zip streams and memory maps (attributes named _open*) are
        # never pickled: workers reopen them on their first read.
        state = self.__dict__.copy()
        for key in list(state):
            if key.startswith("_open"):
                state[key] = None
        return state

    def __repr__(self) -> str:
        return f"<{type(self).__name__} {self.description} rows={self.num_rows} fields={list(self.fields)}>"


def missing_file(path: str, what: str) -> DatasetNotFoundError:
    """The error for a source file that is not there (or is a directory): ``"<path>: no such file (<what>)."``."""
    if os.path.isdir(path):
        return DatasetNotFoundError(f"{path}: is a directory, expected {what}.")
    return DatasetNotFoundError(f"{path}: no such file ({what}).")


def check_file(path: str | os.PathLike, what: str) -> str:
    """``path`` as a string if it is a file.

    Raises:
        DatasetNotFoundError: If it does not exist or is a directory (see :func:`missing_file`).
    """
    path = os.fspath(path)
    if not os.path.isfile(path):
        raise missing_file(path, what)
    return path


def field_spec_at(name: str, dtype: Any, row_shape: Sequence[int], where: str) -> fmt.FieldSpec:
    """:func:`memseq.storage.format.field_spec`, with ``where`` (the source) at the start of its messages."""
    try:
        return fmt.field_spec(name, dtype, tuple(row_shape))
    except SchemaError as e:
        raise SchemaError(f"{where}: {e}") from e


def optional_module(name: str, message: str) -> Any:
    """Imports an optional dependency (h5py, Pillow); a MemseqError saying ``message`` if it is missing."""
    try:
        return importlib.import_module(name)
    except ImportError as e:
        raise MemseqError(message) from e
