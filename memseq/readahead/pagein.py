"""Reading mapped file ranges into the page cache ahead of use, from background threads.

:func:`read_ahead` hands page runs to a per-process pool of daemon threads, so that
several reads are in flight while the reader only copies. How each run is read
depends on its length:

- Runs of at least 1 MiB (a block of a block shuffle) are read exactly: skipped if
  ``mincore`` finds them cached, else ``MADV_WILLNEED`` (which reads just the range),
  then ``MADV_POPULATE_READ``, which waits for those reads and fills in what the
  kernel's per-call cap left out. A fault (or populating) would also read
  ``read_ahead_kb`` around the block, which on data larger than RAM is evicted before
  its turn.
- Smaller runs (scattered rows of a full shuffle) are populated, with the fault's
  read-around (``MADV_WILLNEED`` where ``MADV_POPULATE_READ`` is unknown): for rows
  from anywhere in a file that fits in RAM, those large reads are each used later.
- Rows the caller reads next (``now``) are also asked with ``MADV_WILLNEED`` from the
  caller's thread, so its page faults wait for exact reads.

Everything here is a hint: it never changes a byte that is read, and a failure (a
truncated file, an unmapped range) only means less is read ahead. The measurements
behind these choices, and the alternatives measured and not kept (huge pages,
``sendfile``, private ``pread`` buffers), are in ``docs/performance.md``, "Readahead
and buffers: measurements behind the design".
"""

from __future__ import annotations

import errno
import mmap
import queue
import threading
from typing import Any

import numpy as np

from memseq.util import forksafe as _forksafe
from memseq.util import libc as _libc

__all__ = ["page_runs", "read_ahead", "resident"]

_PAGE = mmap.PAGESIZE
# Threads populating ranges: each waits for one read, so this is the disk queue depth
# readahead adds. Four kept the measured disk busy; more only add contention.
_THREADS = 4
# A task is a few runs: full-shuffle rows (a page or three each) grouped so a batch
# costs a handful of tasks, not hundreds; large blocks one task each.
_TASK_BYTES = 4 * 2**20
_TASK_RUNS = 32
# Runs at least this long are read exactly (see the module docstring); a 12 KiB
# row's run is far below it, a block of a block shuffle (4 MiB by default) above.
_EXACT_BYTES = 2**20

# Module attributes, so that a test can stand in for the kernel (a per-call cap).
_madvise = _libc.madvise
_HAVE_MADVISE = _libc.available("madvise")
_HAVE_MINCORE = _libc.available("mincore")


def resident(address: int) -> bool:
    """Whether the page holding ``address`` (inside a mapping) is in the page cache."""
    # One page, no array: this is the per-batch probe of whether to read ahead at all.
    if not _HAVE_MINCORE:
        return False
    try:
        return _libc.mincore_page(address - address % _PAGE)
    except OSError:
        return False


def _first_missing(start: int, stop: int) -> int | None:
    """The address of the first page of ``[start, stop)`` (page-aligned, mapped) not in the page cache.

    None when every page is cached; ``start`` when ``mincore`` cannot tell.
    """
    if not _HAVE_MINCORE:
        return start
    try:
        vec = _libc.mincore(start, stop - start)
    except OSError:
        return start
    missing = np.flatnonzero((vec & 1) == 0)
    return start + int(missing[0]) * _PAGE if len(missing) else None


def page_runs(starts: np.ndarray, stops: np.ndarray) -> list[tuple[int, int]]:
    """Byte ranges ``[starts[i], stops[i])`` widened to whole pages, sorted, touching ones merged."""
    if len(starts) == 0:
        return []
    first = np.asarray(starts, np.int64) // _PAGE * _PAGE
    last = -(-np.asarray(stops, np.int64) // _PAGE) * _PAGE
    order = np.argsort(first, kind="stable")
    first, last = first[order], last[order]
    reach = np.maximum.accumulate(last)
    new_run = np.concatenate([[True], first[1:] > reach[:-1]])
    run_stops = reach[np.concatenate([np.flatnonzero(new_run)[1:] - 1, [len(first) - 1]])]
    return list(zip(first[new_run].tolist(), run_stops.tolist()))


def read_ahead(owner: Any, starts: np.ndarray, stops: np.ndarray, now: bool = False) -> int:
    """Queues the mapped byte ranges ``[starts[i], stops[i])`` to be read into the page cache.

    Returns at once; background threads do the reading, in the order asked.
    ``owner`` (the mapped array) is held until they are done, so the mapping stays
    valid under them. With ``now``, for ranges the caller is about to read, this
    thread first asks the kernel itself, exactly (``MADV_WILLNEED``, which only
    queues the reads): the caller's page faults then wait for those reads instead
    of each reading ``read_ahead_kb`` around itself.

    Returns:
        The bytes asked for (whole pages).
    """
    if not _HAVE_MADVISE:
        return 0
    runs = page_runs(starts, stops)
    if now:
        for a, b in runs:
            try:
                _madvise(a, b - a, mmap.MADV_WILLNEED)
            except OSError:
                pass  # a hint: the threads meet the same error and drop the run
        # Queued as well: the threads then wait for these reads before they take
        # anything queued after them, so the next window's blocks do not share the
        # disk with the rows needed now.
    total = 0
    task: list[tuple[int, int]] = []
    task_bytes = 0
    for a, b in runs:
        task.append((a, b))
        task_bytes += b - a
        if task_bytes >= _TASK_BYTES or len(task) >= _TASK_RUNS:
            _pool().put((owner, task))
            total, task, task_bytes = total + task_bytes, [], 0
    if task:
        _pool().put((owner, task))
        total += task_bytes
    return total


# --------------------------------------------------------------------------- the per-process pool

_queue: queue.SimpleQueue | None = None
_lock = threading.Lock()
_populate_works = True  # False once the kernel said it has no MADV_POPULATE_READ


def _pool() -> queue.SimpleQueue:
    global _queue
    q = _queue
    if q is None:
        with _lock:
            if _queue is None:
                q = queue.SimpleQueue()
                for i in range(_THREADS):
                    # Daemon threads: readahead still queued at exit is simply dropped.
                    threading.Thread(target=_serve, args=(q,), name=f"memseq-readahead-{i}", daemon=True).start()
                _queue = q
            q = _queue
    return q


@_forksafe.on_fork_in_child
def _forget_pool_after_fork() -> None:
    # A forked child has the queue but none of the threads that served it.
    global _queue, _lock
    _queue, _lock = None, threading.Lock()


def _serve(q: queue.SimpleQueue) -> None:
    while True:
        owner, runs = q.get()
        try:
            _read(runs)
        except Exception:  # noqa: BLE001 - a hint must never stop the pool (or the reader)
            pass
        del owner  # the mapping may go now


def _read(runs: list[tuple[int, int]]) -> None:
    """Reads one task's runs: blocks exactly, scattered rows with the fault's read-around."""
    for a, b in runs:
        read = _read_block if b - a >= _EXACT_BYTES else _populate
        if not read(a, b):
            return  # the mapping shrank or went: the rest of the task would fail too


def _populate(start: int, stop: int) -> bool:
    """Faults ``[start, stop)`` in (``MADV_WILLNEED`` on kernels before 5.14); False if the range is gone."""
    global _populate_works
    if _populate_works:
        try:
            _madvise(start, stop - start, _libc.MADV_POPULATE_READ)
            return True
        except OSError as error:
            if error.errno != errno.EINVAL:
                return False  # EFAULT (the file shrank), ENOMEM (unmapped): a hint, dropped
        _populate_works = False  # a kernel before 5.14: fall back to advice
    try:
        _madvise(start, stop - start, mmap.MADV_WILLNEED)
    except OSError:
        pass  # a hint; the caller's own reads will fault
    return True


def _read_block(start: int, stop: int) -> bool:
    """Reads the block ``[start, stop)`` into the page cache without the fault's read-around.

    A block already cached costs one ``mincore`` call. Otherwise ``MADV_WILLNEED``
    reads exactly the block, asynchronously, but at most ``max(read_ahead_kb,
    max_sectors_kb)`` per call (128 KiB on some disks; ``mincore`` cannot tell a page
    under read from one never asked for); populating it then waits for those reads,
    reads what the cap left out, and keeps this thread from running further ahead
    than the disk. False if the range is gone.
    """
    if _first_missing(start, stop) is None:
        return True
    try:
        _madvise(start, stop - start, mmap.MADV_WILLNEED)
    except OSError:
        return False  # EFAULT (the file shrank), ENOMEM (unmapped): a hint, dropped
    return _populate(start, stop)
