"""Clairvoyant prefetch of a remote dataset's shards: in the order the epoch will need them.

An epoch's order is a pure function of ``(seed, epoch)`` (:class:`~memseq.order.BatchPlan`),
so the batch at which each shard is first and last needed is known before the epoch
starts. :class:`ShardPrefetcher` downloads shards in order of first need, ahead of the
batch being built, on a few threads:

- Bytes in flight are bounded: at most ``parallel`` shards download at once, and the
  shards downloaded ahead of the current batch (not needed yet) add up to at most
  ``ahead_bytes`` (by default the smaller of 1 GiB and half of ``cache_limit``), and
  never to more than ``cache_limit`` leaves beside the shards in use.
- Eviction under ``cache_limit`` follows the same schedule (Belady's rule): shards
  this epoch no longer needs go first, then those needed latest; shards in use stay.
- Prefetching is a hint: a download that fails in the background is not reported
  there; the read that needs the shard downloads it itself and raises the error.

Each process (a Keras worker process too) runs its own prefetcher; the cache's locks
make sure that a shard is still downloaded once per host.
"""

from __future__ import annotations

import math
import os
import threading
import warnings
from concurrent.futures import ThreadPoolExecutor
from typing import Any

import numpy as np

from memseq.order import BatchPlan
from memseq.read.remote import RemoteDatasetFiles

__all__ = ["DEFAULT_AHEAD_BYTES", "DEFAULT_PARALLEL", "RemoteCacheWarning", "ShardPrefetcher"]

DEFAULT_AHEAD_BYTES = 2**30
# Steps behind the furthest batch asked for whose shards still count as in use: batches
# built concurrently finish out of order.
_LAG = 8
DEFAULT_PARALLEL = 4


class RemoteCacheWarning(UserWarning):
    """An order that will download much more than the dataset per epoch, because the cache is smaller than it needs."""


class _Schedule:
    """One epoch's shard schedule: first and last batch needing each shard, and shards by first need."""

    def __init__(self, plan: BatchPlan, epoch: int, starts: np.ndarray, share: tuple[int, int] | None,
                 served: np.ndarray | None):
        positions = plan.permutation(epoch)[: plan.num_batches * plan.batch_size]
        rows = positions if plan.indices is None else plan.indices[positions]
        batch = np.arange(len(rows), dtype=np.int64) // plan.batch_size
        # The step at which each batch is served: its index, or its place in fit's batch order.
        self.served = served
        self.step = np.arange(plan.num_batches, dtype=np.int64)
        if served is not None:
            self.step = np.full(plan.num_batches, np.iinfo(np.int64).max, np.int64)
            self.step[served] = np.arange(len(served))
        if share is not None:
            # A replica's rows of each batch: the sorted batch dealt round-robin (BatchPlan.replica_rows).
            keep = np.zeros(len(rows), bool)
            for b in range(plan.num_batches):
                lo = b * plan.batch_size
                order = np.argsort(rows[lo : lo + plan.batch_size], kind="stable")
                keep[lo + order[share[0] :: share[1]]] = True
            rows, batch = rows[keep], batch[keep]
        shard = np.searchsorted(starts, rows, side="right") - 1
        n = len(starts) - 1
        batch = self.step[batch]
        shard, batch = shard[batch < len(self.step)], batch[batch < len(self.step)]  # batches not served: none
        self.epoch = epoch
        self.first = np.full(n, np.iinfo(np.int64).max, np.int64)
        self.last = np.full(n, -1, np.int64)
        np.minimum.at(self.first, shard, batch)
        np.maximum.at(self.last, shard, batch)
        needed = np.flatnonzero(self.last >= 0)
        self.order = needed[np.argsort(self.first[needed], kind="stable")].tolist()

    def peak_bytes(self, sizes: list[int]) -> int:
        """Most bytes of shards in use at one step (from the first batch needing each to its last)."""
        sizes_ = np.asarray(sizes, np.int64)
        used = np.flatnonzero(self.last >= 0)
        change = np.zeros(len(self.step) + 2, np.int64)
        np.add.at(change, self.first[used], sizes_[used])
        np.add.at(change, self.last[used] + 1, -sizes_[used])
        return int(np.cumsum(change).max())


class ShardPrefetcher:
    """Downloads the shards of a remote dataset ahead of the batches of a plan.

    Args:
        files: The remote dataset's state (see :func:`memseq.read.remote.remote_files_of`).
        plan: The batch plan whose epochs are served.
        ahead_bytes: Most bytes of shards downloaded ahead of the current batch.
        parallel: Most shards downloading at once.

    Pickles without its threads: a worker process starts its own.
    """

    def __init__(self, files: RemoteDatasetFiles, plan: BatchPlan, *, ahead_bytes: int | None = None,
                 parallel: int = DEFAULT_PARALLEL):
        self.files = files
        self.plan = plan
        limit = files.cache.cache_limit
        if ahead_bytes is None:
            ahead_bytes = DEFAULT_AHEAD_BYTES if limit is None else min(DEFAULT_AHEAD_BYTES, limit // 2)
        self.ahead_bytes = int(ahead_bytes)
        self.parallel = int(parallel)
        self._reset()

    def _reset(self) -> None:
        self._lock = threading.Lock()
        self._pool: ThreadPoolExecutor | None = None
        self._pid = os.getpid()
        self._schedule: _Schedule | None = None
        self._share: tuple[int, int] | None = None
        self._submitted: set[int] = set()
        self._index = 0
        self._starts: np.ndarray | None = None
        self._sizes: list[int] | None = None
        self._orders: dict[int, np.ndarray] = {}
        self._warned = False

    def __getstate__(self) -> dict[str, Any]:
        return {"files": self.files, "plan": self.plan, "ahead_bytes": self.ahead_bytes, "parallel": self.parallel}

    def __setstate__(self, state: dict[str, Any]) -> None:
        self.__dict__.update(state)
        self._reset()

    def ask(self, index: int, epoch: int, share: tuple[int, int] | None = None) -> None:
        """Batch ``index`` of ``epoch`` is being built: starts downloads ahead of it; returns at once."""
        if self._pid != os.getpid():  # forked: the parent's threads are not here
            self._reset()
        with self._lock:
            schedule = self._schedule_of(epoch, share)
            # From here on, steps (the place in the served order), not batch indices. Batches
            # are built concurrently (worker threads, tf.data's parallel calls), so the
            # furthest step asked for leads, and shards of the last _LAG steps count as in use.
            index = max(self._index, int(min(schedule.step[index], len(schedule.step))))
            self._index = index
            done = index - _LAG
            self.files.set_rank(self._rank)
            room = math.inf
            limit = self.files.cache.cache_limit
            if limit is not None:
                # Never more ahead than the cache holds beside the shards in use: a shard
                # fetched ahead would evict one in use, or be evicted before its turn.
                room = limit - sum(self._sizes[s] for s in schedule.order if schedule.first[s] <= index and schedule.last[s] >= done)
            ahead = 0
            for s in schedule.order:
                if schedule.last[s] < done:
                    continue
                if schedule.first[s] > index:
                    size = self._sizes[s]
                    # One shard ahead always (if the cache has room), more up to ahead_bytes.
                    fits = ahead + size <= room and (ahead == 0 or ahead + size <= self.ahead_bytes)
                    if not fits and s not in self._submitted:
                        break
                    ahead += size
                if s not in self._submitted and schedule.last[s] >= index:
                    # Shards only batches before this one need are not fetched here: a
                    # batch being built reads its shards itself (or they are fetched).
                    self._submitted.add(s)
                    if not self.files.is_mapped(s):  # mapped: its files are here already
                        self._executor().submit(self._fetch, s)

    def _schedule_of(self, epoch: int, share: tuple[int, int] | None) -> _Schedule:
        if self._starts is None:
            rows = [shard.num_rows for shard in self.files.manifest.shards]
            self._starts = np.concatenate([[0], np.cumsum(rows, dtype=np.int64)])
            self._sizes = [self.files.shard_nbytes(s) for s in range(len(rows))]
        schedule = self._schedule
        served = self._orders.get(epoch)
        if schedule is None or schedule.epoch != epoch or self._share != share or schedule.served is not served:
            schedule = self._schedule = _Schedule(self.plan, epoch, self._starts, share, served)
            self._share = share
            self._submitted = set()
            self._index = 0
        return schedule

    def set_order(self, epoch: int, batches: Any) -> None:
        """Epoch ``epoch``'s batches will be asked for in the order ``batches`` (a resumed epoch: its rest).

        Warns (:class:`RemoteCacheWarning`) if, in that order, the shards in use at one
        time exceed ``cache_limit``: then shards are downloaded again within the epoch.
        """
        order = np.asarray(batches, np.int64).reshape(-1)
        with self._lock:
            self._orders = {e: o for e, o in self._orders.items() if e >= epoch - 1}
            self._orders[epoch] = order
            schedule = self._schedule_of(epoch, self._share)
        limit = self.files.cache.cache_limit
        if limit is None or self._warned:
            return
        peak = schedule.peak_bytes(self._sizes)
        if peak > limit:
            self._warned = True
            warnings.warn(
                f"{self.files.path}: in the order its batches are asked for, up to {peak} bytes of shards are in use "
                f"at once, more than cache_limit={limit}: shards will be downloaded again within each epoch. "
                "fit(shuffle=True) reorders whole batches over the epoch (so every shard stays in use from its first "
                "batch to its last); with shuffle=memseq.ShardShuffle(...) the rows are shuffled already: pass "
                "fit(..., shuffle=False), or raise cache_limit.",
                RemoteCacheWarning,
                stacklevel=3,
            )

    def check_cache(self, stacklevel: int = 2) -> None:
        """Warns (:class:`RemoteCacheWarning`) if epoch 0, in batch order, has more bytes of shards in use at once than ``cache_limit``.

        Then shards are downloaded again within every epoch: with a
        :class:`~memseq.ShardShuffle`, a window (two at a window boundary) holds more
        than the cache.
        """
        limit = self.files.cache.cache_limit
        if limit is None or self._warned:
            return
        with self._lock:
            peak = self._schedule_of(0, None).peak_bytes(self._sizes)
        if peak > limit:
            self._warned = True
            warnings.warn(
                f"{self.files.path}: in each epoch's order, up to {peak} bytes of shards are in use at once (the "
                f"shards of the batches being built), more than cache_limit={limit}: shards will be downloaded "
                "again within each epoch, up to once per batch. With shuffle=memseq.ShardShuffle(window_shards=k), "
                "about two windows of k shards are in use at a window boundary: lower window_shards, or raise "
                "cache_limit.",
                RemoteCacheWarning,
                stacklevel=stacklevel + 1,
            )

    def _rank(self, s: int) -> float:
        """When shard ``s`` is needed next, for eviction: ``inf`` once this epoch is done with it."""
        schedule, index = self._schedule, self._index
        if schedule is None or schedule.last[s] < index - _LAG:
            return math.inf
        return float(max(index, schedule.first[s]))

    def _executor(self) -> ThreadPoolExecutor:
        if self._pool is None:
            self._pool = ThreadPoolExecutor(self.parallel, thread_name_prefix="memseq-remote")
        return self._pool

    def _fetch(self, s: int) -> None:
        try:
            self.files.fetch_shard(s)
        except Exception:
            pass  # a hint only: the read that needs shard s fetches it and raises

    def close(self) -> None:
        """Stops starting downloads; those running finish."""
        pool, self._pool = self._pool, None
        if pool is not None:
            pool.shutdown(wait=False, cancel_futures=True)
