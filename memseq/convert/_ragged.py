"""Variable-length sources, and the streaming conversion that writes them.

- :class:`NpyRowsSource`: a directory of ``.npy`` files, one row each (a document's
  tokens, an utterance's frames), in natural file-name order (``row2`` before ``row10``).
- :class:`TokenStreamSource`: one headerless token file (``train.bin``) cut into rows
  (documents) after every occurrence of a separator token, which ends its row: the
  rows concatenated are the stream again.

The rows of a variable-length field cannot be placed in pre-sized files before they
are read, so :func:`convert_streaming` writes through one :class:`memseq.Writer` in
this process (``jobs`` does not apply); the atomic commit and checksums are the
Writer's.
"""

from __future__ import annotations

import os
import re
import sys
from typing import Any

import numpy as np

from memseq.convert._base import Source, check_file, field_spec_at
from memseq.errors import DatasetNotFoundError, FormatError, SchemaError
from memseq.read.raw import open_raw
from memseq.storage import format as fmt
from memseq.util.checks import check_int

__all__ = ["NpyRowsSource", "TokenStreamSource", "convert_streaming"]

# Rows are read and appended in pieces of about this many bytes.
_PIECE_BYTES = 32 * 2**20
# A token stream is scanned for separators this many tokens at a time.
_SCAN_TOKENS = 16 * 2**20


def _natural_key(name: str) -> list[Any]:
    return [int(part) if part.isdigit() else part for part in re.split(r"(\d+)", name)]


class NpyRowsSource(Source):
    """A directory of ``.npy`` files with one row each, as a variable-length field.

    Each file holds one row: an array of shape ``(length, *trailing)`` (1-D for
    tokens). All files need the same dtype and trailing dimensions. Files are taken
    in natural order of their names; other files are ignored.

    Args:
        directory: The directory.
        name: The field name.

    Raises:
        DatasetNotFoundError: If the directory does not exist or holds no ``.npy`` file.
        FormatError: For a malformed header, a 0-d array, or files that disagree.
    """

    def __init__(self, directory: str | os.PathLike, name: str):
        self.path = os.fspath(directory)
        if not os.path.isdir(self.path):
            raise DatasetNotFoundError(f"{self.path}: no such directory (a directory of one-row .npy files).")
        files = sorted((f for f in os.listdir(self.path) if f.endswith(".npy") and not f.startswith(".")), key=_natural_key)
        if not files:
            raise DatasetNotFoundError(f"{self.path}: no .npy files (a directory of one-row .npy files).")
        self.files = [os.path.join(self.path, f) for f in files]
        dtype, trailing = None, None
        for path in self.files:
            got_dtype, shape = self._header(path)
            if dtype is None:
                dtype, trailing = got_dtype, shape[1:]
            elif got_dtype != dtype or shape[1:] != trailing:
                raise FormatError(
                    f"{path}: has {got_dtype} rows of shape {shape}; the first file has {dtype} rows of "
                    f"shape (length, {', '.join(map(str, trailing))}). All files need the same dtype and trailing shape."
                )
        self.fields = {name: field_spec_at(name, dtype, (None, *trailing), self.path)}
        self.num_rows = len(self.files)
        self.description = self.path

    @staticmethod
    def _header(path: str) -> tuple[np.dtype, tuple[int, ...]]:
        with open(check_file(path, "a one-row .npy file"), "rb") as f:
            dtype, shape, _ = fmt.read_npy_header(f, path)
        if len(shape) < 1:
            raise FormatError(f"{path}: holds a 0-d array; a row needs a length (shape (length, ...)).")
        return dtype, shape

    def read(self, start: int, stop: int) -> dict[str, Any]:
        name, spec = next(iter(self.fields.items()))
        rows = []
        for path in self.files[start:stop]:
            row = np.load(path, allow_pickle=False)
            if row.dtype != spec.dtype or row.shape[1:] != spec.value_shape or row.ndim < 1:
                raise FormatError(f"{path}: changed while it was being converted ({row.dtype} {row.shape}).")
            rows.append(row)
        return {name: rows}


class TokenStreamSource(Source):
    """A headerless token file cut into rows after each separator token.

    Args:
        path: The token file (``np.memmap(..., mode="w+")`` or ``arr.tofile`` output).
        name: The field name.
        dtype: The token dtype (an integer dtype, e.g. ``"uint16"``).
        separator: The token that ends a row (e.g. GPT-2's ``50256``); it stays in
            its row. Tokens after the last separator form a last row.

    Raises:
        DatasetNotFoundError, CorruptFileError: From :func:`memseq.open_raw`.
        SchemaError: If the dtype is not an integer dtype or the separator does not fit it.
    """

    def __init__(self, path: str | os.PathLike, name: str, dtype: Any, separator: int):
        self.path = os.fspath(path)
        tokens = open_raw(check_file(self.path, "a token file"), dtype=dtype, shape=(-1,))
        if tokens.dtype.kind not in "iu":
            raise SchemaError(f"{self.path}: a token stream needs an integer dtype. Received: {tokens.dtype}")
        info = np.iinfo(tokens.dtype)
        separator = check_int(separator, "separator", info.min, where=self.path)
        if separator > info.max:
            raise SchemaError(f"{self.path}: separator {separator} does not fit {tokens.dtype}.")
        ends = [np.flatnonzero(tokens[a : a + _SCAN_TOKENS] == separator) + a + 1 for a in range(0, len(tokens), _SCAN_TOKENS)]
        ends = np.concatenate(ends) if ends else np.empty(0, np.int64)
        if len(tokens) and (not len(ends) or ends[-1] != len(tokens)):
            ends = np.append(ends, len(tokens))
        self.ends = ends.astype(np.int64)
        self.dtype_str, self.separator = tokens.dtype.str, separator
        self.fields = {name: field_spec_at(name, tokens.dtype, (None,), self.path)}
        self.num_rows = len(self.ends)
        self.description = self.path
        self._open_tokens = tokens

    def read(self, start: int, stop: int) -> dict[str, Any]:
        if self._open_tokens is None:
            self._open_tokens = open_raw(self.path, dtype=self.dtype_str, shape=(-1,))
        first = int(self.ends[start - 1]) if start else 0
        ends = self.ends[start:stop]
        values = self._open_tokens[first : int(ends[-1])] if len(ends) else np.empty(0, self.dtype_str)
        return {next(iter(self.fields)): np.split(values, ends[:-1] - first)}

    def close(self) -> None:
        self._open_tokens = None


def convert_streaming(dst: str, sources: list[Source], fields: dict[str, fmt.FieldSpec], owner: dict[str, int], *,
                      shard_rows: int | None, overwrite: bool, progress: bool | None) -> None:
    """Writes the sources' rows through one :class:`memseq.Writer` (for variable-length fields)."""
    from memseq.write.writer import Writer

    num_rows = sources[0].num_rows
    row_bytes = sum(spec.row_nbytes * (512 if spec.ragged else 1) for spec in fields.values())
    step = max(1, _PIECE_BYTES // max(row_bytes, 1))
    show = sys.stderr.isatty() if progress is None else bool(progress)
    with Writer(dst, fields, overwrite=overwrite, shard_rows=shard_rows, progress=show, total_rows=num_rows) as w:
        for a in range(0, num_rows, step):
            b = min(num_rows, a + step)
            batch = {}
            for i, source in enumerate(sources):
                batch.update({name: rows for name, rows in source.read(a, b).items() if owner[name] == i})
            w.append(batch)
    for source in sources:
        source.close()
