"""The parallel pre-sized writer: plan the files, write rows in place (in worker processes), commit.

:func:`memseq.convert.convert` and the Dask path of :func:`memseq.save` write through
here, in three steps:

1. **plan** (:func:`plan_dataset`): create the temporary directory's files pre-sized
   with their final ``.npy`` headers. The shard layout comes from
   :func:`memseq.storage.format.shard_layout`, as in :class:`memseq.Writer`, so the
   output is byte-identical to :func:`memseq.save` and does not depend on ``jobs``.
2. **run** (:func:`write_rows`, or the caller's own tasks): write every work unit's rows
   (a few MiB, never straddling a shard) at their final offsets with ``pwrite``, in
   this process or a pool of spawned worker processes; each unit returns the CRC-32
   of the bytes it wrote per field.
3. **finish** (:func:`finish_dataset`): combine the units' CRC-32s in file order (no
   second read), fsync, write the manifest *last* and rename the directory into place.

Rows come from :class:`RowSource` objects. Any error removes the temporary
directory: nothing appears at the destination.
"""

from __future__ import annotations

import collections
import dataclasses
import multiprocessing
import os
from concurrent.futures import Future, ThreadPoolExecutor
from collections.abc import Callable
from typing import Any, Protocol, runtime_checkable

import numpy as np

from memseq.errors import MemseqError
from memseq.storage import commit as _commit
from memseq.storage import files as _fs
from memseq.storage import format as fmt
from memseq.storage.checksum import crc32, crc32_combine
from memseq.write.writer import checked_rows

__all__ = ["RowSource", "Plan", "Unit", "UnitCrcs", "UNIT_BYTES", "plan_dataset", "finish_dataset", "write_rows"]

# A work unit holds about this many bytes of rows (all fields together): large
# enough that per-unit overhead (a pickle round trip, a CRC combine) is negligible,
# small enough that the progress bar moves and jobs balance.
UNIT_BYTES = 32 * 2**20
# Inside a unit, rows are read and written in pieces of about this many bytes.
_CHUNK_BYTES = 8 * 2**20

#: (shard index, first row, end row) of a work unit.
Unit = tuple[int, int, int]
#: Field name -> (CRC-32 of the bytes a unit wrote, number of bytes).
UnitCrcs = dict[str, tuple[int, int]]


@runtime_checkable
class RowSource(Protocol):
    """A table of rows read on demand: what the parallel writer reads from.

    :class:`memseq.convert.Source` (the base of every conversion source) satisfies it.
    A source is pickled to worker processes: it must hold paths and small metadata
    only, and reopen files lazily. :meth:`read` is called from one thread per process.

    Attributes:
        fields: The fields this source provides (name -> :class:`memseq.storage.format.FieldSpec`).
        num_rows: Its number of rows.
        description: A short human-readable description, to start messages with.
        max_unit_rows: Largest number of rows per work unit, or None for no limit
            (sources that decode rows one by one, like images, set a small one).
    """

    fields: dict[str, fmt.FieldSpec]
    num_rows: int
    description: str
    max_unit_rows: int | None

    def read(self, start: int, stop: int) -> dict[str, np.ndarray]:
        """Returns rows ``[start, stop)`` of every field (array-likes of ``stop - start`` rows each).

        The rows are checked against ``fields`` before a byte is written (row count,
        row shape, a dtype that casts safely): a source whose rows are not what it
        declared gets a :class:`~memseq.SchemaError` naming its description.

        The arrays are written while the next rows are read: the source must not change
        them after returning them (return new arrays, or views of data that stays put).
        """
        ...

    def close(self) -> None:
        """Releases open files (they are reopened on the next read)."""
        ...


@dataclasses.dataclass
class Plan:
    """Everything a worker needs: the sources, the fields, the temporary directory and the file layout.

    Attributes:
        root: The temporary directory being filled.
        dst: The dataset being written, named in messages.
        sources: The row sources.
        fields: Every field, in manifest order.
        owner: Field name -> index of the source that provides it.
        shard_rows: Rows per shard, or None for one shard.
        shards: (first row, end row) of each shard.
        header_lengths: Field name -> the length of its files' ``.npy`` header.
    """

    root: str
    dst: str
    sources: list[RowSource]
    fields: dict[str, fmt.FieldSpec]
    owner: dict[str, int]
    shard_rows: int | None
    shards: list[tuple[int, int]]
    header_lengths: dict[str, int]

    @property
    def num_rows(self) -> int:
        return self.shards[-1][1]

    @property
    def row_nbytes(self) -> int:
        """Bytes per row, all fields together."""
        return sum(spec.row_nbytes for spec in self.fields.values())

    def rel_path(self, shard: int, name: str) -> str:
        return fmt.shard_file(shard, name, self.shard_rows)

    def path(self, shard: int, name: str) -> str:
        return os.path.join(self.root, self.rel_path(shard, name))


# --------------------------------------------------------------------------- plan


def plan_dataset(root: str, sources: list[RowSource], fields: dict[str, fmt.FieldSpec], owner: dict[str, int],
                 shard_rows: int | None, dst: str) -> Plan:
    """The plan of a write into ``root`` (the temporary directory of ``dst``), whose data files it creates
    with their final size.

    Raises:
        WriteError: If the files cannot be created or sized (disk full, file size limit, read-only filesystem).
    """
    plan = Plan(
        root=root,
        dst=dst,
        sources=sources,
        fields=fields,
        owner=owner,
        shard_rows=shard_rows,
        shards=[(start, stop) for _, start, stop in fmt.shard_layout(sources[0].num_rows, shard_rows)],
        header_lengths={n: fmt.reserved_header_length(s.dtype, s.shape) for n, s in fields.items()},
    )
    # Pre-size every file with its final header; workers fill in the rows.
    with _fs.writing(dst):
        _presize(plan)
    return plan


def _presize(plan: Plan) -> None:
    root, fields, shard_rows = plan.root, plan.fields, plan.shard_rows
    for s, (start, stop) in enumerate(plan.shards):
        directory = fmt.shard_directory(s, shard_rows)
        if directory:
            os.mkdir(os.path.join(root, directory))
        for field, spec in fields.items():
            with open(plan.path(s, field), "xb") as f:
                f.write(fmt.npy_header(spec.dtype, (stop - start, *spec.shape), plan.header_lengths[field]))
                f.truncate(plan.header_lengths[field] + (stop - start) * spec.row_nbytes)


def _units(plan: Plan) -> list[Unit]:
    """The work units: about ``UNIT_BYTES`` of rows each, never straddling a shard."""
    unit_rows = max(1, UNIT_BYTES // max(plan.row_nbytes, 1))
    for source in plan.sources:
        if source.max_unit_rows is not None:
            unit_rows = min(unit_rows, source.max_unit_rows)
    units = []
    for s, (first, end) in enumerate(plan.shards):
        for start in range(first, end, unit_rows):
            units.append((s, start, min(end, start + unit_rows)))
    return units


# --------------------------------------------------------------------------- run (in each worker)

_WORKER_PLAN: Plan | None = None
_WORKER_FDS: dict[str, int] = {}


def _init_worker(plan: Plan | None) -> None:
    global _WORKER_PLAN
    _WORKER_PLAN = plan
    _WORKER_FDS.clear()


def _close_worker_files() -> None:
    for fd in _WORKER_FDS.values():
        os.close(fd)
    _WORKER_FDS.clear()
    if _WORKER_PLAN is not None:
        for source in _WORKER_PLAN.sources:
            source.close()


def _pwrite_all(path: str, view: memoryview, offset: int) -> None:
    fd = _WORKER_FDS.get(path)
    if fd is None:
        fd = _WORKER_FDS[path] = os.open(path, os.O_WRONLY | getattr(os, "O_CLOEXEC", 0))
    while view:
        n = os.pwrite(fd, view, offset)
        view, offset = view[n:], offset + n


def _write_unit(unit: Unit, progress: Callable[[int], None] | None = None) -> UnitCrcs:
    """Reads rows ``[start, stop)`` of shard ``s`` and writes them in place.

    Each chunk's checksums and writes run on a writer thread while the next chunk is
    read (both mostly outside the GIL: decoding in the source's library, ``pwrite``,
    ISA-L's CRC); at most one chunk waits to be written.

    Returns:
        Field name -> (CRC-32 of the bytes written, number of bytes).
    """
    plan = _WORKER_PLAN
    if plan is None:
        raise RuntimeError("memseq.convert: worker used before _init_worker().")
    s, start, stop = unit
    shard_start = plan.shards[s][0]
    step = max(1, _CHUNK_BYTES // max(plan.row_nbytes, 1))
    crcs = {name: 0 for name in plan.fields}

    def write(chunk: list[tuple[str, np.ndarray, int]]) -> None:
        for name, data, offset in chunk:
            view = memoryview(data.reshape(-1).view(np.uint8)) if data.size else memoryview(b"")
            crcs[name] = crc32(view, crcs[name])
            with _fs.writing(plan.dst, f"the data of field {name!r}"):
                _pwrite_all(plan.path(s, name), view, offset)

    with ThreadPoolExecutor(1, thread_name_prefix="memseq-write") as writer:
        pending: Future | None = None
        for a in range(start, stop, step):
            b = min(stop, a + step)
            chunk = []
            for i, source in enumerate(plan.sources):
                for name, array in source.read(a, b).items():
                    if plan.owner[name] == i:
                        spec = plan.fields[name]
                        data = checked_rows(array, spec, b - a, f"{source.description} (rows {a}:{b})")
                        chunk.append((name, data, plan.header_lengths[name] + (a - shard_start) * spec.row_nbytes))
            if pending is not None:
                pending.result()  # re-raises the writer's error
            pending = writer.submit(write, chunk)
            if progress is not None:
                progress(b - a)
        if pending is not None:
            pending.result()
    return {name: (crcs[name], (stop - start) * spec.row_nbytes) for name, spec in plan.fields.items()}


# --------------------------------------------------------------------------- run (the parent)


def _pool_context() -> multiprocessing.context.BaseContext:
    # spawn: workers start clean (no inherited threads or locks, e.g. tqdm's or
    # TensorFlow's), as they will by default on Python 3.14 (forkserver).
    return multiprocessing.get_context("spawn")


def _run_here(plan: Plan, units: list[Unit], update: Callable[[int], Any]) -> dict[Unit, UnitCrcs]:
    _init_worker(plan)
    try:
        return {unit: _write_unit(unit, update) for unit in units}
    finally:
        _close_worker_files()
        _init_worker(None)


def _run_pool(plan: Plan, units: list[Unit], jobs: int, update: Callable[[int], Any]) -> dict[Unit, UnitCrcs]:
    from concurrent.futures import FIRST_EXCEPTION, ProcessPoolExecutor, wait
    from concurrent.futures.process import BrokenProcessPool

    results = {}
    with ProcessPoolExecutor(
        max_workers=min(jobs, len(units)), mp_context=_pool_context(), initializer=_init_worker, initargs=(plan,)
    ) as pool:
        futures = {pool.submit(_write_unit, unit): unit for unit in units}
        try:
            pending = set(futures)
            while pending:
                done, pending = wait(pending, return_when=FIRST_EXCEPTION)
                for future in done:
                    unit = futures[future]
                    results[unit] = future.result()  # re-raises a worker's error
                    update(unit[2] - unit[1])
        except BrokenProcessPool as e:
            raise MemseqError(
                "A conversion worker process died (killed, out of memory, or the calling script "
                "lacks an `if __name__ == \"__main__\":` guard, which multiprocessing's spawn needs)."
            ) from e
        except BaseException:
            for future in futures:
                future.cancel()
            raise
    return results


def _run(plan: Plan, units: list[Unit], jobs: int, progress: bool | None, desc: str) -> dict[Unit, UnitCrcs]:
    """Writes every unit (in ``jobs`` worker processes); returns each unit's CRC-32s."""
    from tqdm.auto import tqdm

    bar = tqdm(total=plan.num_rows, unit="rows", unit_scale=True, desc=desc, disable=None if progress is None else not progress)
    try:
        if jobs == 1 or len(units) <= 1:
            results = _run_here(plan, units, bar.update)
        else:
            results = _run_pool(plan, units, jobs, bar.update)
    finally:
        bar.close()
    for source in plan.sources:
        source.close()
    return results


# --------------------------------------------------------------------------- finish


def finish_dataset(plan: Plan, results: dict[Unit, UnitCrcs], overwrite: bool) -> None:
    """Combines the units' CRC-32s in file order, fsyncs, writes the manifest last, publishes at ``plan.dst``.

    Args:
        plan: The plan whose files every unit has filled.
        results: Each unit's CRC-32s; the units must cover every row of every field.
        overwrite: Replace an existing memseq dataset at ``plan.dst``.

    Raises:
        WriteError: If the filesystem fails (disk full, file size limit, read-only).
        DatasetExistsError: If ``plan.dst`` appeared meanwhile and ``overwrite`` is False.
    """
    with _fs.writing(plan.dst):
        _finish(plan, results, overwrite)


def _finish(plan: Plan, results: dict[Unit, UnitCrcs], overwrite: bool) -> None:
    shard_units = collections.defaultdict(list)
    for unit in sorted(results):
        shard_units[unit[0]].append(unit)
    shard_specs = []
    for s, (start, stop) in enumerate(plan.shards):
        entries = {}
        for field in plan.fields:
            crc = 0
            for unit in shard_units[s]:
                piece_crc, piece_len = results[unit][field]
                crc = crc32_combine(crc, piece_crc, piece_len)
            _commit.fsync_file(plan.path(s, field))
            entries[field] = fmt.FileEntry(plan.rel_path(s, field), fmt.format_checksum(crc))
        directory = fmt.shard_directory(s, plan.shard_rows)
        if directory:
            _commit.fsync_dir(os.path.join(plan.root, directory))
        shard_specs.append(fmt.ShardSpec(stop - start, entries))
    _commit.write_manifest(plan.root, fmt.Manifest(plan.num_rows, dict(plan.fields), tuple(shard_specs)))
    _commit.publish(plan.root, plan.dst, overwrite)


# --------------------------------------------------------------------------- all three steps


def write_rows(
    dst: str,
    sources: list[RowSource],
    fields: dict[str, fmt.FieldSpec],
    owner: dict[str, int],
    *,
    shard_rows: int | None,
    jobs: int,
    overwrite: bool,
    progress: bool | None,
    desc: str,
) -> None:
    """Writes the rows of ``sources`` as a dataset at ``dst``: plan, run in ``jobs`` processes, finish.

    Args:
        dst: The absolute path of the dataset to create.
        sources: Sources with equal row counts (checked by the caller), fixed-size fields only.
        fields: Every field, in manifest order.
        owner: Field name -> index in ``sources`` of the source that provides it.
        shard_rows: Rows per shard (already checked), or None.
        jobs: Worker processes (1: this process).
        overwrite: Replace an existing memseq dataset at ``dst``.
        progress: Show a tqdm progress bar (None: only on a terminal).
        desc: The progress bar's label.

    Raises:
        DatasetExistsError: If ``dst`` exists and ``overwrite`` is False, or it is not a memseq dataset.
        WriteError: If the filesystem fails while writing, naming ``dst``.
        SchemaError: If a source's rows are not what its fields declare.
        MemseqError: If a worker process died. A source's other ``OSError`` becomes
            the matching memseq error (naming the file). Nothing is left at ``dst``.
    """
    with _fs.writing(dst):
        _commit.check_target(dst, overwrite)
        tmp = _commit.make_temp_dir(dst)
    try:
        plan = plan_dataset(tmp, sources, fields, owner, shard_rows, dst)
        results = _run(plan, _units(plan), jobs, progress, desc)
        finish_dataset(plan, results, overwrite)
    except OSError as e:
        _commit.remove_temp_dir(tmp)
        if isinstance(e, MemseqError):
            raise
        # Writes raise WriteError where they happen: what is left failed reading a source.
        raise _fs.os_error(e, e.filename or dst, "a source file" if e.filename else "a source") from e
    except BaseException:
        _commit.remove_temp_dir(tmp)  # deletes it and drops its lock, as Writer.abort does
        raise
