"""Which rows to read ahead for a batch: pure functions of a :class:`~memseq.order.BatchPlan` and an epoch.

For most orders a batch's readahead is its own rows. A :class:`~memseq.order.BlockShuffle`
reads each block of contiguous rows once per epoch, whole, asked by the first batch
that touches it (:func:`block_touches`): one large read per block instead of many
small ones, and no block asked for twice. With ``share=(replica, num_replicas)``
(tf.distribute) a pipeline asks for its replica's rows of a batch only, whatever the
order: each input pipeline reads what it serves.
"""

from __future__ import annotations

import dataclasses

import numpy as np

from memseq.order import BatchPlan, BlockShuffle

__all__ = ["BlockTouches", "batch_ranges", "block_touches", "probe_row", "reads_new_blocks", "reads_whole_blocks"]


@dataclasses.dataclass(frozen=True, eq=False)
class BlockTouches:
    """Which batch of one epoch first touches each block of a block shuffle.

    Attributes:
        epoch: The epoch.
        first: ``first[b]``, the first batch that reads a row of block ``b``.
        touching: ``touching[i]``, whether batch ``i`` is the first to read some block.
    """

    epoch: int
    first: np.ndarray
    touching: np.ndarray


def reads_whole_blocks(plan: BatchPlan) -> bool:
    """Whether readahead asks for whole blocks, once each (a :class:`~memseq.order.BlockShuffle`), not batches."""
    return isinstance(plan.order, BlockShuffle)


def block_touches(plan: BatchPlan, epoch: int) -> BlockTouches:
    """The first batch of ``epoch`` to touch each block (``plan`` reads whole blocks).

    Costs one pass over the epoch's permutation: callers asking batch after batch
    keep the result for the epoch.
    """
    perm = plan.permutation(epoch)
    block_rows = plan.order.block_rows
    num_blocks = -(-plan.num_rows // block_rows)
    first = np.full(num_blocks, np.iinfo(np.int64).max, np.int64)
    batch_of_position = np.arange(len(perm), dtype=np.int64) // plan.batch_size
    np.minimum.at(first, perm.astype(np.int64) // block_rows, batch_of_position)
    touching = np.zeros(plan.num_batches, bool)
    touching[first[first < plan.num_batches]] = True
    return BlockTouches(epoch, first, touching)


def _touches(plan: BatchPlan, epoch: int, touches: BlockTouches | None) -> BlockTouches:
    return touches if touches is not None and touches.epoch == epoch else block_touches(plan, epoch)


def reads_new_blocks(plan: BatchPlan, index: int, epoch: int, touches: BlockTouches | None = None) -> bool:
    """Whether batch ``index`` of ``epoch`` has anything to read ahead.

    Always true, except when ``plan`` reads whole blocks, where only the batches that
    first touch a block (a few per window) do. ``touches``: :func:`block_touches` of
    this epoch, if the caller keeps it.
    """
    if reads_whole_blocks(plan):
        return bool(_touches(plan, epoch, touches).touching[index])
    return True


def batch_ranges(
    plan: BatchPlan,
    index: int,
    epoch: int,
    share: tuple[int, int] | None = None,
    touches: BlockTouches | None = None,
) -> np.ndarray:
    """Row ranges to read ahead for batch ``index`` of ``epoch``: an ``(n, 2)`` int64 array of [start, stop).

    When ``plan`` reads whole blocks, the rows of the blocks that batch ``index`` is
    the first of the epoch to touch (over all rows or a contiguous ``indices``, one
    large range per block); otherwise the batch's rows. Adjacent rows are merged
    into one range. With ``share=(replica, num_replicas)``: that replica's rows of
    the batch (:meth:`~memseq.order.BatchPlan.replica_rows`), whatever the order.
    ``touches``: :func:`block_touches` of this epoch, if the caller keeps it.
    """
    if share is not None:
        return _runs(plan.replica_rows(plan.batch_rows(index, epoch), *share))
    if not reads_whole_blocks(plan):
        return _runs(plan.batch_rows(index, epoch))
    first = _touches(plan, epoch, touches).first
    block_rows = plan.order.block_rows
    starts = np.flatnonzero(first == index) * block_rows
    stops = np.minimum(starts + block_rows, plan.num_rows)
    if plan.indices is None or len(starts) == 0:
        return np.stack([starts, stops], axis=1).astype(np.int64)
    # Blocks are of positions in ``indices``: their rows, which for a contiguous
    # subset (a train split) are again one range per block.
    return _runs(np.concatenate([plan.indices[a:b] for a, b in zip(starts.tolist(), stops.tolist())]))


def probe_row(plan: BatchPlan, index: int, epoch: int) -> int:
    """One row of batch ``index`` of ``epoch`` (its first position): a cheap probe of whether it is cached."""
    position = int(plan.permutation(epoch)[index * plan.batch_size])
    return position if plan.indices is None else int(plan.indices[position])


def _runs(rows: np.ndarray) -> np.ndarray:
    """``rows`` as sorted ``(n, 2)`` [start, stop) ranges of adjacent rows."""
    if rows.size == 0:
        return np.empty((0, 2), np.int64)
    rows = np.sort(rows)
    breaks = np.flatnonzero(np.diff(rows) != 1) + 1
    starts = rows[np.concatenate([[0], breaks])]
    stops = rows[np.concatenate([breaks - 1, [rows.size - 1]])] + 1
    return np.stack([starts, stops], axis=1).astype(np.int64)
