"""Reading mapped file ranges into the page cache ahead of use, from background threads.

How, and why this way (measured cold on this project's 2-core VM, virtio disk,
``read_ahead_kb`` 8192, ``max_segments`` 254; 4 MiB blocks of a 2.46 GB file;
``benchmarks/bench_cold.py`` and README "Data larger than RAM"):

- A page fault, and so ``madvise(MADV_POPULATE_READ)`` (Linux 5.14), reads
  ``read_ahead_kb`` around the faulting page: 8 MiB here for one 12 KiB row. For
  scattered rows (a full shuffle) that is what makes a cold epoch of a file that
  fits in RAM fast: large reads, each later used. Populating runs from a few
  background threads keeps several of them in flight and leaves the reader only
  copies.
- For a whole block the read-around is waste: populating a 4 MiB block read the
  4 MiB before it and the 8 MiB after (the fault's read-around, then the async
  readahead it marks), which on a dataset larger than RAM are evicted before their
  turn (1.42x the epoch's bytes read from disk) and on any dataset delay the block
  needed now. ``MADV_WILLNEED`` reads exactly the range, asynchronously; asked from
  the reading thread for coming blocks it stalled that thread at window
  boundaries, so a pool thread asks it.
- ``MADV_HUGEPAGE`` on the mapping makes a fault read 4 MiB in 2 MiB folios (~275
  read requests per GB, 1.1x a sequential read's, against 480-880: order-0 pages
  cap a request at ``max_segments``, 254 pages here), and a probe copying whole
  blocks ran at 1.03x the sequential read with it. It is not used: through
  ``MemmapSequence`` (rows gathered from a window) the reader's own user CPU was
  2.4-5.4x higher on such folios (no page faults), and block shuffle read at
  0.79-1.45 GB/s against 1.48-1.94 without it, slower in each of 7 same-session
  comparisons, whether the advice was on the reader's mapping or on a separate
  one used only to read ahead (cause not proven; this VM's balloon reports free
  2 MiB blocks to its host). On a dataset larger than RAM it also read 8% more.
- What limits a cold block-shuffled epoch here is the reading thread's CPU, not the
  disk (``benchmarks/bench_block_reads.py``): the blocks alone, read in random order,
  came at 1.04x the sequential read, but ``seq[i]`` used 1.55 s of CPU in the reading
  thread cold against 0.43 s for the same epoch from RAM (same page faults), and the
  pool sat idle 33-40% of the epoch whether it read 256 or 768 MiB ahead. Sampled
  with ``perf -e cpu-clock`` (this VM has no hardware counters), 72% of that thread's
  cold time was the row copies themselves (libc ``memmove`` reading freshly read
  pages), under 3% the kernel's fault paths. Two ways to take work off that thread
  were tried and not kept (same-session comparisons, 3 rounds): reading blocks with
  ``sendfile`` to ``/dev/null`` (nothing mapped; a quarter of the pool's CPU) gave
  0.58x the sequential read against 0.57x; also touching every page from the pool
  gave 0.70x on the main thread but 0.60x against 0.77x through ``fit(seq)``'s 4
  worker threads, on 2 cores. Nor did leaving the mapping alone: 4 threads
  ``pread`` each block into a reused private buffer (or ``O_DIRECT``, past the page
  cache) and the reader gathering from it gave 0.57-0.81x (0.68-0.92x) against
  0.50-0.90x in three runs of another session, holding 640 MiB more anonymous memory
  per process; worker processes would each read and hold their own copy.

So :func:`read_ahead` hands page runs to a per-process pool of daemon threads.
Runs of at least 1 MiB (blocks) are read exactly: skipped if ``mincore`` finds them
cached, else ``MADV_WILLNEED``, then populated, which waits for those reads and
fills in what the kernel's per-call cap left out. Smaller runs (scattered rows)
are populated, with the fault's read-around (falling back to ``MADV_WILLNEED``
where ``MADV_POPULATE_READ`` is unknown). Rows the caller reads next are also
asked with ``MADV_WILLNEED`` from the caller's thread (``now``). Everything here is a
hint: it never changes a byte that is read, and a failure (a truncated file, an
unmapped range) only means less is read ahead.
"""

from __future__ import annotations

import ctypes
import errno
import mmap
import queue
import threading
from typing import Any

import numpy as np

from memseq.util import forksafe as _forksafe

__all__ = ["page_runs", "read_ahead", "resident"]

_MADV_POPULATE_READ = 22  # Linux 5.14; not in the mmap module
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

_madvise = _mincore = None
try:
    _libc = ctypes.CDLL(None, use_errno=True)
    _madvise, _mincore = _libc.madvise, _libc.mincore
    _madvise.argtypes = [ctypes.c_void_p, ctypes.c_size_t, ctypes.c_int]
    _mincore.argtypes = [ctypes.c_void_p, ctypes.c_size_t, ctypes.c_void_p]
except (OSError, AttributeError):
    _madvise = _mincore = None


def resident(address: int) -> bool:
    """Whether the page holding ``address`` (inside a mapping) is in the page cache."""
    # One byte, not _first_missing's array: this is the per-batch probe (2 us against 5).
    if _mincore is None:
        return False
    page = address - address % _PAGE
    vec = ctypes.c_ubyte(0)
    if _mincore(page, _PAGE, ctypes.byref(vec)) != 0:
        return False
    return bool(vec.value & 1)


def _first_missing(start: int, stop: int) -> int | None:
    """The address of the first page of ``[start, stop)`` (page-aligned, mapped) not in the page cache.

    None when every page is cached; ``start`` when ``mincore`` cannot tell.
    """
    if _mincore is None:
        return start
    pages = (stop - start) // _PAGE
    vec = (ctypes.c_ubyte * pages)()
    if _mincore(start, stop - start, vec) != 0:
        return start
    missing = np.flatnonzero((np.frombuffer(vec, np.uint8) & 1) == 0)
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
    if _madvise is None:
        return 0
    runs = page_runs(starts, stops)
    if now:
        for a, b in runs:
            _madvise(a, b - a, mmap.MADV_WILLNEED)
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
        if _madvise(start, stop - start, _MADV_POPULATE_READ) == 0:
            return True
        if ctypes.get_errno() != errno.EINVAL:
            return False  # EFAULT (the file shrank), ENOMEM (unmapped): a hint, dropped
        _populate_works = False  # a kernel before 5.14: fall back to advice
    _madvise(start, stop - start, mmap.MADV_WILLNEED)
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
    if _madvise(start, stop - start, mmap.MADV_WILLNEED) != 0:
        return False  # EFAULT (the file shrank), ENOMEM (unmapped): a hint, dropped
    return _populate(start, stop)
