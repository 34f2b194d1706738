"""Padded batches of variable-length fields: values, lengths, masks; identical in every path."""

from __future__ import annotations

import pickle

import numpy as np
import pytest
from conftest import assert_same_array

import memseq

N = 203


def _rows(n=N, trailing=(), seed=0):
    rng = np.random.default_rng(seed)
    lengths = np.minimum(rng.zipf(1.6, n) * 3, 90) * (rng.random(n) > 0.05)  # long tail, some empty rows
    return [rng.integers(1, 30000, (int(k), *trailing)).astype(np.uint16) for k in lengths]


@pytest.fixture(scope="module")
def ragged_path(tmp_path_factory):
    path = tmp_path_factory.mktemp("pad") / "ds"
    memseq.save(path, {"tokens": _rows(), "label": np.arange(N)}, shard_rows=64)
    return path


def _expected(rows, batch_rows, value=0, max_length=None, multiple=1):
    picked = [rows[r][:max_length] for r in batch_rows]
    lengths = np.array([len(r) for r in picked], np.int32)
    longest = max(1, int(lengths.max()))
    width = -(-longest // multiple) * multiple
    out = np.full((len(picked), width, *rows[0].shape[1:]), value, rows[0].dtype)
    for k, r in enumerate(picked):
        out[k, : len(r)] = r
    return out, lengths, np.arange(width)[None, :] < lengths[:, None]


@pytest.mark.parametrize(
    "padding",
    [None, memseq.Padding(value=7), memseq.Padding(max_length=10), memseq.Padding(value=1, max_length=33, multiple=8)],
)
def test_padded_values_lengths_and_mask(ragged_path, padding):
    rows = _rows()
    seq = memseq.MemmapSequence(ragged_path, x=["tokens", "tokens:lengths", "tokens:mask"], y="label",
                                batch_size=16, seed=1, padding=padding)
    p = padding or memseq.Padding()
    for i in range(len(seq)):
        (tokens, lengths, mask), label = seq.get_batch(i)
        batch_rows = seq.batch_rows(i)
        want, want_lengths, want_mask = _expected(rows, batch_rows, p.value, p.max_length, p.multiple)
        assert_same_array(tokens, want)
        assert_same_array(lengths, want_lengths)
        assert_same_array(mask, want_mask)
        assert_same_array(label, batch_rows)
        assert tokens.shape[1] % p.multiple == 0


def test_trailing_dims_and_dict_padding(tmp_path):
    rows = _rows(40, trailing=(3,))
    memseq.save(tmp_path / "ds", {"frames": rows, "label": np.arange(40)})
    seq = memseq.MemmapSequence(tmp_path / "ds", x="frames", y="label", batch_size=8, shuffle=False,
                                padding={"frames": memseq.Padding(value=2, multiple=4)})
    assert seq.fields["frames"] == (np.dtype(np.uint16), (None, 3))
    frames, _ = seq.get_batch(2)
    assert_same_array(frames, _expected(rows, np.arange(16, 24), 2, None, 4)[0])


def test_padding_arguments_are_checked(ragged_path, tmp_path):
    with pytest.raises(memseq.SchemaError, match="max_length must be an int >= 1"):
        memseq.Padding(max_length=0)
    with pytest.raises(memseq.SchemaError, match="multiple must be an int >= 1"):
        memseq.Padding(multiple=0)
    with pytest.raises(memseq.SchemaError, match="value 70000 does not fit"):
        memseq.MemmapSequence(ragged_path, x="tokens", padding=memseq.Padding(value=70000))
    with pytest.raises(memseq.SchemaError, match="not variable-length: \\['label'\\]"):
        memseq.MemmapSequence(ragged_path, x="tokens", padding={"label": memseq.Padding()})
    memseq.save(tmp_path / "fixed", {"x": np.arange(4)})
    with pytest.raises(memseq.SchemaError, match="no field is variable-length"):
        memseq.MemmapSequence(tmp_path / "fixed", x="x", padding=memseq.Padding())
    with pytest.raises(memseq.SchemaError, match="no field 'tokens:maks'"):
        memseq.MemmapSequence(ragged_path, x="tokens:maks")


def test_sequence_pickles_small(ragged_path):
    seq = memseq.MemmapSequence(ragged_path, x=["tokens", "tokens:mask"], batch_size=16, seed=1,
                                padding=memseq.Padding(max_length=20))
    data = pickle.dumps(seq)
    assert len(data) < 16 * 1024
    copy = pickle.loads(data)
    for a, b in zip(copy.get_batch(3)[0], seq.get_batch(3)[0]):
        assert_same_array(a, b)


def test_padding_fraction():
    lengths = np.array([1, 3, 2, 2])
    assert memseq.padding_fraction(lengths, [[0, 1], [2, 3]]) == pytest.approx(1 - 8 / 10)
    assert memseq.padding_fraction(lengths, [[0, 1], [2, 3]], memseq.Padding(multiple=4)) == pytest.approx(1 - 8 / 16)


def test_to_tf_dataset_serves_the_same_padded_batches(ragged_path):
    tf = pytest.importorskip("tensorflow")
    seq = memseq.MemmapSequence(ragged_path, x={"tokens": "tokens", "mask": "tokens:mask"}, y="tokens:lengths",
                                batch_size=16, seed=4, padding=memseq.Padding(value=3, multiple=8))
    ds = seq.to_tf_dataset()
    spec_x, spec_y = ds.element_spec
    assert spec_x["tokens"] == tf.TensorSpec((None, None), tf.uint16)
    assert spec_x["mask"] == tf.TensorSpec((None, None), tf.bool)
    assert spec_y == tf.TensorSpec((None,), tf.int32)
    for epoch in (0, 1):
        for i, (x, y) in enumerate(ds):
            want_x, want_y = seq.get_batch(i, epoch)
            assert_same_array(x["tokens"].numpy(), want_x["tokens"])
            assert_same_array(x["mask"].numpy(), want_x["mask"])
            assert_same_array(y.numpy(), want_y)


WORKERS = """
import pickle, sys
import memseq
from keras.src.trainers.data_adapters.py_dataset_adapter import PyDatasetAdapter

if __name__ == "__main__":
    path, processes, out = sys.argv[1], sys.argv[2] == "1", sys.argv[3]
    if processes:
        import multiprocessing
        multiprocessing.set_start_method("spawn", force=True)
    seq = memseq.MemmapSequence(path, x=["tokens", "tokens:mask"], y="tokens:lengths", batch_size=16, seed=5,
                                padding=memseq.Padding(max_length=40, multiple=4),
                                workers=2, use_multiprocessing=processes)
    seq.set_epoch(2)
    adapter = PyDatasetAdapter(seq, shuffle=False)
    batches = [(list(x), y) for x, y in adapter.get_numpy_iterator()]
    with open(out, "wb") as f:
        pickle.dump(batches, f)
"""


@pytest.mark.parametrize(
    "processes", [False, pytest.param(True, marks=pytest.mark.slow)], ids=["threads", "spawned-processes"]
)
def test_keras_workers_serve_the_same_padded_batches(ragged_path, run_python, tmp_path, processes):
    out = tmp_path / "batches.pkl"
    result = run_python(WORKERS, ragged_path, int(processes), out)
    assert result.returncode == 0, result.stderr[-3000:]
    batches = pickle.loads(out.read_bytes())
    seq = memseq.MemmapSequence(ragged_path, x=["tokens", "tokens:mask"], y="tokens:lengths", batch_size=16, seed=5,
                                padding=memseq.Padding(max_length=40, multiple=4))
    assert len(batches) == len(seq)
    for i, (x, y) in enumerate(batches):
        want_x, want_y = seq.get_batch(i, 2)
        assert_same_array(x[0], want_x[0])
        assert_same_array(x[1], want_x[1])
        assert_same_array(y, want_y)


def test_to_tf_dataset_ragged_serves_the_rows(ragged_path):
    tf = pytest.importorskip("tensorflow")
    rows = _rows()
    seq = memseq.MemmapSequence(ragged_path, x={"tokens": "tokens", "mask": "tokens:mask"}, y="label",
                                batch_size=16, seed=4, padding=memseq.Padding(max_length=25, multiple=8))
    ds = seq.to_tf_dataset(ragged=True)
    spec_x, spec_y = ds.element_spec
    assert isinstance(spec_x["tokens"], tf.RaggedTensorSpec) and spec_x["tokens"].dtype == tf.uint16
    assert spec_x["mask"] == tf.TensorSpec((None, None), tf.bool)  # derived fields stay dense
    for i, (x, y) in enumerate(ds):
        assert_same_array(y.numpy(), seq.batch_rows(i))
        for got, r in zip(x["tokens"], seq.batch_rows(i)):
            assert_same_array(got.numpy(), rows[r][:25])
    with pytest.raises(memseq.SchemaError, match="ragged must be True or False"):
        seq.to_tf_dataset(ragged="yes")
