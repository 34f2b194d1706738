"""The shard layout: which shard holds which rows, and where its files live.

One rule for :class:`memseq.Writer` and :func:`memseq.convert.convert`, so both write
the same files for the same rows (see the format specification in :mod:`memseq.storage.format`).
"""

from __future__ import annotations

from typing import Any

import numpy as np

from memseq.errors import SchemaError
from memseq.util.checks import check_int

__all__ = ["check_shard_rows", "shard_layout", "shard_directory", "shard_file"]


def check_shard_rows(shard_rows: Any) -> int | None:
    """Returns ``shard_rows`` if it is None or an int in ``[1, 2**63 - 1]``; else raises SchemaError."""
    if shard_rows is None:
        return None
    if isinstance(shard_rows, bool) or not isinstance(shard_rows, (int, np.integer)) or shard_rows < 1:
        raise SchemaError(f"shard_rows must be a positive int or None. Received: {shard_rows!r}")
    return check_int(shard_rows, "shard_rows", 1)  # bounded above like every integer


def shard_layout(num_rows: int, shard_rows: int | None, first_row: int = 0) -> list[tuple[int, int, int]]:
    """Which shard holds which rows: ``(shard, start, stop)`` pieces of rows ``[first_row, num_rows)``.

    Shard ``k`` holds rows ``[k * shard_rows, (k + 1) * shard_rows)``; without
    ``shard_rows`` shard 0 holds every row. A table without rows has one empty shard
    0. A streaming writer passes the rows written so far as ``first_row``.

    Example:
        >>> shard_layout(5, 2)
        [(0, 0, 2), (1, 2, 4), (2, 4, 5)]
    """
    if num_rows == 0:
        return [(0, 0, 0)]
    if shard_rows is None:
        return [(0, first_row, num_rows)] if first_row < num_rows else []
    pieces = []
    start = first_row
    while start < num_rows:
        shard = start // shard_rows
        stop = min(num_rows, (shard + 1) * shard_rows)
        pieces.append((shard, start, stop))
        start = stop
    return pieces


def shard_directory(shard: int, shard_rows: int | None) -> str:
    """The sub-directory of shard ``shard`` (``"shard-00000"``), or ``""`` when unsharded."""
    return "" if shard_rows is None else f"shard-{shard:05d}"


def shard_file(shard: int, field: str, shard_rows: int | None) -> str:
    """The manifest path (relative, ``/``-separated) of ``field``'s file in shard ``shard``."""
    directory = shard_directory(shard, shard_rows)
    return f"{directory}/{field}.npy" if directory else f"{field}.npy"
