"""Readahead from the known order (MemmapSequence(readahead=...), Column.prefetch): never changes a batch, stays in bounds."""

from __future__ import annotations

import pickle
import threading
import time

import numpy as np
import pytest

import memseq
from memseq.adapters.keras.adapter import SequenceAdapter
from memseq.order import BatchPlan
from memseq.read.columns import Column
from memseq.readahead.ranges import (
    batch_ranges,
    block_touches,
    probe_row,
    reads_new_blocks,
    reads_whole_blocks,
)

ROW = (8, 8, 3)
N = 2000


pytestmark = pytest.mark.dataset(N, ROW, shard_rows=700)  # the data_path fixture (conftest); label = row number


class Flipped(memseq.MemmapSequence):
    def augment(self, batch, rng):
        batch["image"] = memseq.augment.random_flip(batch["image"], rng)
        return batch


@pytest.mark.parametrize("shuffle", [True, "block", memseq.BlockShuffle(block_rows=40, window_blocks=3), False])
def test_readahead_never_changes_a_batch(data_path, shuffle):
    on = Flipped(data_path, x="image", y="label", batch_size=64, seed=3, shuffle=shuffle, readahead=True)
    assert on.readahead
    off = Flipped(data_path, x="image", y="label", batch_size=64, seed=3, shuffle=shuffle, readahead=False)
    for epoch in (0, 1):
        for i in range(len(on)):
            a, b = on.get_batch(i, epoch), off.get_batch(i, epoch)
            np.testing.assert_array_equal(a[0], b[0])
            np.testing.assert_array_equal(a[1], b[1])


@pytest.mark.slow
@pytest.mark.parametrize("processes", [False, True])
def test_readahead_in_workers_serves_the_same_batches(data_path, processes):
    seq = Flipped(data_path, x="image", y="label", batch_size=64, seed=3, workers=2, use_multiprocessing=processes,
                  readahead=True)
    plain = Flipped(data_path, x="image", y="label", batch_size=64, seed=3, readahead=False)
    for epoch in (0, 1):
        seq.set_epoch(epoch)
        for i, (x, y) in enumerate(SequenceAdapter(seq).get_numpy_iterator()):
            expected = plain.get_batch(i, epoch)
            np.testing.assert_array_equal(x, expected[0])
            np.testing.assert_array_equal(y, expected[1])


def test_readahead_asks_only_for_the_next_batches_within_its_byte_bound(data_path, monkeypatch):
    monkeypatch.setattr(Column, "is_cached", lambda self, row: False)  # as if the data were on disk
    calls, asked_now = [], []

    def record(self, ranges, now=False):
        calls.append((self.name, np.asarray(ranges)))
        if now and self.name == "image":
            asked_now.append(np.concatenate([np.arange(a, b) for a, b in ranges]))
        return 0

    monkeypatch.setattr(Column, "prefetch", record)
    row_bytes = int(np.prod(ROW)) + 8
    bound = 5 * 64 * row_bytes  # five batches
    seq = memseq.MemmapSequence(data_path, x="image", y="label", batch_size=64, seed=1, readahead=bound)
    asked_by_batch = {}
    for i in range(len(seq)):
        calls.clear()
        seq.get_fields(i, 0)
        rows = [np.concatenate([np.arange(a, b) for a, b in ranges]) for name, ranges in calls if name == "image"]
        asked_by_batch[i] = np.sort(np.concatenate(rows)) if rows else np.empty(0, int)
    # Batch 0 asks for itself and batches 1..5; batch i > 0 for batch i + 5 only: never more than the bound ahead.
    expected0 = np.sort(np.concatenate([seq.batch_rows(j, 0) for j in range(0, 6)]))
    np.testing.assert_array_equal(asked_by_batch[0], expected0)
    # Only batch 0's own rows are also asked from the calling thread; the rest is only queued.
    assert len(asked_now) == 1
    np.testing.assert_array_equal(np.sort(asked_now[0]), seq.batch_rows(0, 0))
    for i in range(1, len(seq)):
        ahead = i + 5
        expected = seq.batch_rows(ahead, 0) if ahead < len(seq) else np.empty(0, int)
        np.testing.assert_array_equal(asked_by_batch[i], expected)
        assert len(asked_by_batch[i]) * row_bytes <= bound


def test_readahead_asks_nothing_for_data_in_ram_and_probes_little(data_path, monkeypatch):
    probes, calls = [], []
    real_is_cached = Column.is_cached
    monkeypatch.setattr(Column, "is_cached", lambda self, row: probes.append(row) or real_is_cached(self, row))
    monkeypatch.setattr(Column, "prefetch", lambda self, ranges, now=False: calls.append(1) or 0)
    seq = memseq.MemmapSequence(data_path, x="image", batch_size=16, shuffle=True, readahead=True)
    with memseq.open(data_path) as ds:
        ds["image"][:]  # the whole file is now in the page cache
    for i in range(len(seq)):
        seq.get_fields(i, 0)
    assert calls == []
    # After 8 cached probes in a row, only every 8th batch is probed.
    assert len(probes) < len(seq) // 2


def test_block_readahead_only_works_on_batches_that_start_blocks(data_path, monkeypatch):
    monkeypatch.setattr(Column, "is_cached", lambda self, row: False)
    asked = []
    monkeypatch.setattr(Column, "prefetch", lambda self, ranges, now=False: asked.append(np.asarray(ranges)) or 0)
    seq = memseq.MemmapSequence(data_path, x="image", batch_size=16, seed=2, readahead=True,
                                shuffle=memseq.BlockShuffle(block_rows=100, window_blocks=2))
    for i in range(len(seq)):
        seq.get_fields(i, 0)
    blocks = np.concatenate(asked)[:, 0] // 100
    assert sorted(blocks.tolist()) == list(range(N // 100))  # every block once, whole


@pytest.mark.parametrize("indices", [np.arange(300, 1900), np.arange(0, N, 3)], ids=["contiguous", "every-third"])
def test_block_readahead_over_indices_asks_each_block_once(data_path, monkeypatch, indices):
    # A train split: blocks are of positions in ``indices``; readahead asks each block's rows once.
    monkeypatch.setattr(Column, "is_cached", lambda self, row: False)
    asked = []
    monkeypatch.setattr(Column, "prefetch", lambda self, ranges, now=False: asked.append(np.asarray(ranges)) or 0)
    seq = memseq.MemmapSequence(data_path, x="image", batch_size=16, seed=2, readahead=True, indices=indices,
                                shuffle=memseq.BlockShuffle(block_rows=100, window_blocks=2))
    for i in range(len(seq)):
        seq.get_fields(i, 0)
    ranges = np.concatenate(asked)
    rows = np.concatenate([np.arange(a, b) for a, b in ranges])
    np.testing.assert_array_equal(np.sort(rows), indices)  # every served row once, nothing else
    if np.all(np.diff(indices) == 1):
        assert np.all((ranges - indices[0]) % 100 == 0)  # whole blocks (adjacent ones asked together merge)


def test_readahead_off_asks_nothing(data_path, monkeypatch):
    calls = []
    monkeypatch.setattr(Column, "prefetch", lambda self, ranges, now=False: calls.append(1) or 0)
    seq = memseq.MemmapSequence(data_path, x="image", batch_size=64, readahead=False)
    for i in range(len(seq)):
        seq[i]
    assert calls == []


def test_readahead_argument_is_checked(data_path):
    for bad in (-1, 2.5, "yes"):
        with pytest.raises(memseq.SchemaError, match="readahead must be an int >= 0"):
            memseq.MemmapSequence(data_path, x="image", readahead=bad)


def test_column_prefetch_changes_no_data_and_is_cached_sees_cached_rows(data_path):
    ds = memseq.open(data_path)
    column = ds["image"]
    before = column[:]
    assert column.prefetch([[0, 10], [650, 750], [1990, 2000]]) >= 0
    np.testing.assert_array_equal(column[:], before)
    # Pages just read are in the page cache: a probe says so (readahead then skips the batch).
    assert column.is_cached(0) and column.is_cached(1999)


def test_readahead_default_is_on_for_shuffled_orders_only(data_path):
    assert memseq.MemmapSequence(data_path, x="image", shuffle="block").readahead > 0
    assert memseq.MemmapSequence(data_path, x="image", shuffle=True).readahead > 0
    assert memseq.MemmapSequence(data_path, x="image", shuffle=False).readahead == 0
    assert memseq.MemmapSequence(data_path, x="image", shuffle=True, readahead=True).readahead == 256 * 2**20


def test_prefetch_reads_evicted_rows_into_the_page_cache(tmp_path):
    from memseq import bench

    path = tmp_path / "cold"
    memseq.save(path, {"x": np.arange(4096 * 2048, dtype=np.uint8).reshape(2048, 4096)})
    ds = memseq.open(path)
    files = bench.data_files(ds)
    ds.close()
    bench.drop_page_cache(files)  # no mapping of the file exists now
    if bench.cached_fraction(files) > 0.5:
        pytest.skip("this file system keeps the file in memory (tmpfs?)")
    with memseq.open(path) as ds:
        column = ds["x"]
        assert not column.is_cached(1000)  # (opening read the header, and the kernel a few pages after it)
        asked = column.prefetch([[0, 1024]])
        assert 1024 * 4096 <= asked <= 1025 * 4096  # whole pages
        deadline = time.monotonic() + 30  # background threads: wait for them, do not time them
        while bench.cached_fraction(files) < 0.45 and time.monotonic() < deadline:
            time.sleep(0.01)
        assert bench.cached_fraction(files) >= 0.45  # the first 1,024 of 2,048 rows (and the header page)
        assert column.is_cached(1000) and column.is_cached(1023)
        np.testing.assert_array_equal(column[:1024], np.arange(4096 * 1024, dtype=np.uint8).reshape(1024, 4096))


def test_prefetch_of_a_block_reads_it_all_past_the_kernels_per_call_cap(tmp_path, monkeypatch):
    # A block is asked with MADV_WILLNEED, which reads at most max(read_ahead_kb, max_sectors_kb)
    # per call (128 KiB on some disks): what the cap leaves out of a block is read all the same.
    from memseq import bench
    from memseq.readahead import pagein as _readahead

    path = tmp_path / "blocks"
    memseq.save(path, {"x": np.arange(4096 * 2048, dtype=np.uint8).reshape(2048, 4096)})
    ds = memseq.open(path)
    files = bench.data_files(ds)
    ds.close()
    bench.drop_page_cache(files)
    if bench.cached_fraction(files) > 0.5:
        pytest.skip("this file system keeps the file in memory (tmpfs?)")
    cap, calls = 128 * 1024, []
    real = _readahead._madvise

    def capped(address, length, advice):
        if advice == _readahead.mmap.MADV_WILLNEED:
            calls.append(length)
            length = min(length, cap)
        return real(address, length, advice)

    monkeypatch.setattr(_readahead, "_madvise", capped)
    with memseq.open(path) as ds:
        column = ds["x"]
        column.prefetch([[512, 1536]])  # 4 MiB: one block
        deadline = time.monotonic() + 30
        while not (column.is_cached(512) and column.is_cached(1535)) and time.monotonic() < deadline:
            time.sleep(0.01)
        assert all(column.is_cached(row) for row in range(512, 1536, 31))
        assert len(calls) == 1 and 1024 * 4096 <= calls[0] <= 1025 * 4096  # one exact request for the block
        calls.clear()
        column.prefetch([[512, 1536]])  # all cached now: nothing asked of the kernel
        time.sleep(0.2)
        assert calls == []


def _child_has_readahead_threads(queue) -> None:
    from memseq.readahead import pagein as _readahead

    buffer = np.zeros(3 * 4096, np.uint8)
    _readahead.read_ahead(buffer, np.array([buffer.ctypes.data]), np.array([buffer.ctypes.data + buffer.nbytes]))
    queue.put(sorted(t.name for t in threading.enumerate() if t.name.startswith("memseq-readahead")))


def test_readahead_threads_start_again_in_a_forked_worker():
    import multiprocessing

    from memseq.readahead import pagein as _readahead

    buffer = np.zeros(4096, np.uint8)
    _readahead.read_ahead(buffer, np.array([buffer.ctypes.data]), np.array([buffer.ctypes.data + 4096]))
    assert any(t.name.startswith("memseq-readahead") for t in threading.enumerate())
    context = multiprocessing.get_context("fork")  # a fork copies the queue but none of its threads
    queue = context.Queue()
    child = context.Process(target=_child_has_readahead_threads, args=(queue,))
    child.start()
    names = queue.get(timeout=60)
    child.join(60)
    assert names == [f"memseq-readahead-{i}" for i in range(4)]


@pytest.mark.parametrize("shuffle", [True, "block"])
def test_shares_read_ahead_their_own_rows_and_never_change(data_path, monkeypatch, shuffle):
    monkeypatch.setattr(Column, "is_cached", lambda self, row: False)  # as if the data were on disk
    asked = []
    real_prefetch = Column.prefetch
    monkeypatch.setattr(Column, "prefetch", lambda self, ranges, now=False: asked.append(np.asarray(ranges)) or real_prefetch(self, ranges, now))
    on = Flipped(data_path, x="image", y="label", batch_size=64, seed=3, shuffle=shuffle, readahead=5 * 64 * 200)
    off = Flipped(data_path, x="image", y="label", batch_size=64, seed=3, shuffle=shuffle, readahead=False)
    for i in range(len(on)):
        asked.clear()
        a, b = on.get_share(i, 1, 1, 2), off.get_share(i, 1, 1, 2)
        np.testing.assert_array_equal(a["image"], b["image"])
        np.testing.assert_array_equal(a["label"], b["label"])
        rows = np.concatenate([np.arange(x, y) for ranges in asked for x, y in ranges]) if asked else np.empty(0, int)
        k = 5  # the bound is five batches of 200-byte rows
        ahead = range(k + 1) if i == 0 else [i + k] if i + k < len(on) else []
        expected = [on.plan.replica_rows(on.batch_rows(j, 1), 1, 2) for j in ahead]
        expected = np.sort(np.concatenate(expected)) if expected else np.empty(0, int)
        np.testing.assert_array_equal(np.unique(rows), np.unique(expected))  # replica 1's rows only


# --------------------------------------------------------------------------- which ranges (memseq.readahead.ranges)


def test_block_readahead_asks_for_each_block_once_per_epoch():
    plan = BatchPlan(1000, 64, shuffle=memseq.BlockShuffle(block_rows=50, window_blocks=4), seed=0)
    ranges = np.concatenate([batch_ranges(plan, i, 3) for i in range(plan.num_batches)])
    covered = np.zeros(1000, int)
    for start, stop in ranges:
        covered[start:stop] += 1
    assert (covered == 1).all()


def test_full_shuffle_readahead_is_the_batch_rows_as_runs():
    plan = BatchPlan(1000, 64, shuffle=True, seed=0)
    ranges = batch_ranges(plan, 3, 1)
    rows = np.concatenate([np.arange(a, b) for a, b in ranges])
    assert np.array_equal(rows, plan.batch_rows(3, 1))
    assert not reads_whole_blocks(plan)


def test_only_batches_that_start_a_block_read_new_blocks():
    plan = BatchPlan(1000, 16, shuffle=memseq.BlockShuffle(block_rows=50, window_blocks=3), seed=4)
    assert reads_whole_blocks(plan)
    for epoch in (0, 1):
        starting = [i for i in range(plan.num_batches) if reads_new_blocks(plan, i, epoch)]
        with_ranges = [i for i in range(plan.num_batches) if len(batch_ranges(plan, i, epoch))]
        assert starting == with_ranges and starting[0] == 0
    full = BatchPlan(1000, 16, shuffle=True, seed=4)
    assert all(reads_new_blocks(full, i, 0) for i in range(full.num_batches))


def test_kept_block_touches_give_the_same_ranges_and_another_epochs_are_not_used():
    plan = BatchPlan(1000, 16, shuffle=memseq.BlockShuffle(block_rows=50, window_blocks=3), seed=4)
    epoch0 = block_touches(plan, 0)
    for i in range(plan.num_batches):
        np.testing.assert_array_equal(batch_ranges(plan, i, 0, touches=epoch0), batch_ranges(plan, i, 0))
        # Touches of epoch 0 handed in for epoch 1 are recomputed, not trusted.
        np.testing.assert_array_equal(batch_ranges(plan, i, 1, touches=epoch0), batch_ranges(plan, i, 1))
        assert reads_new_blocks(plan, i, 1, epoch0) == reads_new_blocks(plan, i, 1)
    # (and the epochs differ, so a stale one would have shown)
    assert any(not np.array_equal(batch_ranges(plan, i, 1), batch_ranges(plan, i, 0)) for i in range(plan.num_batches))


@pytest.mark.parametrize("shuffle", [True, memseq.BlockShuffle(block_rows=50, window_blocks=3), False])
def test_a_share_reads_ahead_its_replicas_rows_whatever_the_order(shuffle):
    plan = BatchPlan(1000, 16, shuffle=shuffle, seed=4, indices=np.arange(0, 1000, 2))
    for i in (0, 7, plan.num_batches - 1):
        rows = np.concatenate([np.arange(a, b) for a, b in batch_ranges(plan, i, 2, share=(1, 4))])
        np.testing.assert_array_equal(rows, np.sort(plan.replica_rows(plan.batch_rows(i, 2), 1, 4)))


def test_probe_row_is_a_row_of_its_batch():
    plan = BatchPlan(1000, 16, shuffle=True, seed=4, indices=np.arange(500, 1000))
    for i in range(plan.num_batches):
        assert probe_row(plan, i, 3) in set(plan.batch_rows(i, 3).tolist())


def test_batch_readahead_pickles_without_its_epochs_block_touches(data_path, monkeypatch):
    monkeypatch.setattr(Column, "is_cached", lambda self, row: False)
    asked = []
    monkeypatch.setattr(Column, "prefetch", lambda self, ranges, now=False: asked.append(np.asarray(ranges)) or 0)
    seq = memseq.MemmapSequence(data_path, x="image", batch_size=16, seed=2, readahead=True,
                                shuffle=memseq.BlockShuffle(block_rows=100, window_blocks=2))
    readahead = seq._readahead
    readahead.ask(0, 0)
    assert readahead._touches is not None and readahead._touches.epoch == 0
    copy = pickle.loads(pickle.dumps(readahead))
    assert copy._touches is None and copy.lookahead == readahead.lookahead
    first = [r.copy() for r in asked]
    asked.clear()
    copy.ask(0, 0)  # recomputed in the copy: the same blocks
    np.testing.assert_array_equal(np.concatenate(asked), np.concatenate(first))
