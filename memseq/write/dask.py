"""Writing Dask arrays as a memseq dataset: every chunk in parallel, one atomic commit.

``memseq.save(path, {"x": dask_array, ...})`` comes here when any value is a Dask
array. The write uses the parallel pre-sized writer (:mod:`memseq.write.parallel`),
as :func:`memseq.convert.convert` does:

1. **plan** with :func:`~memseq.write.parallel.plan_dataset`: a temporary directory beside ``path`` with
   every ``.npy`` file pre-sized and its final header written, and the shard
   layout of :func:`memseq.storage.format.shard_layout`, so the bytes are exactly those
   :func:`memseq.save` writes for the computed arrays;
2. **run** one Dask task per row block of each Dask field, on the scheduler in
   effect (threads, processes, or a ``dask.distributed`` cluster whose workers see
   the same filesystem). A task computes its block, writes it with ``pwrite`` at
   its final offset in the pre-sized files, and returns the CRC-32 of each piece
   it wrote. Blocks are the arrays' own row chunks (inner axes are merged into one
   chunk so that a block is contiguous on disk), so no chunk is computed twice;
3. **finish** with :func:`~memseq.write.parallel.finish_dataset`: combine the pieces' CRC-32s in file order
   (``crc32_combine``, no second read), fsync, write the manifest last, rename.

Fields that are not Dask arrays (an ndarray of labels beside Dask images) are
written by the calling process, piece by piece, before the tasks run.

A task that raises, a lost worker or a cancelled computation (Ctrl-C) removes
the temporary directory: nothing appears at ``path``. Each computed block is checked
against its chunk (rows, row shape, a dtype that casts safely) before a byte of it is
written: a block that lies would shift rows, leave zeros or wrap values. Tasks open the data files
without ``O_CREAT``, so a straggler that runs after the cleanup fails instead of
recreating a file.
"""

from __future__ import annotations

import math
import os
from collections.abc import Mapping
from typing import Any

import dask
import dask.array as da
import numpy as np

from memseq.errors import SchemaError
from memseq.read.arrays import rows_array
from memseq.storage import commit as _commit
from memseq.storage import files as _fs
from memseq.storage import format as fmt
from memseq.storage.checksum import crc32
from memseq.util.checks import equal_row_counts
from memseq.write.parallel import UNIT_BYTES, Plan, Unit, finish_dataset, plan_dataset
from memseq.write.ragged import is_ragged_input
from memseq.write.writer import checked_rows

__all__ = ["write_dask"]

# Non-Dask fields are copied and written in pieces of about this many bytes.
_PIECE_BYTES = 16 * 2**20
_OPEN_FLAGS = os.O_WRONLY | getattr(os, "O_CLOEXEC", 0)

#: (unit, file path, byte offset in the file, first row, end row inside the block). A
#: unit here is the rows between two consecutive boundaries (shard starts and every
#: Dask field's chunk starts).
_Piece = tuple[Unit, str, int, int, int]


class _ArraySource:
    """One array as a :class:`~memseq.write.parallel.RowSource`: the planner needs its fields and rows."""

    max_unit_rows = None

    def __init__(self, name: str, array: Any, spec: fmt.FieldSpec):
        self.fields = {name: spec}
        self.num_rows = int(array.shape[0])
        self.description = f"field {name!r} ({type(array).__name__})"
        self.array = array

    def read(self, start: int, stop: int) -> dict[str, np.ndarray]:
        name = next(iter(self.fields))
        return {name: np.asarray(self.array[start:stop])}

    def close(self) -> None:
        """Nothing to release: the array is the caller's."""


def _pwrite_all(fd: int, view: memoryview, offset: int) -> None:
    while view:
        n = os.pwrite(fd, view, offset)
        view, offset = view[n:], offset + n


def _write_block(
    block: Any, spec: fmt.FieldSpec, rows: tuple[int, int], pieces: list[_Piece], dst: str
) -> tuple[str, list[tuple[Unit, int, int]]]:
    """Runs in a Dask worker: checks one computed block of field ``spec`` and writes it in place.

    The block must be exactly what its chunk declared (the rows ``rows``, the row
    shape, a dtype that casts safely): :func:`memseq.write.writer.check_block`, the rule of
    every write. A block that lies would shift or leave out rows, or wrap values.

    Returns:
        ``(name, [(unit, CRC-32 of the piece, bytes) for each piece])``.

    Raises:
        SchemaError: For a block that is not what its chunk declared.
        WriteError: If the filesystem fails.
    """
    r0, r1 = rows
    data = checked_rows(block, spec, r1 - r0, f"{dst}: the Dask block of rows {r0}:{r1} (as its chunk declares)")
    raw = memoryview(data.reshape(-1).view(np.uint8)) if data.size else memoryview(b"")
    row_nbytes = spec.row_nbytes
    results = []
    fds: dict[str, int] = {}
    try:
        with _fs.writing(dst, f"the data of field {spec.name!r}"):
            for unit, path, offset, lo, hi in pieces:
                view = raw[lo * row_nbytes : hi * row_nbytes]
                fd = fds.get(path)
                if fd is None:
                    fd = fds[path] = os.open(path, _OPEN_FLAGS)  # never O_CREAT: see the module docstring
                _pwrite_all(fd, view, offset)
                # Start writing this block to disk now, while other tasks compute: the
                # commit's fsync then waits for little. (DONTNEED on dirty pages starts
                # their writeback; Python has no sync_file_range.)
                os.posix_fadvise(fd, offset, len(view), os.POSIX_FADV_DONTNEED)
                results.append((unit, crc32(view), len(view)))
    finally:
        for fd in fds.values():
            os.close(fd)
    return spec.name, results


def _check_array(name: str, array: Any) -> Any:
    if is_ragged_input(array):
        # Pre-sized files need fixed-size rows; np.asarray would turn equal-length
        # rows into a fixed-size field, unlike the numpy path of save().
        raise SchemaError(
            f"Field {name!r}: a variable-length field (a list of arrays or a ragged column) cannot be saved beside "
            f"Dask arrays; write it with memseq.Writer, or compute the Dask arrays first. Received: {type(array).__name__}"
        )
    array = rows_array(array, f"Field {name!r}:", expected="at least one dimension (rows)")
    if isinstance(array, da.Array):
        if any(isinstance(d, float) and math.isnan(d) for d in array.shape):
            raise SchemaError(
                f"Field {name!r}: the Dask array has unknown chunk sizes (shape {array.shape}); "
                "call .compute_chunk_sizes() on it first, so that every block's place in the file is known."
            )
        inner = {axis: -1 for axis in range(1, array.ndim) if len(array.chunks[axis]) > 1}
        if inner:
            # A block must be whole rows to be contiguous in the file.
            array = array.rechunk(inner)
    return array


def _boundaries(num_rows: int, shards: list[tuple[int, int]], arrays: Mapping[str, Any]) -> list[int]:
    points = {0, num_rows}
    points.update(start for start, _ in shards)
    for array in arrays.values():
        if isinstance(array, da.Array):
            points.update(int(p) for p in np.cumsum((0, *array.chunks[0])))
    return sorted(p for p in points if 0 <= p <= num_rows)


def _units(bounds: list[int], shards: list[tuple[int, int]], row_nbytes: int) -> list[Unit]:
    """Units between consecutive boundaries; a block of only non-Dask rows is cut to ~UNIT_BYTES."""
    units = []
    shard = 0
    max_rows = max(1, UNIT_BYTES // max(row_nbytes, 1))
    for a, b in zip(bounds, bounds[1:]):
        while shards[shard][1] <= a:
            shard += 1
        for start in range(a, b, max_rows):
            units.append((shard, start, min(b, start + max_rows)))
    return units


def write_dask(path: str | os.PathLike, data: Mapping[str, Any], *, overwrite: bool, shard_rows: int | None,
               progress: bool) -> None:
    """The Dask path of :func:`memseq.save` (arguments, errors and guarantees: see there).

    ``progress`` shows Dask's progress bar (local schedulers; a distributed cluster
    has its dashboard). Whatever a task raises propagates; nothing is committed then.
    """
    path = os.path.abspath(_fs.check_path(path, "dataset path"))
    shard_rows = fmt.check_shard_rows(shard_rows)
    arrays = {name: _check_array(name, array) for name, array in data.items()}
    num_rows = equal_row_counts({name: int(a.shape[0]) for name, a in arrays.items()})
    fields = {name: fmt.field_spec(name, a.dtype, tuple(int(d) for d in a.shape[1:])) for name, a in arrays.items()}
    sources = [_ArraySource(name, arrays[name], spec) for name, spec in fields.items()]
    owner = {name: i for i, name in enumerate(fields)}
    with _fs.writing(path):
        _commit.check_target(path, overwrite)
        tmp = _commit.make_temp_dir(path)
    try:
        plan = plan_dataset(tmp, sources, fields, owner, shard_rows, path)
        units = _units(_boundaries(num_rows, plan.shards, arrays), plan.shards, plan.row_nbytes)
        results: dict[Unit, dict[str, tuple[int, int]]] = {unit: {} for unit in units}
        tasks = []
        for name, array in arrays.items():
            if isinstance(array, da.Array):
                tasks += _block_tasks(plan, name, array, units)
            else:
                _write_here(plan, name, array, units, results)
        if tasks:
            if progress:
                from dask.diagnostics import ProgressBar

                with ProgressBar():
                    outputs = dask.compute(*tasks)
            else:
                outputs = dask.compute(*tasks)
            for name, pieces in outputs:
                for unit, crc, nbytes in pieces:
                    results[unit][name] = (crc, nbytes)
        finish_dataset(plan, results, overwrite)
    except BaseException:
        _commit.remove_temp_dir(tmp)
        raise


def _block_tasks(plan: Plan, name: str, array: da.Array, units: list[Unit]) -> list[Any]:
    """One delayed task per row block of ``array``: compute, write its pieces, return their CRC-32s."""
    spec = plan.fields[name]
    starts = np.cumsum((0, *array.chunks[0]))
    blocks = array.to_delayed().reshape(-1)
    unit_starts = [u[1] for u in units]
    tasks = []
    write = dask.delayed(_write_block, pure=False)
    for j, block in enumerate(blocks):
        r0, r1 = int(starts[j]), int(starts[j + 1])
        if r0 == r1:
            continue
        pieces = []
        k = int(np.searchsorted(unit_starts, r0))
        while k < len(units) and units[k][1] < r1:
            unit = units[k]
            s, a, b = unit
            offset = plan.header_lengths[name] + (a - plan.shards[s][0]) * spec.row_nbytes
            pieces.append((unit, plan.path(s, name), offset, a - r0, b - r0))
            k += 1
        tasks.append(write(block, spec, (r0, r1), pieces, plan.dst))
    return tasks


def _write_here(plan: Plan, name: str, array: Any, units: list[Unit], results: dict[Unit, dict[str, tuple[int, int]]]) -> None:
    """Writes a non-Dask field in this process, unit by unit, in pieces (checked as Dask blocks are)."""
    spec = plan.fields[name]
    step = max(1, _PIECE_BYTES // max(spec.row_nbytes, 1))
    fds: dict[str, int] = {}
    try:
        for unit in units:
            s, a, b = unit
            file = plan.path(s, name)
            crc = 0
            for lo in range(a, b, step):
                hi = min(b, lo + step)
                rows = checked_rows(array[lo:hi], spec, hi - lo, f"{plan.dst}: rows {lo}:{hi}")
                view = memoryview(rows.reshape(-1).view(np.uint8)) if rows.size else memoryview(b"")
                crc = crc32(view, crc)
                with _fs.writing(plan.dst, f"the data of field {name!r}"):
                    fd = fds.get(file)
                    if fd is None:
                        fd = fds[file] = os.open(file, _OPEN_FLAGS)
                    _pwrite_all(fd, view, plan.header_lengths[name] + (lo - plan.shards[s][0]) * spec.row_nbytes)
            results[unit][name] = (crc, (b - a) * spec.row_nbytes)
    finally:
        for fd in fds.values():
            os.close(fd)
