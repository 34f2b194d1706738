"""Read-throughput benchmarks and page-cache tools (``memseq bench``, notebooks).

:func:`run_bench` times shuffled batches read three ways (``MemmapSequence``
indexing, ``to_tf_dataset()``, and the ``from_generator`` recipe memseq replaces),
each cold and hot, each in a fresh process. Cold runs need the data out of the page
cache: :func:`drop_page_cache` evicts a file's pages and :func:`cached_fraction`
checks with ``mincore`` how much of it is still resident.

Imports TensorFlow and Keras only in the benchmark's worker processes.
"""

from __future__ import annotations

import dataclasses
import gc
import mmap
import os
import time
from collections.abc import Callable, Sequence
from typing import Any

import numpy as np

import memseq
from memseq.errors import SchemaError
from memseq.storage import files as _fs
from memseq.util import libc as _libc

__all__ = ["METHOD_LABELS", "cached_fraction", "data_files", "drop_page_cache", "run_bench"]

#: The benchmark methods of :func:`run_bench` and how results name them.
METHOD_LABELS = {
    "sequence": "MemmapSequence seq[i]",
    "tf_data": "MemmapSequence.to_tf_dataset()",
    "baseline": "baseline: from_generator(np.memmap)",
}


# --------------------------------------------------------------------------- page cache


def data_files(ds: memseq.Dataset) -> list[str]:
    """The paths of a dataset's data files (every field of every shard)."""
    return [os.path.join(ds.path, entry.path) for shard in ds.manifest.shards for entry in shard.files.values()]


def drop_page_cache(paths: Sequence[str]) -> None:
    """Asks the kernel to drop the cached pages of ``paths`` (for cold-cache timing).

    Uses ``posix_fadvise(POSIX_FADV_DONTNEED)``, which needs no root for clean
    pages; each file is ``fdatasync``-ed first so that dirty pages are written and
    can be dropped too. Pages that a process still has mapped *and touched* stay in
    memory: close datasets (and run ``gc.collect()``) before calling this.

    Raises:
        NotRegularFileError: If a path is a FIFO, socket, device or directory.
        DatasetNotFoundError, DatasetPermissionError, FileAccessError: If a file
            cannot be opened.
    """
    for path in paths:
        fd, _ = _fs.open_regular(path, "data file")
        try:
            os.fdatasync(fd)
            os.posix_fadvise(fd, 0, 0, os.POSIX_FADV_DONTNEED)
        finally:
            os.close(fd)


def cached_fraction(paths: Sequence[str]) -> float:
    """The fraction of the bytes of ``paths`` in the page cache (via ``mincore``).

    Returns NaN where ``mincore`` is unavailable.

    Raises:
        NotRegularFileError: If a path is a FIFO, socket, device or directory.
        DatasetNotFoundError, DatasetPermissionError, FileAccessError: If a file
            cannot be opened.
    """
    if not _libc.available("mincore"):
        return float("nan")
    page = mmap.PAGESIZE
    cached = total = 0
    for path in paths:
        fd, st = _fs.open_regular(path, "data file")
        try:
            size = st.st_size
            if size == 0:
                continue
            with mmap.mmap(fd, size, access=mmap.ACCESS_READ) as m:
                pages = (size + page - 1) // page
                # ctypes cannot take the address of a read-only mmap; numpy can. Mapping
                # a file does not read it: mincore reports, it does not fault pages in.
                view = np.frombuffer(m, np.uint8)
                try:
                    vec = _libc.mincore(view.ctypes.data, size)
                except OSError:
                    vec = None
                del view
        finally:
            os.close(fd)
        if vec is None:
            return float("nan")
        cached += int(np.count_nonzero(vec & 1)) * page
        total += pages * page
    return cached / total if total else 0.0


def _read_through(paths: Sequence[str]) -> None:
    """Reads every file once, so that its pages are cached."""
    for path in paths:
        fd, _ = _fs.open_regular(path, "data file")
        with os.fdopen(fd, "rb") as fh:
            while fh.read(16 * 2**20):
                pass


# --------------------------------------------------------------------------- one method (in a fresh process)


@dataclasses.dataclass(frozen=True)
class _BenchJob:
    """What a benchmark process reads: the dataset, its fields and how many batches of what size."""

    path: str
    x: str
    y: str | None
    batch_size: int
    num_batches: int

    def sequence(self) -> Any:
        return memseq.MemmapSequence(self.path, x=self.x, y=self.y, batch_size=self.batch_size, shuffle=True, seed=0)


def _time_batches(batches: Any, count: int) -> tuple[float, int]:
    """Seconds to pull ``count`` batches from an iterator, and the samples pulled."""
    samples = 0
    t = time.perf_counter()
    for _ in range(count):
        batch = next(batches)
        first = batch[0] if isinstance(batch, tuple) else batch
        while isinstance(first, (tuple, list, dict)):
            first = next(iter(first.values())) if isinstance(first, dict) else first[0]
        samples += int(first.shape[0])
    return time.perf_counter() - t, samples


def _run_sequence(job: _BenchJob) -> tuple[float, int]:
    seq = job.sequence()
    return _time_batches((seq[i] for i in range(job.num_batches)), job.num_batches)


def _run_tf_data(job: _BenchJob) -> tuple[float, int]:
    # A new dataset per run serves the sequence's epoch 0 again: the same rows.
    it = iter(job.sequence().to_tf_dataset().take(job.num_batches + 1))
    next(it)  # builds the pipeline; not timed
    return _time_batches(it, job.num_batches)


def _run_baseline(job: _BenchJob) -> tuple[float, int]:
    import tensorflow as tf

    ds = memseq.open(job.path)
    shard = ds.manifest.shards[0]
    selected = [job.x] if job.y is None else [job.x, job.y]
    arrays = [np.load(os.path.join(ds.path, shard.files[n].path), mmap_mode="r") for n in selected]
    n = len(arrays[0])

    def rows():
        # The usual recipe's per-epoch permutation (seeded, so that the hot run
        # reads the same rows as the cold one), one row at a time.
        for i in np.random.default_rng(0).permutation(n):
            yield tuple(a[i] for a in arrays) if len(arrays) > 1 else arrays[0][i]

    spec = tuple(tf.TensorSpec(a.shape[1:], a.dtype) for a in arrays)
    dataset = tf.data.Dataset.from_generator(rows, output_signature=spec if len(spec) > 1 else spec[0])
    dataset = dataset.batch(job.batch_size).prefetch(tf.data.AUTOTUNE)
    count = max(1, min(job.num_batches, n // job.batch_size - 1))
    it = iter(dataset.take(count + 1))
    next(it)
    return _time_batches(it, count)


_RUNNERS = {"sequence": _run_sequence, "tf_data": _run_tf_data, "baseline": _run_baseline}


def _bench_method(method: str, job: _BenchJob, files: list[str], runs: tuple[str, ...]) -> list[tuple[str, float, int, float]]:
    """Runs one method in a fresh process: (cache, seconds, samples, cached fraction) per run.

    A fresh process per method keeps the methods apart: a tf.data pipeline keeps
    its Python functions (and with them the memory maps) alive, so their pages
    could not be dropped for the next cold run; and TensorFlow's from_generator
    changes malloc settings for the whole process.
    """
    results = []
    for cache in runs:
        before = cached_fraction(files)
        seconds, samples = _RUNNERS[method](job)
        results.append((cache, seconds, samples, before))
    return results


# --------------------------------------------------------------------------- the benchmark


def _default_fields(ds: Any, x: str | None, y: str | None) -> tuple[str, str | None]:
    names = list(ds.fields)
    if x is None:
        x = next((n for n in names if n != "label"), names[0])
    if y is None:
        y = "label" if "label" in names and x != "label" else None
    elif y == "":
        y = None
    for role, name in (("--x", x), ("--y", y)):
        if name is not None and name not in ds.fields:
            raise SchemaError(f"{role}: no field {name!r}; fields are {names}.")
    return x, y


def _prepare(path: str, x: str | None, y: str | None, batch_size: int, batches: int,
             methods: Sequence[str]) -> tuple[_BenchJob, list[str], int]:
    """Checks the arguments; returns the job, the data files and the bytes per row read."""
    if batch_size < 1 or batches < 1:
        raise SchemaError(f"--batch-size and --batches must be >= 1. Received: {batch_size}, {batches}")
    ds = memseq.open(path)
    x, y = _default_fields(ds, x, y)
    files = data_files(ds)
    row_bytes = sum(ds.fields[n].row_nbytes for n in ([x] if y is None else [x, y]))
    job = _BenchJob(ds.path, x, y, batch_size, max(1, min(batches, len(ds) // batch_size)))
    del ds
    unknown = [m for m in methods if m not in METHOD_LABELS]
    if unknown:
        raise SchemaError(f"Unknown bench methods {unknown}; known: {list(METHOD_LABELS)}.")
    return job, files, row_bytes


def _measure(method: str, job: _BenchJob, files: list[str], cold: bool,
             log: Callable[[str], None]) -> list[tuple[str, float, int, float]]:
    """Runs one method, cold then hot (or hot only), in a fresh spawned process."""
    import multiprocessing
    from concurrent.futures import ProcessPoolExecutor

    runs = ("cold", "hot") if cold else ("hot",)
    gc.collect()
    if cold:
        drop_page_cache(files)
    else:  # hot only: read the files once so that they are cached
        _read_through(files)
    log(f"{METHOD_LABELS[method]}: {' then '.join(runs)} ...")
    with ProcessPoolExecutor(max_workers=1, mp_context=multiprocessing.get_context("spawn")) as pool:
        measured = pool.submit(_bench_method, method, job, files, runs).result()
    if cold and measured[0][3] > 0.5:
        log(
            f"warning: {measured[0][3]:.0%} of the data stayed in the page cache after dropping it: the pages "
            "are mapped and touched by a running process (this one?), or the files are on tmpfs. "
            "The cold numbers are not cold."
        )
    return measured


def run_bench(
    path: str,
    *,
    x: str | None = None,
    y: str | None = None,
    batch_size: int = 256,
    batches: int = 100,
    cold: bool = True,
    methods: Sequence[str] = ("sequence", "tf_data", "baseline"),
    log: Callable[[str], None] | None = None,
) -> list[dict[str, Any]]:
    """Measures read throughput of a dataset, hot and cold; returns one dict per run.

    Methods, each in a fresh process (started with spawn):

    - ``"sequence"``: ``seq[i]`` for ``i`` in ``range(batches)`` on a
      ``MemmapSequence(shuffle=True, seed=0)``, in one thread;
    - ``"tf_data"``: iterating ``seq.to_tf_dataset()`` (skipped if this memseq has
      no ``to_tf_dataset``);
    - ``"baseline"``: the common recipe memseq replaces:
      ``tf.data.Dataset.from_generator`` over ``np.load(..., mmap_mode="r")``
      arrays, yielding one row at a time in a per-epoch permutation order, then
      ``.batch(batch_size).prefetch(AUTOTUNE)`` (first shard only).

    Each method runs cold (the data files' pages dropped from the page cache with
    ``posix_fadvise(POSIX_FADV_DONTNEED)`` just before its process starts), then
    hot (the same batches again, now cached). tf.data pipelines are built and their
    first batch taken before the clock starts.

    ``batches`` is capped at the dataset's number of full batches (at least 1); ``log``
    says so when the cap applies, and each result's ``batches`` is the number run.

    Returns:
        Dicts with ``method``, ``cache`` (``"cold"``/``"hot"``), ``batches``,
        ``samples``, ``seconds``, ``samples_per_s``, ``gb_per_s`` and
        ``cached_before`` (fraction of the data files in the page cache when the
        run started, from ``mincore``).
    """
    from memseq import sequence  # noqa: F401  (fails here, not in a child, if Keras is missing)

    log = log or (lambda message: None)
    job, files, row_bytes = _prepare(path, x, y, batch_size, batches, methods)
    if job.num_batches < batches:
        log(f"{path} holds {job.num_batches} full batch(es) of {batch_size} rows: running {job.num_batches} "
            f"batch(es) per measurement, not the {batches} asked for")
    results = []
    for method in methods:
        if method == "tf_data" and not hasattr(memseq.MemmapSequence, "to_tf_dataset"):
            log("skipping to_tf_dataset(): this memseq has no MemmapSequence.to_tf_dataset")
            continue
        for cache, seconds, samples, before in _measure(method, job, files, cold, log):
            results.append(
                {
                    "method": METHOD_LABELS[method],
                    "cache": cache,
                    "batches": -(-samples // batch_size),
                    "samples": samples,
                    "seconds": seconds,
                    "samples_per_s": samples / seconds,
                    "gb_per_s": samples * row_bytes / seconds / 1e9,
                    "cached_before": before,
                }
            )
    return results
