"""``memseq.save``: numpy arrays through the streaming Writer, Dask arrays in parallel.

The one public ``save``. It dispatches on the kind of arrays it is given: numpy
arrays and ragged lists are appended piece by piece to a :class:`memseq.Writer`
(here), Dask arrays are written chunk by chunk in parallel (:mod:`memseq.write.dask`).
Dask is imported only when the caller has already imported it.
"""

from __future__ import annotations

import os
import sys
from collections.abc import Mapping
from typing import Any

import numpy as np

from memseq.errors import SchemaError
from memseq.read.arrays import rows_array
from memseq.remote.urls import is_url
from memseq.util.checks import equal_row_counts
from memseq.write import ragged as _ragged_write
from memseq.write.upload import staged_upload
from memseq.write.writer import Writer

__all__ = ["save"]

# save() appends about this many bytes of rows at a time (the Writer then writes
# them in smaller pieces): few appends, yet never a whole-field copy in memory.
_APPEND_BYTES = 64 * 2**20
# The size of one row of a variable-length field, for sizing the appends only.
_RAGGED_ROW_VALUES = 256


def save(
    path: str | os.PathLike,
    data: Mapping[str, Any],
    *,
    overwrite: bool = False,
    shard_rows: int | None = None,
    progress: bool = False,
    storage_options: dict[str, Any] | None = None,
) -> None:
    """Writes a mapping of equally long arrays as a memseq dataset, atomically.

    numpy arrays (``ndarray``, ``np.memmap``, memseq columns) are streamed in pieces,
    so saving a memmap larger than RAM works. If any value is a Dask array, every
    chunk is written in parallel on the Dask scheduler in effect (threads,
    processes or a ``dask.distributed`` cluster sharing the filesystem), straight
    into pre-sized files, with one atomic commit at the end; a failed task commits
    nothing. Both give byte-identical datasets for the same values.

    Args:
        path: The dataset directory to create, or a URL (``s3://...``: staged locally,
            then uploaded, data files first and the manifest last, so that a reader
            never sees a half-written dataset).
        data: Mapping of field name -> array (ndarray, ``np.memmap``, memseq column,
            Dask array) with equal first dimensions; the rest of each shape is the
            row shape. A list (or tuple) of ndarrays, or a ragged column, is a
            variable-length field: its dtype is the rows' common dtype, its shape
            ``(None, *trailing)`` (use :class:`memseq.Writer` for a variable-length
            field without rows, or beside Dask arrays).
        overwrite: Replace an existing memseq dataset; it stays readable until the
            new one is committed.
        shard_rows: Start a new shard every this many rows.
        progress: Show a progress bar (tqdm; for Dask arrays, Dask's own on local
            schedulers; a distributed cluster has its dashboard).
        storage_options: For a URL: keyword arguments of its fsspec filesystem.

    Raises:
        DatasetExistsError: If ``path`` exists and ``overwrite`` is False, or it
            exists and is not a memseq dataset.
        SchemaError: For invalid names or dtypes, unequal lengths, a value without a
            row dimension; for a Dask array, unknown chunk sizes or a computed block
            that is not what its chunk declared (other rows, another row shape, a
            dtype that does not cast safely), named by field and rows.
        WriteError: If the filesystem fails (disk full, file size limit,
            permissions), naming ``path``.
        Exception: Whatever a Dask task raised. Nothing is committed, whatever the error.

    Example:
        >>> memseq.save("data/train", {"image": images, "label": labels})
        >>> memseq.save("data/tokens", {"tokens": [np.arange(5), np.arange(3)], "label": np.array([0, 1])})
        >>> memseq.save("data/big", {"x": dask_array, "y": labels})   # in parallel
    """
    if is_url(path):
        _save_to_url(path, data, overwrite, shard_rows, progress, storage_options)
        return
    dask_array = getattr(sys.modules.get("dask.array"), "Array", None)  # never imports Dask itself
    if isinstance(data, Mapping) and dask_array is not None and any(isinstance(a, dask_array) for a in data.values()):
        from memseq.write.dask import write_dask

        return write_dask(path, data, overwrite=overwrite, shard_rows=shard_rows, progress=progress)
    _write_arrays(path, data, overwrite, shard_rows, progress)


def _save_to_url(url: str, data: Any, overwrite: bool, shard_rows: int | None, progress: bool, options: Any) -> None:
    """:func:`save` to a URL: written in a local staging folder, then uploaded (manifest last)."""
    with staged_upload(url, options, overwrite) as local:
        save(local, data, shard_rows=shard_rows, progress=progress)


def _write_arrays(path: str | os.PathLike, data: Any, overwrite: bool, shard_rows: int | None, progress: bool) -> None:
    """The numpy path of :func:`save`: infers the fields, then appends in pieces to one :class:`Writer`."""
    if not isinstance(data, Mapping) or not data:
        raise SchemaError(f"save() takes a non-empty mapping of field name -> array. Received: {type(data).__name__}")
    ragged = {name: arr for name, arr in data.items() if _ragged_write.is_ragged_input(arr)}
    arrays = {
        name: arr if name in ragged else rows_array(arr, f"Field {name!r}:", expected="at least one dimension (rows)")
        for name, arr in data.items()
    }
    n = equal_row_counts({name: len(arr) if name in ragged else arr.shape[0] for name, arr in arrays.items()})
    fields = {
        name: _ragged_write.infer_ragged_field(name, arr) if name in ragged else (arr.dtype, tuple(arr.shape[1:]))
        for name, arr in arrays.items()
    }
    # Only the size of the appends depends on row_bytes, never the bytes written.
    row_bytes = sum(
        np.dtype(d).itemsize * int(np.prod([_RAGGED_ROW_VALUES if x is None else x for x in s], dtype=np.int64))
        for d, s in fields.values()
    )
    step = max(1, _APPEND_BYTES // max(row_bytes, 1))
    with Writer(path, fields, overwrite=overwrite, shard_rows=shard_rows, progress=progress, total_rows=n) as w:
        if n == 0:
            return
        for start in range(0, n, step):
            w.append({name: arr[start : start + step] for name, arr in arrays.items()})
