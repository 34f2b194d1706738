"""Reading ahead along the known order: which batches to ask for while batch ``i`` is built.

The order of every epoch is a pure function of ``(seed, epoch)``, so whoever builds
batch ``i`` (the main thread, a worker thread or process, a tf.data call) asks for
batch ``i + k``, ``k`` batches being the byte bound; batch 0 asks for ``0..k``. No
coordination between workers is needed and no batch changes. Which rows a batch
needs is :mod:`memseq.readahead.ranges`'s, the reading itself
:mod:`memseq.readahead.pagein`'s (background threads); this module decides which
batches to ask for, and when, and keeps that cheap when the data are already in RAM.
"""

from __future__ import annotations

from collections.abc import Iterable
from typing import Any, Protocol, runtime_checkable

import numpy as np

from memseq.order import BatchPlan, Sequential
from memseq.readahead import ranges as _ranges
from memseq.util.checks import check_int

__all__ = ["BatchReadahead", "DEFAULT_READAHEAD_BYTES", "Prefetchable"]

# Bytes of coming batches asked for ahead: far below any page cache (it must never
# evict what is about to be read), enough to keep a disk's queue busy.
DEFAULT_READAHEAD_BYTES = 256 * 2**20
# After this many cached probes in a row, only every this-many-th batch is probed.
_PROBE_EVERY = 8


@runtime_checkable
class Prefetchable(Protocol):
    """What readahead needs of a column: page rows in ahead, and say whether a row is cached.

    memseq's file-backed columns (:class:`memseq.Column` and its subclasses) implement it.
    """

    def prefetch(self, ranges: Any, now: bool = False) -> int:
        """Starts reading the ``(n, 2)`` row ranges ``[start, stop)`` into the page cache; returns bytes asked for."""

    def is_cached(self, row: int) -> bool:
        """Whether ``row`` is in the page cache."""


class BatchReadahead:
    """Asks the columns of a batch plan to read coming batches.

    Args:
        plan: The sequence's batch plan.
        columns: The file-backed columns to read ahead (others are ignored).
        bound_bytes: How far ahead, in bytes of batches (>= 1).
        row_nbytes: Bytes of one row over all the columns.
    """

    def __init__(self, plan: BatchPlan, columns: Iterable[Any], bound_bytes: int, row_nbytes: int):
        self.plan = plan
        self.columns = [c for c in columns if isinstance(c, Prefetchable)]
        self.bound_bytes = bound_bytes
        # Batches read ahead: enough to cover the byte bound, at least one.
        self.lookahead = max(1, bound_bytes // max(1, row_nbytes * plan.batch_size))
        self._cached_probes = 0
        self._touches: _ranges.BlockTouches | None = None  # one epoch's, for block orders

    @classmethod
    def for_plan(cls, readahead: Any, plan: BatchPlan, columns: Iterable[Any], row_nbytes: int) -> "BatchReadahead | None":
        """The readahead a ``MemmapSequence(readahead=...)`` asks for, or None when off.

        ``None`` means on for shuffled orders and off for a sequential one (the kernel
        reads a sequential scan ahead by itself); ``True`` / ``False``; or a byte bound.

        Raises:
            SchemaError: If ``readahead`` is not None, a bool or an int >= 0.
        """
        if readahead is None:
            # Measured cold (benchmarks/bench_cold.py): readahead threads beat page
            # faults for every random order; a sequential read has the kernel's own.
            readahead = not isinstance(plan.order, Sequential)
        if isinstance(readahead, (bool, np.bool_)):
            readahead = DEFAULT_READAHEAD_BYTES if readahead else 0
        bound = check_int(readahead, "readahead", 0)
        return cls(plan, columns, bound, row_nbytes) if bound else None

    def ask(self, index: int, epoch: int, share: tuple[int, int] | None = None) -> None:
        """Asks for batch ``index + lookahead`` (batch 0: for ``0..lookahead``); returns at once.

        Call it before building batch ``index``: batch 0's own rows are asked of the
        kernel at once, from this thread, so its page faults wait for exact reads
        instead of each reading a few MiB around itself (for a block order, batch 0
        touches every block of its window), and the readahead threads read nothing
        else until they are in. Block orders ask for each block once, whole, from the
        batch that first touches it. With ``share=(replica, num_replicas)``
        (tf.distribute), only that replica's rows of each batch are asked for, block
        orders included: each input pipeline reads what it serves.
        """
        first = 0 if index == 0 else index + self.lookahead
        whole_blocks = share is None and _ranges.reads_whole_blocks(self.plan)
        touches = self._touches_of(epoch) if whole_blocks else None
        for ahead in range(first, min(index + self.lookahead, self.plan.num_batches - 1) + 1):
            if whole_blocks:
                if not _ranges.reads_new_blocks(self.plan, ahead, epoch, touches):
                    continue
            elif self._looks_cached(ahead, epoch):
                continue
            ranges = _ranges.batch_ranges(self.plan, ahead, epoch, share, touches)
            for column in self.columns:
                # Batch 0's own rows are read next by this thread: asked of the kernel now.
                column.prefetch(ranges, now=ahead == index)

    def _looks_cached(self, ahead: int, epoch: int) -> bool:
        """Whether batch ``ahead``'s data look cached, so nothing need be asked.

        One ``mincore`` probe of one of its rows per column, far cheaper than
        computing the ranges. Data in RAM should cost nothing measurable, so after
        8 cached probes in a row only every 8th batch is probed (the others count as
        cached) until a probe misses. Whole-block asks (block orders outside
        tf.distribute) are never probed: only a few batches per window ask for
        anything, and on data partly in RAM (the next epoch of a dataset larger than
        RAM) a cached probe row would leave a whole window of blocks to be read fault
        by fault; a cached block costs the threads one ``mincore`` call.
        """
        if self._cached_probes >= _PROBE_EVERY and ahead % _PROBE_EVERY:
            return True
        probe = _ranges.probe_row(self.plan, ahead, epoch)
        if all(column.is_cached(probe) for column in self.columns):
            self._cached_probes += 1  # racy across worker threads: a heuristic, never a result
            return True
        self._cached_probes = 0
        return False

    def _touches_of(self, epoch: int) -> _ranges.BlockTouches:
        """:func:`~memseq.readahead.ranges.block_touches` of ``epoch``, kept for one epoch."""
        touches = self._touches
        if touches is None or touches.epoch != epoch:
            touches = self._touches = _ranges.block_touches(self.plan, epoch)  # one atomic swap across threads
        return touches

    def __getstate__(self) -> dict[str, Any]:
        # Derived per epoch: a worker recomputes it rather than receive it pickled.
        state = self.__dict__.copy()
        state["_touches"] = None
        return state
