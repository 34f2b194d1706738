"""``memseq.save``: numpy arrays through the streaming Writer, Dask arrays in parallel.

The one public ``save`` dispatches on the kind of arrays it is given, so that the
storage layer (:mod:`memseq.write.writer`) never depends on the conversion engine that
writes Dask arrays in parallel (:mod:`memseq.write.dask`): data flows one
way, and Dask is imported only when the caller has already imported it.
"""

from __future__ import annotations

import os
import sys
from collections.abc import Mapping
from typing import Any

from memseq.write import writer

__all__ = ["save"]


def save(
    path: str | os.PathLike,
    data: Mapping[str, Any],
    *,
    overwrite: bool = False,
    shard_rows: int | None = None,
    progress: bool = False,
) -> None:
    """Writes a mapping of equally long arrays as a memseq dataset, atomically.

    numpy arrays (``ndarray``, ``np.memmap``, memseq columns) are streamed in pieces,
    so saving a memmap larger than RAM works. If any value is a Dask array, every
    chunk is written in parallel on the Dask scheduler in effect (threads,
    processes or a ``dask.distributed`` cluster sharing the filesystem), straight
    into pre-sized files, with one atomic commit at the end; a failed task commits
    nothing. Both give byte-identical datasets for the same values.

    Args:
        path: The dataset directory to create.
        data: Mapping of field name -> array with equal first dimensions; the rest
            of each shape is the row shape.
        overwrite: Replace an existing memseq dataset; it stays readable until the
            new one is committed.
        shard_rows: Start a new shard every this many rows.
        progress: Show a progress bar.

    Raises:
        DatasetExistsError: If ``path`` exists and ``overwrite`` is False.
        SchemaError: For invalid names, dtypes, or unequal lengths.
        WriteError: If the filesystem fails (disk full, file size limit, permissions).

    Example:
        >>> memseq.save("data/train", {"image": images, "label": labels})
        >>> memseq.save("data/big", {"x": dask_array, "y": labels})   # in parallel
    """
    dask_array = getattr(sys.modules.get("dask.array"), "Array", None)  # never imports Dask itself
    if isinstance(data, Mapping) and dask_array is not None and any(isinstance(a, dask_array) for a in data.values()):
        from memseq.write.dask import save_dask

        return save_dask(path, data, overwrite=overwrite, shard_rows=shard_rows, progress=progress)
    return writer.save(path, data, overwrite=overwrite, shard_rows=shard_rows, progress=progress)
