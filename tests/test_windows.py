"""memseq.read.windows: fixed-length windows over a 1-D token column."""

from __future__ import annotations

import pickle

import numpy as np
import pytest
from conftest import assert_same_array
from hypothesis import given, settings
from hypothesis import strategies as st

import memseq


def _raw_tokens(tmp_path, n, dtype=np.uint16):
    tokens = (np.arange(n) * 7 % 65521).astype(dtype)
    path = tmp_path / "train.bin"
    tokens.tofile(path)
    return tokens, memseq.open_raw(path, dtype=dtype, shape=(-1,))


@settings(max_examples=60, deadline=None)
@given(n=st.integers(0, 300), length=st.integers(1, 40), stride=st.integers(1, 50))
def test_windows_cover_exactly_the_rows_they_claim(tmp_path_factory, n, length, stride):
    tokens, raw = _raw_tokens(tmp_path_factory.mktemp("w"), n)
    win = memseq.windows(raw, length=length, stride=stride)
    expected = [tokens[i : i + length] for i in range(0, n - length + 1, stride)]
    assert len(win) == len(expected) and win.shape == (len(expected), length)
    if expected:
        assert_same_array(win[:], np.stack(expected))
        assert_same_array(win[-1], expected[-1])
        # The last window ends inside the stream; one more would not fit.
        assert (len(win) - 1) * stride + length <= n < len(win) * stride + length
        pick = np.random.default_rng(0).integers(0, len(win), 9)
        assert_same_array(win[pick], np.stack([expected[i] for i in pick]))
    else:
        assert n < length


def test_windows_over_sharded_field_cross_shards(tmp_path):
    tokens = np.arange(1000, dtype=np.int32)
    memseq.save(tmp_path / "ds", {"tokens": tokens}, shard_rows=97)
    win = memseq.windows(memseq.open(tmp_path / "ds")["tokens"], length=65, stride=64)
    assert_same_array(win[:], np.stack([tokens[i : i + 65] for i in range(0, 1000 - 64, 64)]))


def test_windows_pickle_by_reference_and_memmap_source(tmp_path):
    tokens, raw = _raw_tokens(tmp_path, 100_000)
    win = memseq.windows(raw, length=1025, stride=1024)
    data = pickle.dumps(win)
    assert len(data) < 2000
    assert_same_array(pickle.loads(data)[3], tokens[3 * 1024 : 3 * 1024 + 1025])
    mm = np.memmap(tmp_path / "train.bin", dtype=np.uint16, mode="r")
    win2 = memseq.windows(mm, length=1025, stride=1024)
    assert len(pickle.dumps(win2)) < 2000
    assert_same_array(win2[:], win[:])
    assert_same_array(memseq.windows(tokens, length=10, stride=3)[5], tokens[15:25])


def test_windows_refuse_bad_arguments(tmp_path):
    _, raw = _raw_tokens(tmp_path, 100)
    with pytest.raises(memseq.SchemaError, match="length must be an int >= 1"):
        memseq.windows(raw, length=0)
    with pytest.raises(memseq.SchemaError, match="stride must be an int >= 1"):
        memseq.windows(raw, length=4, stride=0)
    with pytest.raises(memseq.SchemaError, match="needs a 1-D column"):
        memseq.windows(np.zeros((4, 4)), length=2)
    with pytest.raises(memseq.SchemaError, match="takes a 1-D memseq column"):
        memseq.windows([1, 2, 3], length=2)
    with pytest.raises(memseq.BatchIndexError):
        memseq.windows(raw, length=10)[10]


class NextToken(memseq.MemmapSequence):
    """Inputs and targets shifted by one token, split from each window."""

    def augment(self, batch, rng):
        # Both names select the same windows (x and y need two names).
        batch["inputs"], batch["targets"] = batch["inputs"][:, :-1], batch["targets"][:, 1:]
        return batch


@pytest.mark.parametrize("shuffle", [True, "block"])
def test_windows_in_a_sequence_split_into_inputs_and_targets(tmp_path, shuffle):
    tokens, raw = _raw_tokens(tmp_path, 20_000)
    win = memseq.windows(raw, length=33, stride=32)
    seq = NextToken({"inputs": win, "targets": win}, x="inputs", y="targets",
                    batch_size=16, seed=3, shuffle=shuffle)
    seen = []
    for i in range(len(seq)):
        x, y = seq.get_batch(i)
        rows = seq.batch_rows(i)
        assert_same_array(x, np.stack([tokens[r * 32 : r * 32 + 32] for r in rows]))
        assert_same_array(y, np.stack([tokens[r * 32 + 1 : r * 32 + 33] for r in rows]))
        seen += rows.tolist()
    assert sorted(seen) == list(range(len(win)))  # every window once per epoch


def test_windows_through_to_tf_dataset_with_output_signature(tmp_path):
    tf = pytest.importorskip("tensorflow")
    tokens, raw = _raw_tokens(tmp_path, 5_000)
    win = memseq.windows(raw, length=17, stride=16)
    seq = NextToken({"inputs": win, "targets": win}, x="inputs", y="targets", batch_size=8, seed=1)
    spec = tf.TensorSpec((None, 16), tf.uint16)
    for i, (x, y) in enumerate(seq.to_tf_dataset(output_signature=(spec, spec))):
        want_x, want_y = seq.get_batch(i)
        assert_same_array(x.numpy(), want_x)
        assert_same_array(y.numpy(), want_y)


def test_windows_over_a_ragged_field_run_across_rows(tmp_path):
    rows = [np.arange(n, dtype=np.uint16) + 100 * i for i, n in enumerate([5, 0, 9, 3, 7, 11])]
    memseq.save(tmp_path / "ds", {"tokens": rows}, shard_rows=4)
    column = memseq.open(tmp_path / "ds")["tokens"]
    stream = np.concatenate(rows)
    assert_same_array(column.values[:], stream)
    assert len(pickle.dumps(column.values)) < 2000
    win = memseq.windows(column, length=8, stride=5)
    assert_same_array(win[:], np.stack([stream[i : i + 8] for i in range(0, len(stream) - 7, 5)]))
    assert_same_array(pickle.loads(pickle.dumps(win))[2], stream[10:18])
