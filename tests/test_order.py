"""Epoch orders: pure functions of (seed, epoch), pinned so they never drift."""

from __future__ import annotations

import numpy as np
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

import memseq
from memseq.order import (
    BatchPlan,
    BlockShuffle,
    EpochOrder,
    FullShuffle,
    Sequential,
    num_batches,
    resolve_shuffle,
)


def test_golden_full_shuffle_order():
    # If this changes, every user's "seed=0" run changes: bump the docs, never silently.
    assert FullShuffle().permutation(12, 0, 0).tolist() == [9, 2, 7, 4, 5, 11, 0, 3, 6, 10, 8, 1]
    assert FullShuffle().permutation(12, 0, 1).tolist() == [0, 7, 1, 11, 3, 10, 4, 6, 9, 8, 2, 5]
    assert FullShuffle().permutation(12, 7, 3).tolist() == [4, 2, 5, 8, 7, 3, 11, 10, 0, 1, 9, 6]


@settings(max_examples=50, deadline=None)
@given(n=st.integers(0, 3000), seed=st.integers(0, 2**32 - 1), epoch=st.integers(0, 10**6))
def test_full_shuffle_is_a_pure_permutation(n, seed, epoch):
    a = FullShuffle().permutation(n, seed, epoch)
    b = FullShuffle().permutation(n, seed, epoch)
    assert np.array_equal(a, b)
    assert np.array_equal(np.sort(a), np.arange(n))


def test_epochs_and_seeds_give_different_orders():
    orders = {tuple(FullShuffle().permutation(500, seed, epoch)) for seed in (0, 1) for epoch in range(5)}
    assert len(orders) == 10


def test_sequential_is_identity_every_epoch():
    assert Sequential().permutation(7, 3, 9).tolist() == list(range(7))
    assert not Sequential().sorts_batches and FullShuffle().sorts_batches


def test_resolve_shuffle():
    assert isinstance(resolve_shuffle(True), FullShuffle)
    assert isinstance(resolve_shuffle(np.bool_(False)), Sequential)
    custom = FullShuffle()
    assert resolve_shuffle(custom) is custom
    assert isinstance(custom, EpochOrder)
    assert isinstance(resolve_shuffle("block", row_nbytes=12288), BlockShuffle)
    for bad in ("yes", 1, None, "blocks"):
        with pytest.raises(memseq.SchemaError, match="shuffle must be True"):
            resolve_shuffle(bad)


@pytest.mark.parametrize(("rows", "batch", "drop", "expected"), [(10, 3, False, 4), (10, 3, True, 3), (9, 3, True, 3), (2, 3, True, 0), (0, 3, False, 0)])
def test_num_batches(rows, batch, drop, expected):
    assert num_batches(rows, batch, drop) == expected


# --------------------------------------------------------------------------- block shuffle


def test_golden_block_shuffle_order():
    # If this changes, every user's block-shuffled "seed=0" run changes: never silently.
    assert BlockShuffle(block_rows=3, window_blocks=2).permutation(10, 0, 0).tolist() == [2, 0, 8, 1, 7, 6, 9, 4, 5, 3]
    assert BlockShuffle(block_rows=3, window_blocks=2).permutation(10, 0, 1).tolist() == [0, 2, 1, 9, 6, 7, 5, 3, 8, 4]


@settings(max_examples=60, deadline=None)
@given(
    n=st.integers(0, 5000),
    block_rows=st.integers(1, 700),
    window_blocks=st.integers(1, 20),
    seed=st.integers(0, 2**32 - 1),
    epoch=st.integers(0, 10**6),
)
def test_block_shuffle_is_a_pure_permutation_within_windows(n, block_rows, window_blocks, seed, epoch):
    order = BlockShuffle(block_rows=block_rows, window_blocks=window_blocks)
    a = order.permutation(n, seed, epoch)
    assert np.array_equal(a, order.permutation(n, seed, epoch))
    assert np.array_equal(np.sort(a), np.arange(n))
    # Rows mix only within a window of blocks: any window-sized stretch of the epoch
    # draws from at most two windows' blocks.
    window = block_rows * window_blocks
    for start in range(0, n, window):
        blocks = np.unique(a[start : start + window] // block_rows)
        assert len(blocks) <= 2 * window_blocks


def test_block_shuffle_differs_across_epochs_and_mixes_blocks():
    order = BlockShuffle(block_rows=100, window_blocks=8)
    orders = {tuple(order.permutation(10_000, 0, epoch)) for epoch in range(4)}
    assert len(orders) == 4
    perm = order.permutation(10_000, 0, 0)
    batch = np.unique(perm[:256] // 100)
    assert 4 <= len(batch) <= 8  # one window: several blocks, never more than the window


def test_block_shuffle_arguments_are_checked():
    for bad in ({"block_rows": 0}, {"window_blocks": 0}, {"block_rows": 2.5}):
        with pytest.raises(memseq.SchemaError, match="must be an int >= 1"):
            BlockShuffle(**bad)


def test_block_shuffle_defaults_are_about_4_mib_blocks():
    order = resolve_shuffle("block", row_nbytes=12 * 1024 + 8)
    assert isinstance(order, BlockShuffle) and order.block_rows == 4 * 2**20 // (12 * 1024 + 8)
    assert order.window_blocks == 64


def test_plan_with_block_shuffle_honours_indices_and_replica_shares():
    indices = np.arange(0, 3000, 3)
    plan = BatchPlan(3000, 64, shuffle=BlockShuffle(block_rows=50, window_blocks=4), seed=1, indices=indices)
    rows = np.concatenate([plan.batch_rows(i, 2) for i in range(plan.num_batches)])
    assert np.array_equal(np.sort(rows), indices)
    shares = [plan.replica_rows(plan.batch_rows(5, 2), r, 4) for r in range(4)]
    assert np.array_equal(np.sort(np.concatenate(shares)), plan.batch_rows(5, 2))
