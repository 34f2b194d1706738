"""Epoch orders: pure functions of (seed, epoch), pinned so they never drift."""

from __future__ import annotations

import numpy as np
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

import memseq
from memseq.order import BatchPlan, BlockShuffle, EpochOrder, FullShuffle, Sequential, num_batches, resolve_shuffle


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
