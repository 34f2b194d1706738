"""Readahead: reading the rows of coming batches into the page cache while this one is built.

The order of every epoch is known in advance (a pure function of ``(seed, epoch)``),
so whoever builds batch ``i`` asks for batch ``i + k``. To change how batches are
read ahead, this folder is the place:

- :mod:`memseq.readahead.batches`: *when* and *how far*: :class:`BatchReadahead`
  (which coming batches a call for batch ``i`` asks for, the byte bound, skipping
  data already in RAM) and :class:`Prefetchable`, what it needs of a column.
- :mod:`memseq.readahead.ranges`: *which rows*: a batch's row ranges to read ahead,
  as pure functions of a :class:`~memseq.order.BatchPlan` and an epoch (whole blocks,
  once each, for a block shuffle; a replica's rows for tf.distribute).
- :mod:`memseq.readahead.pagein`: *how*: the per-process pool of threads that page
  mapped byte ranges in (``madvise``, ``mincore`` through :mod:`memseq.util.libc`).

Columns implement :class:`Prefetchable` on top of :mod:`memseq.readahead.pagein`
(``Column.prefetch`` / ``Column.is_cached`` in :mod:`memseq.read.columns`). This
package may import :mod:`memseq.order`; :mod:`memseq.order` never imports it.
The measurements behind these choices are in ``docs/performance.md``.
"""
