"""Conversion sources written through Dask: blocks of rows read by Dask tasks, on any Dask scheduler.

For inputs of many files (TFRecord shards, Parquet parts, tar shards) on a cluster:
each block of about 64 MiB of rows is one Dask task that reads the block from the
source (every field at once) on a worker; :func:`memseq.save`'s Dask path writes the
blocks in place, combines their CRC-32s and commits atomically (nothing is left at
``dst`` if a task fails). The workers must see the source files and ``dst`` at the
same paths. Fields of variable length are not supported here (use :func:`convert`).
"""

from __future__ import annotations

import os
import pickle
from collections.abc import Iterable
from typing import Any

from memseq.convert._base import Source
from memseq.convert._dask_inputs import write_on_scheduler
from memseq.errors import SchemaError
from memseq.read.dataset import Dataset

__all__ = ["source_dask_arrays", "convert_sources_with_dask"]

# A block of rows (all of a source's fields together) is about this large.
_BLOCK_BYTES = 64 * 2**20


def _read_block(source: Source, start: int, stop: int) -> dict[str, Any]:
    """Runs in a Dask worker: rows ``[start, stop)`` of every field of ``source``.

    Each task reads through its own copy of the source, as a worker process would get
    it (a source pickles to paths and metadata, and reopens files lazily): tasks on the
    threads of one worker must not share open files, which one task would close under
    another ("Bad file descriptor").
    """
    own = pickle.loads(pickle.dumps(source))
    try:
        return own.read(start, stop)
    finally:
        own.close()


def source_dask_arrays(sources: Source | Iterable[Source]) -> dict[str, Any]:
    """One Dask array per field of ``sources``, whose blocks read the rows when computed.

    Raises:
        SchemaError: For a variable-length field, a field given twice or unequal row counts.
    """
    import dask
    import dask.array as da
    import numpy as np

    sources = [sources] if isinstance(sources, Source) else list(sources)
    arrays: dict[str, Any] = {}
    for source in sources:
        ragged = [n for n, s in source.fields.items() if s.ragged]
        if ragged:
            raise SchemaError(f"{source.description}: field(s) {ragged} have variable length; Dask writes fixed fields "
                              "only. Convert without --scheduler (memseq.convert.convert).")
        row_nbytes = sum(s.row_nbytes for s in source.fields.values())
        step = max(1, _BLOCK_BYTES // max(row_nbytes, 1))
        pieces: dict[str, list[Any]] = {name: [] for name in source.fields}
        for start in range(0, source.num_rows, step):
            stop = min(source.num_rows, start + step)
            block = dask.delayed(_read_block, pure=True)(source, start, stop)
            for name, spec in source.fields.items():
                pieces[name].append(da.from_delayed(block[name], shape=(stop - start, *spec.shape), dtype=spec.dtype))
        for name, spec in source.fields.items():
            if name in arrays:
                raise SchemaError(f"Field {name!r} comes from two sources; give each field a distinct name.")
            arrays[name] = da.concatenate(pieces[name]) if pieces[name] else da.zeros((0, *spec.shape), np.dtype(spec.dtype))
    return arrays


def convert_sources_with_dask(
    dst: str | os.PathLike,
    sources: Source | Iterable[Source],
    *,
    shard_rows: int | None = None,
    jobs: int = 1,
    scheduler: str | None = None,
    overwrite: bool = False,
    progress: bool | None = False,
) -> Dataset:
    """Converts sources of fixed fields into a memseq dataset through Dask, atomically.

    The output is byte-identical to :func:`memseq.convert.convert` of the same sources.

    Args:
        dst: The dataset directory to create.
        sources: One source or several with equal row counts and distinct fields.
        shard_rows: Start a new shard every this many rows.
        jobs: Threads or processes of a local scheduler (1: Dask's default, one per core).
        scheduler: ``"threads"`` (default), ``"processes"``, ``"synchronous"``, or the
            address of a ``dask.distributed`` scheduler (``tcp://host:8786``) whose
            workers see the source files and ``dst``'s filesystem.
        overwrite: Replace an existing memseq dataset at ``dst``.
        progress: Show Dask's progress bar (None: only on a terminal).

    Returns:
        The new dataset, opened.

    Raises:
        SchemaError: For a variable-length field (see :func:`source_dask_arrays`).
    """
    arrays = source_dask_arrays(sources)
    return write_on_scheduler(dst, arrays, scheduler=scheduler, jobs=jobs, shard_rows=shard_rows,
                              overwrite=overwrite, progress=progress)
