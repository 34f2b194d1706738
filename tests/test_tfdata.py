"""memseq.adapters.tf_data: MemmapSequence as a tf.data.Dataset."""

from __future__ import annotations

import subprocess
import sys

import numpy as np
import pytest

import memseq
from memseq import SchemaError

tf = pytest.importorskip("tensorflow")
keras = pytest.importorskip("keras")

import memseq.adapters.tf_data  # after the importorskip

N = 100


# The data_path fixture (conftest); three shards: gathers cross shard boundaries.
pytestmark = pytest.mark.dataset(N, (6, 5, 3), classes=5, fields=("meta", "weight", "row"), shard_rows=40)


def _numpy(structure):
    return tf.nest.map_structure(lambda t: t.numpy(), structure)


def _assert_same_batch(got, expected):
    tf.nest.assert_same_structure(got, expected)
    for g, e in zip(tf.nest.flatten(got), tf.nest.flatten(expected)):
        g = g.numpy() if hasattr(g, "numpy") else g
        assert g.dtype == e.dtype and g.shape == e.shape
        np.testing.assert_array_equal(g, e)


def _epochs(ds, count):
    return [[_numpy(batch) for batch in ds] for _ in range(count)]


SELECTIONS = [
    pytest.param({"x": "image", "y": "label"}, id="single"),
    pytest.param({"x": ["image", "meta"], "y": "label", "sample_weight": "weight"}, id="tuple-x-with-weights"),
    pytest.param({"x": {"pixels": "image", "extra": "meta"}, "y": {"out": "label"}}, id="dicts"),
    pytest.param({"x": "image", "y": None}, id="y-none"),
    pytest.param({"x": ["image", "meta"], "y": None}, id="y-none-tuple-x"),
]


@pytest.mark.parametrize("selection", SELECTIONS)
def test_same_batches_same_order_as_the_sequence(data_path, selection):
    seq = memseq.MemmapSequence(data_path, **selection, batch_size=16, seed=3)
    ds = memseq.adapters.tf_data.to_tf_dataset(seq)
    assert int(ds.cardinality()) == len(seq) == 7
    for epoch, batches in enumerate(_epochs(ds, 2)):
        assert len(batches) == len(seq)
        for i, batch in enumerate(batches):
            _assert_same_batch(batch, seq.get_batch(i, epoch))
    assert seq.epoch == 0, "iterating the dataset must not change the sequence"


def test_element_spec_matches_selection(data_path):
    seq = memseq.MemmapSequence(data_path, x={"pixels": "image"}, y="label", sample_weight="weight", batch_size=8)
    assert seq.to_tf_dataset().element_spec == (
        {"pixels": tf.TensorSpec((None, 6, 5, 3), tf.uint8)},
        tf.TensorSpec((None,), tf.int64),
        tf.TensorSpec((None,), tf.float32),
    )
    # y=None: a 1-tuple, like seq[i]; Keras reads it as inputs only.
    seq = memseq.MemmapSequence(data_path, x=["image", "meta"], batch_size=8)
    assert seq.to_tf_dataset().element_spec == (
        (tf.TensorSpec((None, 6, 5, 3), tf.uint8), tf.TensorSpec((None, 4), tf.float32)),
    )


class _Counting(memseq.MemmapSequence):
    calls = 0

    def get_fields(self, index, epoch):
        type(self).calls += 1
        return super().get_fields(index, epoch)

    def batch_rows(self, index, epoch=None):
        type(self).calls += 1
        return super().batch_rows(index, epoch)

    def augment(self, batch, rng):
        type(self).calls += 1
        return batch


def test_building_and_element_spec_read_no_batch(data_path, monkeypatch):
    reads = []
    # Every row read from a file goes through Column.gather_sorted.
    original_gather = memseq.Column.gather_sorted
    monkeypatch.setattr(memseq.Column, "gather_sorted", lambda self, *a, **k: reads.append(1) or original_gather(self, *a, **k))
    seq = _Counting(data_path, x="image", y="label", batch_size=16, seed=1)
    ds = seq.to_tf_dataset()
    spec = ds.element_spec
    assert int(ds.cardinality()) == len(seq)
    assert spec == (tf.TensorSpec((None, 6, 5, 3), tf.uint8), tf.TensorSpec((None,), tf.int64))
    assert _Counting.calls == 0 and reads == []
    next(iter(ds))  # the counters do count once the pipeline runs
    assert _Counting.calls > 0 and reads


def test_each_iteration_is_the_next_epoch_and_covers_every_row(data_path):
    seq = memseq.MemmapSequence(data_path, x="row", y="label", batch_size=16, seed=11)
    seq.set_epoch(4)
    ds = seq.to_tf_dataset()
    seq.set_epoch(9)  # later changes to the sequence do not move the dataset
    orders = []
    for epoch, batches in zip((4, 5, 6), _epochs(ds, 3)):
        rows = np.concatenate([x for x, _ in batches])
        np.testing.assert_array_equal(np.sort(rows), np.arange(N))
        np.testing.assert_array_equal(rows, np.concatenate([seq.batch_rows(i, epoch) for i in range(len(seq))]))
        orders.append(rows)
    assert not np.array_equal(orders[0], orders[1]) and not np.array_equal(orders[1], orders[2])
    # epoch= overrides the sequence's epoch.
    first = next(iter(seq.to_tf_dataset(epoch=2)))
    _assert_same_batch(first, seq.get_batch(0, 2))


def test_deterministic_false_serves_the_same_batches(data_path):
    seq = memseq.MemmapSequence(data_path, x="row", y="label", batch_size=8, seed=5)
    ds = seq.to_tf_dataset(deterministic=False, num_parallel_calls=4)
    for epoch, batches in enumerate(_epochs(ds, 2)):
        got = sorted(tuple(x) for x, _ in batches)
        assert got == sorted(tuple(seq.batch_rows(i, epoch)) for i in range(len(seq)))


class _Noisy(memseq.MemmapSequence):
    """Augments with the rng only: flip, integer noise, a float field scaled."""

    def augment(self, batch, rng):
        image = batch["image"]
        if rng.random() < 0.5:
            image = image[:, :, ::-1]  # a non-contiguous view
        noise = rng.integers(-3, 4, size=image.shape)
        batch["image"] = np.clip(image.astype(np.int16) + noise, 0, 255).astype(np.uint8)
        batch["meta"] = batch["meta"] * rng.normal(size=(len(batch["meta"]), 1)).astype(np.float32)
        return batch


def test_augment_runs_in_the_pipeline_bit_identical(data_path):
    seq = _Noisy(data_path, x={"pixels": "image", "extra": "meta"}, y="label", batch_size=16, seed=21)
    for epoch, batches in enumerate(_epochs(seq.to_tf_dataset(num_parallel_calls=4), 2)):
        for i, batch in enumerate(batches):
            _assert_same_batch(batch, seq.get_batch(i, epoch))


class _ToFloat(memseq.MemmapSequence):
    def augment(self, batch, rng):
        batch["image"] = batch["image"][:, :4].astype(np.float32) / 255
        return batch


def test_output_signature_for_augment_that_changes_dtype_and_shape(data_path):
    seq = _ToFloat(data_path, x="image", y="label", batch_size=16, seed=0)
    with pytest.raises(tf.errors.OpError, match=r"Field 'image'.*float32.*output_signature"):
        next(iter(seq.to_tf_dataset()))
    signature = (tf.TensorSpec((None, 4, 5, 3), tf.float32), tf.TensorSpec((None,), tf.int64))
    ds = seq.to_tf_dataset(output_signature=signature)
    assert ds.element_spec == signature
    for i, batch in enumerate(_epochs(ds, 1)[0]):
        _assert_same_batch(batch, seq.get_batch(i, 0))


def test_output_signature_is_validated(data_path):
    seq = memseq.MemmapSequence(data_path, x="image", y="label", batch_size=16)
    with pytest.raises(SchemaError, match="structure of a batch"):
        seq.to_tf_dataset(output_signature=tf.TensorSpec((None, 6, 5, 3), tf.uint8))
    with pytest.raises(SchemaError, match="needs a tf.TensorSpec"):
        seq.to_tf_dataset(output_signature=(tf.TensorSpec((None, 6, 5, 3), tf.uint8), "int64"))
    with pytest.raises(SchemaError, match="batch dimension"):
        seq.to_tf_dataset(output_signature=(tf.TensorSpec((None, 6, 5, 3), tf.uint8), tf.TensorSpec((), tf.int64)))


def test_invalid_arguments(data_path):
    seq = memseq.MemmapSequence(data_path, x="image", y="label", batch_size=16)
    with pytest.raises(SchemaError, match="MemmapSequence"):
        memseq.adapters.tf_data.to_tf_dataset({"image": np.zeros((3, 2))})
    with pytest.raises(SchemaError, match="epoch"):
        seq.to_tf_dataset(epoch=-1)
    with pytest.raises(SchemaError, match="deterministic"):
        seq.to_tf_dataset(deterministic="yes")
    with pytest.raises(TypeError):
        seq.to_tf_dataset(batch_size=3)


def test_batches_are_fresh_arrays(data_path):
    """Tensors of one iteration stay intact while later iterations run (no buffer reuse)."""
    seq = memseq.MemmapSequence(data_path, x="image", y="label", batch_size=16, seed=2)
    ds = seq.to_tf_dataset()
    kept = list(ds)  # tensors, possibly sharing memory with the numpy arrays memseq returned
    for _ in range(3):
        for _batch in ds:
            pass
    for i, batch in enumerate(kept):
        _assert_same_batch(batch, seq.get_batch(i, 0))


def test_in_memory_and_raw_sources(tmp_path):
    images = np.random.default_rng(1).integers(0, 256, (50, 4, 4), dtype=np.uint8)
    raw = np.memmap(tmp_path / "labels.mmap", dtype=np.int32, mode="w+", shape=(50,))
    raw[:] = np.arange(50)
    raw.flush()
    labels = memseq.open_raw(tmp_path / "labels.mmap", dtype="int32", shape=(-1,))
    seq = memseq.MemmapSequence({"image": images, "label": labels}, x="image", y="label", batch_size=7, seed=4)
    for i, batch in enumerate(_epochs(seq.to_tf_dataset(), 1)[0]):
        _assert_same_batch(batch, seq.get_batch(i, 0))


def test_method_and_module_function_agree(data_path):
    seq = memseq.MemmapSequence(data_path, x="image", y="label", batch_size=32, seed=8)
    a = _epochs(seq.to_tf_dataset(), 1)[0]
    b = _epochs(memseq.adapters.tf_data.to_tf_dataset(seq), 1)[0]
    for x, y in zip(a, b):
        _assert_same_batch(x, y)


def test_fit_sees_a_new_epoch_each_epoch(data_path):
    keras.utils.set_random_seed(0)
    seq = memseq.MemmapSequence(data_path, x="image", y="label", batch_size=20, seed=6)
    ds = seq.to_tf_dataset()
    model = keras.Sequential(
        [keras.Input((6, 5, 3)), keras.layers.Rescaling(1 / 255), keras.layers.Flatten(), keras.layers.Dense(5)]
    )
    model.compile(optimizer="adam", loss=keras.losses.SparseCategoricalCrossentropy(from_logits=True))
    history = model.fit(ds, epochs=3, verbose=0)
    assert len(history.history["loss"]) == 3 and np.all(np.isfinite(history.history["loss"]))
    # fit iterated the dataset three times (epochs 0, 1, 2): the next iteration is epoch 3.
    _assert_same_batch(next(iter(ds)), seq.get_batch(0, 3))


def test_dict_inputs_functional_model_fit_and_predict(data_path):
    keras.utils.set_random_seed(0)
    pixels = keras.Input((6, 5, 3), name="pixels")
    extra = keras.Input((4,), name="extra")
    h = keras.layers.Concatenate()([keras.layers.Flatten()(keras.layers.Rescaling(1 / 255)(pixels)), extra])
    model = keras.Model({"pixels": pixels, "extra": extra}, keras.layers.Dense(5)(h))
    model.compile(optimizer="adam", loss=keras.losses.SparseCategoricalCrossentropy(from_logits=True))
    train = memseq.MemmapSequence(
        data_path, x={"pixels": "image", "extra": "meta"}, y="label", sample_weight="weight", batch_size=16, seed=1
    )
    history = model.fit(train.to_tf_dataset(), epochs=2, verbose=0)
    assert np.all(np.isfinite(history.history["loss"]))
    # y=None yields (x,): predict reads it as inputs only, in the sequence's order.
    infer = memseq.MemmapSequence(data_path, x={"pixels": "image", "extra": "meta"}, batch_size=16, shuffle=False)
    predicted = model.predict(infer.to_tf_dataset(), verbose=0)
    assert predicted.shape == (N, 5)
    np.testing.assert_allclose(predicted, model.predict(infer, verbose=0), rtol=1e-5, atol=1e-5)


def _contexts(pipelines: int, replicas: int):
    return [
        tf.distribute.InputContext(num_input_pipelines=pipelines, input_pipeline_id=p, num_replicas_in_sync=replicas)
        for p in range(pipelines)
    ]


@pytest.mark.parametrize("pipelines, replicas", [(2, 2), (2, 4), (1, 2)])
@pytest.mark.parametrize("drop_remainder", [False, True])
def test_input_context_shares_cover_each_row_once(data_path, pipelines, replicas, drop_remainder):
    seq = memseq.MemmapSequence(data_path, x="row", y="label", batch_size=8, seed=9, drop_remainder=drop_remainder)
    per_pipeline = [seq.to_tf_dataset(input_context=ctx) for ctx in _contexts(pipelines, replicas)]
    local = replicas // pipelines
    for epoch in range(2):
        elements = [[x.numpy() for x, _ in ds] for ds in per_pipeline]
        assert all(len(e) == len(seq) * local for e in elements)
        served = np.concatenate([np.concatenate(e) for e in elements])
        expected = np.concatenate([seq.batch_rows(i, epoch) for i in range(len(seq))])
        np.testing.assert_array_equal(np.sort(served), np.sort(expected))  # each row once
        for step in range(len(seq)):
            shares = [e[step * local + j] for e in elements for j in range(local)]  # replicas in order
            np.testing.assert_array_equal(np.sort(np.concatenate(shares)), seq.batch_rows(step, epoch))
            if len(seq.batch_rows(step, epoch)) == seq.batch_size:
                assert all(len(s) == seq.batch_size // replicas for s in shares)


def test_input_context_augments_each_share_with_its_own_rng(data_path):
    seq = _Noisy(data_path, x={"pixels": "image", "extra": "meta"}, y="row", batch_size=8, seed=4)
    _, ctx1 = _contexts(2, 2)
    first = next(iter(seq.to_tf_dataset(input_context=ctx1)))
    rows = seq.batch_rows(0, 0)[1::2]
    columns = memseq.open(data_path)
    batch = seq.augment(
        {name: columns[name][rows] for name in ("image", "meta", "row")}, np.random.default_rng([4, 0, 0, 1])
    )
    _assert_same_batch(first, ({"pixels": batch["image"], "extra": batch["meta"]}, batch["row"]))


def test_input_context_needs_divisible_batch_size(data_path):
    seq = memseq.MemmapSequence(data_path, x="image", y="label", batch_size=10)
    with pytest.raises(SchemaError, match="divide by the number of replicas"):
        seq.to_tf_dataset(input_context=_contexts(1, 4)[0])


def test_import_memseq_does_not_import_tensorflow():
    code = "import sys, memseq, memseq.adapters.tf_data; assert 'tensorflow' not in sys.modules, 'tensorflow imported'"
    subprocess.run([sys.executable, "-c", code], check=True, timeout=120)


def test_num_parallel_calls_is_validated(data_path):
    seq = memseq.MemmapSequence(data_path, x="image", y="label", batch_size=16)
    for bad in (0, -5, 2.0, True):
        with pytest.raises(SchemaError, match="num_parallel_calls"):
            seq.to_tf_dataset(num_parallel_calls=bad)
    assert len(list(seq.to_tf_dataset(num_parallel_calls=1))) == len(seq)
