"""An existing memseq dataset as a source (to re-shard it, or to combine it with others)."""

from __future__ import annotations

import os
from collections.abc import Sequence

import numpy as np

from memseq.convert._base import Source
from memseq.read.dataset import open as open_dataset

__all__ = ["MemseqSource"]


class MemseqSource(Source):
    """An existing memseq dataset (to re-shard it, or to combine it with other sources).

    Args:
        path: The dataset directory.
        fields: Field names to take; all by default.

    Raises:
        DatasetNotFoundError, FormatError, CorruptFileError: From :func:`memseq.open`.
        SchemaError: For an unknown field.
    """

    def __init__(self, path: str | os.PathLike, fields: Sequence[str] | None = None):
        self.path = os.fspath(path)
        dataset = open_dataset(self.path)
        names = list(dataset.fields) if fields is None else list(fields)
        for name in names:
            dataset[name]  # SchemaError naming the fields if unknown
        self.fields = {name: dataset.fields[name] for name in names}
        self.num_rows = dataset.num_rows
        self.description = self.path
        self._open_dataset = dataset

    def read(self, start: int, stop: int) -> dict[str, np.ndarray]:
        if self._open_dataset is None:
            self._open_dataset = open_dataset(self.path)
        return {name: self._open_dataset[name][start:stop] for name in self.fields}

    def close(self) -> None:
        self._open_dataset = None
