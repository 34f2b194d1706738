"""Headerless raw files (``np.memmap(..., mode="w+")`` output) as fields."""

from __future__ import annotations

import os
from collections.abc import Sequence
from typing import Any

import numpy as np

from memseq.convert._base import Source, check_file, field_spec_at
from memseq.read.raw import open_raw
from memseq.storage import format as fmt

__all__ = ["RawSource", "MappedFileSource"]


class MappedFileSource(Source):
    """A one-field source read through a memory map of its file.

    Subclasses set ``path``, ``dtype``, ``shape`` (rows first) and ``offset`` (where
    the data start) in their constructor, besides the attributes of :class:`Source`.
    """

    path: str
    dtype: np.dtype
    shape: tuple[int, ...]
    offset: int
    _open_column: Any = None

    def read(self, start: int, stop: int) -> dict[str, np.ndarray]:
        if self._open_column is None:
            self._open_column = open_raw(self.path, self.dtype, self.shape, offset=self.offset)
        (name,) = self.fields
        return {name: self._open_column[start:stop]}

    def close(self) -> None:
        self._open_column = None


class RawSource(MappedFileSource):
    """A headerless raw file (``np.memmap(..., mode="w+")`` output) as one field.

    Args:
        path: The raw file.
        name: The field name.
        dtype: The element dtype, e.g. ``"float32"``.
        shape: The full shape, rows first; one ``-1`` is inferred from the file size.
        offset: Bytes to skip at the start of the file.

    Raises:
        DatasetNotFoundError: If the file does not exist.
        CorruptFileError: If the file size does not fit ``dtype`` and ``shape``.
        SchemaError: For an invalid name, dtype or shape.
    """

    def __init__(self, path: str | os.PathLike, name: str, dtype: Any, shape: Sequence[int] | int, offset: int = 0):
        self.path = check_file(path, "a raw array file")
        fmt.check_field_name(name)
        column = open_raw(self.path, dtype, shape, offset=offset)  # checks dtype, shape, offset and size
        self.dtype = column.dtype
        self.shape = column.shape
        self.offset = int(offset)
        self.fields = {name: field_spec_at(name, column.dtype, column.shape[1:], self.path)}
        self.num_rows = column.shape[0]
        self.description = self.path
        self._open_column = column
