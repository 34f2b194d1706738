"""Inputs given as many files (TFRecord shards, Parquet parts, tar shards): listing them, and rows across them."""

from __future__ import annotations

import glob
import os
import re
from collections.abc import Iterator, Sequence
from typing import Any

import numpy as np

from memseq.convert._base import missing_file
from memseq.errors import DatasetNotFoundError

__all__ = ["natural_key", "input_files", "input_name", "RowIndex"]

_GLOB_CHARS = re.compile(r"[*?\[]")


def natural_key(name: str) -> list[Any]:
    """Sort key putting ``part-2`` before ``part-10``."""
    return [int(part) if part.isdigit() else part for part in re.split(r"(\d+)", name)]


def input_files(paths: str | os.PathLike | Sequence[str | os.PathLike], extensions: tuple[str, ...], what: str) -> list[str]:
    """The input files that ``paths`` names, in order.

    Args:
        paths: A file, a directory (its files whose name ends with one of
            ``extensions``, in natural order), a glob pattern (its matches, in
            natural order) or a list of these (in the order given).
        extensions: File name endings (lower case) taken from a directory.
        what: What the files are, for messages (``"TFRecord files"``).

    Raises:
        DatasetNotFoundError: If a path does not exist, or a directory or pattern
            names no file.
    """
    items = [paths] if isinstance(paths, (str, os.PathLike)) else list(paths)
    if not items:
        raise DatasetNotFoundError(f"No input files given ({what}).")
    files: list[str] = []
    for item in items:
        item = os.fspath(item)
        if os.path.isdir(item):
            names = sorted(
                (e.name for e in os.scandir(item) if e.is_file() and not e.name.startswith(".")
                 and e.name.lower().endswith(extensions)),
                key=natural_key,
            )
            if not names:
                raise DatasetNotFoundError(f"{item}: no {what} in the directory (names ending {', '.join(extensions)}).")
            files += [os.path.join(item, n) for n in names]
        elif os.path.isfile(item):
            files.append(item)
        elif _GLOB_CHARS.search(item):
            matches = sorted((m for m in glob.glob(item) if os.path.isfile(m)), key=natural_key)
            if not matches:
                raise DatasetNotFoundError(f"{item}: the pattern matches no file ({what}).")
            files += matches
        else:
            raise missing_file(item, what)
    return files


def input_name(paths: str | os.PathLike | Sequence[str | os.PathLike], files: list[str]) -> str:
    """What names the input in messages: the path given (a file, directory or pattern), else the first file."""
    if isinstance(paths, (str, os.PathLike)):
        return os.fspath(paths)
    return files[0] if len(files) == 1 else f"{files[0]} and {len(files) - 1} more"


class RowIndex:
    """Rows numbered across several files: which file, and which rows of it, a range covers.

    Args:
        counts: The number of rows of each file, in order.
    """

    def __init__(self, counts: Sequence[int]):
        self.starts = np.concatenate([[0], np.cumsum(np.asarray(counts, dtype=np.int64))]).astype(np.int64)

    @property
    def num_rows(self) -> int:
        return int(self.starts[-1])

    def pieces(self, start: int, stop: int) -> Iterator[tuple[int, int, int]]:
        """``(file index, first row in the file, end row in the file)`` of rows ``[start, stop)``, in order."""
        i = int(np.searchsorted(self.starts, start, side="right")) - 1
        while start < stop:
            while self.starts[i + 1] <= start:
                i += 1  # skip files with no rows
            end = min(stop, int(self.starts[i + 1]))
            yield i, start - int(self.starts[i]), end - int(self.starts[i])
            start = end


def join_pieces(fields: dict[str, Any], parts: dict[str, list[Any]]) -> dict[str, Any]:
    """The rows read from several files, per field: fixed fields concatenated (no copy for
    one piece), variable-length fields (``fields[name].ragged``) as one list of rows."""
    out: dict[str, Any] = {}
    for field, pieces in parts.items():
        if fields[field].ragged:
            out[field] = [row for piece in pieces for row in piece]
        else:
            out[field] = pieces[0] if len(pieces) == 1 else np.concatenate(pieces)
    return out
