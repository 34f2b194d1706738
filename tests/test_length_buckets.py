"""LengthBuckets: batches of similar length, every row once per epoch, a pure function of (seed, epoch)."""

from __future__ import annotations

import pickle

import numpy as np
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

import memseq
from memseq.order import BatchPlan


def _lengths(n, seed=0):
    rng = np.random.default_rng(seed)
    return np.minimum(rng.zipf(1.5, n) * 8, 4096)


@settings(max_examples=60, deadline=None)
@given(
    n=st.integers(1, 400),
    batch_size=st.integers(1, 40),
    window_batches=st.integers(1, 8),
    subset=st.booleans(),
    drop_remainder=st.booleans(),
    epoch=st.integers(0, 3),
)
def test_every_row_once_per_epoch(n, batch_size, window_batches, subset, drop_remainder, epoch):
    lengths = _lengths(n)
    indices = np.arange(0, n, 3) if subset else None
    served = n if indices is None else len(indices)
    if (served // batch_size if drop_remainder else served) == 0:
        return
    plan = BatchPlan(n, batch_size, shuffle=memseq.LengthBuckets(lengths, window_batches), seed=9,
                     drop_remainder=drop_remainder, indices=indices)
    rows = np.concatenate([plan.batch_rows(i, epoch) for i in range(plan.num_batches)])
    expected = np.arange(n) if indices is None else indices
    if drop_remainder:
        assert len(rows) == plan.num_batches * batch_size and len(set(rows.tolist())) == len(rows)
        assert set(rows.tolist()) <= set(expected.tolist())
    else:
        assert sorted(rows.tolist()) == sorted(expected.tolist())
    assert all(len(plan.batch_rows(i, epoch)) == batch_size for i in range(served // batch_size))


def test_pure_function_of_seed_and_epoch_and_pinned():
    lengths = _lengths(50)
    a = BatchPlan(50, 8, shuffle=memseq.LengthBuckets(lengths, 2), seed=0)
    b = pickle.loads(pickle.dumps(BatchPlan(50, 8, shuffle=memseq.LengthBuckets(lengths, 2), seed=0)))
    for epoch in (0, 1, 5):
        assert np.array_equal(a.permutation(epoch), b.permutation(epoch))
    assert not np.array_equal(a.permutation(0), a.permutation(1))
    # Golden: the order for seed 0, epoch 0 never drifts silently.
    assert a.batch_rows(0, 0).tolist() == GOLDEN_BATCH_0


GOLDEN_BATCH_0 = [6, 16, 19, 21, 30, 35, 43, 48]


def test_buckets_cut_padding_against_full_shuffle():
    lengths = _lengths(20_000)
    fractions = {}
    for name, shuffle in {"full": True, "buckets": memseq.LengthBuckets(lengths, 64)}.items():
        plan = BatchPlan(len(lengths), 32, shuffle=shuffle, seed=1)
        fractions[name] = memseq.padding_fraction(lengths, [plan.batch_rows(i, 0) for i in range(plan.num_batches)])
    assert fractions["buckets"] < 0.2 < 0.6 < fractions["full"], fractions


def test_accepts_a_ragged_column_and_checks_its_arguments(tmp_path):
    rows = [np.zeros(k, np.uint8) for k in (3, 1, 2, 5)]
    memseq.save(tmp_path / "ds", {"tokens": rows, "label": np.arange(4)})
    ds = memseq.open(tmp_path / "ds")
    seq = memseq.MemmapSequence(ds, x="tokens", y="label", batch_size=2, seed=0,
                                shuffle=memseq.LengthBuckets(ds["tokens"]))
    assert sorted(np.concatenate([seq.batch_rows(i) for i in range(2)]).tolist()) == [0, 1, 2, 3]
    with pytest.raises(memseq.SchemaError, match="one length per row of the data \\(4\\). Received 3"):
        memseq.MemmapSequence(ds, x="tokens", batch_size=2, shuffle=memseq.LengthBuckets([1, 2, 3]))
    with pytest.raises(memseq.SchemaError, match="lengths must be 1-D integers"):
        memseq.LengthBuckets([1.5, 2.0])
    with pytest.raises(memseq.SchemaError, match="window_batches must be an int >= 1"):
        memseq.LengthBuckets([1, 2], window_batches=0)
