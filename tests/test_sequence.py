"""MemmapSequence: rows, epochs, determinism, Keras integration, workers, memory."""

from __future__ import annotations

import json
import pickle

import numpy as np
import pytest

import memseq

keras = pytest.importorskip("keras")

N = 1000


@pytest.fixture(scope="module")
def data_dir(tmp_path_factory):
    """1000 rows whose every field encodes the row number, so alignment is checkable."""
    path = tmp_path_factory.mktemp("seq") / "ds"
    rows = np.arange(N)
    memseq.save(
        path,
        {
            "image": np.broadcast_to(rows[:, None, None, None], (N, 4, 4, 3)).astype(np.float32),
            "label": rows.astype(np.int64),
            "aux": (rows % 100).astype(np.int16),
            "weight": (rows / N).astype(np.float32),
        },
    )
    return str(path)


def rows_of(batch_x: np.ndarray) -> np.ndarray:
    return batch_x[:, 0, 0, 0].astype(np.int64)


def epoch_rows(seq) -> list[np.ndarray]:
    return [seq[i][1] for i in range(len(seq))]


@pytest.mark.parametrize("shuffle", [True, False])
@pytest.mark.parametrize("batch_size", [1, 7, 64, 1000, 1500])
def test_every_row_exactly_once_per_epoch_and_aligned(data_dir, shuffle, batch_size):
    seq = memseq.MemmapSequence(data_dir, x="image", y="label", batch_size=batch_size, shuffle=shuffle, seed=3)
    assert len(seq) == -(-N // batch_size)
    for epoch in range(2):
        seen = []
        for i in range(len(seq)):
            x, y = seq[i]
            assert x.shape[1:] == (4, 4, 3) and x.dtype == np.float32 and y.dtype == np.int64
            assert np.array_equal(rows_of(x), y)  # x and y come from the same rows
            assert len(y) == min(batch_size, N - i * batch_size)
            seen.append(y)
        assert np.array_equal(np.sort(np.concatenate(seen)), np.arange(N))
        if not shuffle:
            assert np.array_equal(np.concatenate(seen), np.arange(N))
        seq.on_epoch_end()


def test_shuffle_mixes_rows_and_epochs_differ(data_dir):
    seq = memseq.MemmapSequence(data_dir, x="image", y="label", batch_size=100, seed=0)
    first = epoch_rows(seq)
    # Rows are shuffled, not only the order of fixed batches.
    assert not np.array_equal(first[0], np.arange(100))
    assert np.ptp(first[0]) > 500
    seq.on_epoch_end()
    assert seq.epoch == 1
    second = epoch_rows(seq)
    assert {tuple(b) for b in first}.isdisjoint({tuple(b) for b in second})


def test_same_seed_and_epoch_give_same_batches_across_instances(data_dir):
    a = memseq.MemmapSequence(data_dir, x="image", y="label", batch_size=64, seed=11)
    b = memseq.MemmapSequence(memseq.open(data_dir), x="image", y="label", batch_size=64, seed=11)
    b.set_epoch(4)
    a.set_epoch(4)
    assert all(np.array_equal(p, q) for p, q in zip(epoch_rows(a), epoch_rows(b)))
    c = memseq.MemmapSequence(data_dir, x="image", y="label", batch_size=64, seed=12)
    c.set_epoch(4)
    assert not all(np.array_equal(p, q) for p, q in zip(epoch_rows(a), epoch_rows(c)))
    # get_batch reads any epoch without moving the sequence.
    assert np.array_equal(a.get_batch(3, epoch=9)[1], (b.set_epoch(9), b[3][1])[1])
    assert a.epoch == 4


def test_same_batches_in_another_process(data_dir, run_python):
    seq = memseq.MemmapSequence(data_dir, x="image", y="label", batch_size=64, seed=5)
    seq.set_epoch(2)
    expected = [b.tolist() for b in epoch_rows(seq)]
    result = run_python(
        f"""
        import json, memseq
        seq = memseq.MemmapSequence({data_dir!r}, x="image", y="label", batch_size=64, seed=5)
        seq.set_epoch(2)
        print(json.dumps([seq[i][1].tolist() for i in range(len(seq))]))
        """
    )
    assert result.returncode == 0, result.stderr
    assert json.loads(result.stdout) == expected


def test_seed_none_draws_a_concrete_seed_shown_in_repr(data_dir):
    seq = memseq.MemmapSequence(data_dir, x="image", y="label")
    assert isinstance(seq.seed, int)
    assert f"seed={seq.seed}" in repr(seq)
    again = memseq.MemmapSequence(data_dir, x="image", y="label", seed=seq.seed)
    assert np.array_equal(seq[0][1], again[0][1])


def test_drop_remainder(data_dir):
    seq = memseq.MemmapSequence(data_dir, x="image", y="label", batch_size=300, drop_remainder=True, seed=0)
    assert len(seq) == 3
    batches = epoch_rows(seq)
    assert all(len(b) == 300 for b in batches)
    assert len(np.unique(np.concatenate(batches))) == 900


def test_indices_subset_and_mask(data_dir):
    subset = np.arange(0, N, 3)
    seq = memseq.MemmapSequence(data_dir, x="image", y="label", batch_size=50, indices=subset, seed=1)
    assert seq.num_rows == len(subset)
    assert np.array_equal(np.sort(np.concatenate(epoch_rows(seq))), subset)
    mask = np.zeros(N, bool)
    mask[500:] = True
    seq = memseq.MemmapSequence(data_dir, x="image", y="label", batch_size=64, indices=mask, shuffle=False)
    assert np.array_equal(np.concatenate(epoch_rows(seq)), np.arange(500, N))
    ordered = memseq.MemmapSequence(data_dir, x="image", y="label", batch_size=2, indices=[9, 3, 5], shuffle=False)
    assert ordered[0][1].tolist() == [9, 3] and ordered[1][1].tolist() == [5]


def test_list_and_dict_selections(data_dir):
    seq = memseq.MemmapSequence(
        data_dir, x={"pixels": "image", "extra": "aux"}, y=["label", "aux"], sample_weight="weight", batch_size=10, seed=0
    )
    x, y, w = seq[0]
    assert set(x) == {"pixels", "extra"}
    assert isinstance(y, tuple) and len(y) == 2
    rows = y[0]
    assert np.array_equal(rows_of(x["pixels"]), rows)
    assert np.array_equal(x["extra"], rows % 100) and np.array_equal(y[1], rows % 100)
    assert np.allclose(w, rows / N)
    (inputs,) = memseq.MemmapSequence(data_dir, x=["image", "aux"], batch_size=10, seed=0)[0]
    assert isinstance(inputs, tuple) and len(inputs) == 2


def test_mapping_of_arrays_memmaps_and_raw_files(tmp_path):
    labels = np.arange(100, dtype=np.int64)
    feats = np.memmap(tmp_path / "f.mmap", dtype=np.float32, mode="w+", shape=(100, 3))
    feats[:] = labels[:, None]
    feats.flush()
    raw = memseq.open_raw(tmp_path / "f.mmap", dtype="float32", shape=(-1, 3))
    for source in (feats, raw, np.array(feats)):
        seq = memseq.MemmapSequence({"f": source, "y": labels}, x="f", y="y", batch_size=16, seed=0)
        x, y = seq[2]
        assert np.array_equal(x[:, 0], y)
    # A memmap is served by reference: pickling stores the path, never the data.
    seq = memseq.MemmapSequence({"f": feats[10:], "y": labels[10:]}, x="f", y="y", batch_size=16, shuffle=False)
    blob = pickle.dumps(seq)
    assert len(blob) < 16 * 1024 and b"f.mmap" in blob
    x, y = pickle.loads(blob)[0]
    assert np.array_equal(x[:, 0], np.arange(10, 26)) and np.array_equal(y, np.arange(10, 26))


def test_pickles_by_reference_and_reproduces(data_dir):
    seq = memseq.MemmapSequence(data_dir, x="image", y="label", batch_size=64, seed=9)
    seq.set_epoch(3)
    blob = pickle.dumps(seq)
    assert len(blob) < 16 * 1024
    clone = pickle.loads(blob)
    assert clone.epoch == 3 and repr(clone) == repr(seq)
    assert all(np.array_equal(p, q) for p, q in zip(epoch_rows(seq), epoch_rows(clone)))


class Noisy(memseq.MemmapSequence):
    def augment(self, batch, rng):
        batch["image"] = batch["image"] + rng.standard_normal(batch["image"].shape, dtype=np.float32)
        return batch


def test_augment_uses_a_per_batch_rng(data_dir):
    seq = Noisy(data_dir, x="image", y="label", batch_size=64, seed=0)
    x1, y1 = seq[2]
    x2, y2 = seq[2]
    assert np.array_equal(x1, x2) and np.array_equal(y1, y2)
    assert not np.array_equal(x1, np.round(x1))
    assert np.abs(x1 - y1[:, None, None, None]).max() < 10
    rng = np.random.default_rng([seq.seed, 0, 2])
    expected = y1[:, None, None, None].astype(np.float32) + rng.standard_normal(x1.shape, dtype=np.float32)
    assert np.array_equal(x1, expected)
    assert not np.array_equal(seq[3][0] - rows_of(seq[3][0])[:, None, None, None], x1 - y1[:, None, None, None])


def test_augment_must_return_the_batch(data_dir):
    class Broken(memseq.MemmapSequence):
        def augment(self, batch, rng):
            return batch["image"]

    with pytest.raises(memseq.SchemaError, match="augment must return the batch dict"):
        Broken(data_dir, x="image", y="label")[0]


def test_batch_index_errors(data_dir):
    seq = memseq.MemmapSequence(data_dir, x="image", y="label", batch_size=100)
    assert np.array_equal(seq[-1][1], seq[9][1])
    with pytest.raises(IndexError, match="out of range: this sequence has 10 batches"):
        seq[10]
    with pytest.raises(memseq.BatchIndexError):
        seq[-11]
    with pytest.raises(TypeError, match="Batch indices must be integers"):
        seq[1.5]


@pytest.mark.parametrize(
    ("kwargs", "error", "match"),
    [
        ({"x": "nope"}, memseq.SchemaError, "x: no field 'nope'; fields are"),
        ({"x": "image", "y": ["label", "missing"]}, memseq.SchemaError, "y: no field 'missing'"),
        ({"x": []}, memseq.SchemaError, "empty list"),
        ({"x": {}}, memseq.SchemaError, "empty dict"),
        ({"x": 3}, memseq.SchemaError, "x must be a field name"),
        ({"x": "image", "sample_weight": "weight"}, memseq.SchemaError, "sample_weight needs y"),
        ({"x": "image", "batch_size": 0}, memseq.SchemaError, "batch_size must be an int >= 1"),
        ({"x": "image", "batch_size": 2.0}, memseq.SchemaError, "batch_size must be an int"),
        ({"x": "image", "batch_size": True}, memseq.SchemaError, "batch_size must be an int"),
        ({"x": "image", "seed": -1}, memseq.SchemaError, "seed must be an int >= 0"),
        ({"x": "image", "shuffle": "blocks"}, memseq.SchemaError, "shuffle must be True"),
        ({"x": "image", "drop_remainder": 1}, memseq.SchemaError, "drop_remainder must be True or False"),
        ({"x": "image", "workers": -1}, memseq.SchemaError, "workers must be an int >= 0"),
        ({"x": "image", "max_queue_size": -1}, memseq.SchemaError, "max_queue_size"),
        ({"x": "image", "indices": [0, N]}, memseq.BatchIndexError, f"row index {N} is out of range"),
        ({"x": "image", "indices": [-1]}, IndexError, "negative indices are not allowed"),
        ({"x": "image", "indices": [[1, 2]]}, memseq.SchemaError, "1-D integers"),
        ({"x": "image", "indices": [0.5]}, memseq.SchemaError, "1-D integers"),
        ({"x": "image", "indices": np.ones(3, bool)}, memseq.SchemaError, "boolean mask must have shape"),
        ({"x": "image", "indices": []}, memseq.SchemaError, "No batches: 0 rows"),
        ({"x": "image", "batch_size": 2000, "drop_remainder": True}, memseq.SchemaError, "No batches"),
    ],
)
def test_bad_arguments_fail_in_the_constructor(data_dir, kwargs, error, match):
    with pytest.raises(error, match=match):
        memseq.MemmapSequence(data_dir, **kwargs)


def test_bad_data_arguments(tmp_path, data_dir):
    with pytest.raises(memseq.SchemaError, match="same number of rows"):
        memseq.MemmapSequence({"a": np.zeros(5), "b": np.zeros(6)}, x="a", y="b")
    with pytest.raises(memseq.SchemaError, match="data must be a dataset path"):
        memseq.MemmapSequence(42, x="a")
    with pytest.raises(memseq.DatasetNotFoundError, match="no such directory"):
        memseq.MemmapSequence(tmp_path / "missing", x="a")
    with pytest.raises(memseq.SchemaError, match="at least one dimension"):
        memseq.MemmapSequence({"a": np.float32(1)}, x="a")
    with pytest.raises(memseq.SchemaError, match="no field 'y'"):
        memseq.MemmapSequence({"a": np.zeros(5)}, x="a", y="y")
    with pytest.raises(memseq.SchemaError, match="epoch must be an int >= 0"):
        memseq.MemmapSequence(data_dir, x="image").set_epoch(-1)


def test_a_bad_epoch_is_refused_before_readahead_and_poisons_nothing(data_dir):
    seq = memseq.MemmapSequence(data_dir, x="image", y="label", batch_size=100, readahead=True)
    for bad in ("2", -1, 2.0, 2**70):
        with pytest.raises(memseq.SchemaError, match="epoch"):
            seq.get_batch(0, epoch=bad)
    # Later epochs are served as usual (a bad epoch once broke every later read ahead).
    for epoch in (0, 1, 2):
        assert np.array_equal(seq.get_batch(3, epoch)[1], memseq.MemmapSequence(data_dir, x="image", y="label", batch_size=100, seed=seq.seed, readahead=False).get_batch(3, epoch)[1])


def test_dict_inputs_without_targets_are_the_dict_as_keras_returns_it(data_dir):
    seq = memseq.MemmapSequence(data_dir, x={"pixels": "image"}, batch_size=100, shuffle=False)
    batch = seq[0]
    assert isinstance(batch, dict) and set(batch) == {"pixels"}
    (single,) = memseq.MemmapSequence(data_dir, x="image", batch_size=100, shuffle=False)[0]
    assert np.array_equal(batch["pixels"], single)


def test_predict_mode_yields_inputs_only(data_dir):
    seq = memseq.MemmapSequence(data_dir, x="image", batch_size=100, shuffle=False)
    (x,) = seq[0]
    assert np.array_equal(rows_of(x), np.arange(100))
    model = keras.Sequential([keras.Input((4, 4, 3)), keras.layers.Flatten(), keras.layers.Lambda(lambda t: t[:, :1])])
    out = model.predict(seq, verbose=0)
    assert np.array_equal(out[:, 0], np.arange(N))


def small_model():
    model = keras.Sequential([keras.Input((4, 4, 3)), keras.layers.Rescaling(1 / N), keras.layers.Flatten(), keras.layers.Dense(100)])
    model.compile("sgd", keras.losses.SparseCategoricalCrossentropy(from_logits=True))
    return model


class Recording(memseq.MemmapSequence):
    """Records which rows each (epoch, batch) served, as a training run reads them."""

    def __init__(self, *args, **kwargs):
        super().__init__(*args, **kwargs)
        self.served = {}

    def get_fields(self, index, epoch):
        fields = super().get_fields(index, epoch)
        self.served[(epoch, index)] = rows_of(fields["image"]).tolist()
        return fields


def test_fit_sees_every_row_once_per_epoch_with_thread_workers(data_dir):
    seq = Recording(data_dir, x="image", y="aux", batch_size=100, seed=0, workers=2)
    history = small_model().fit(seq, epochs=3, shuffle=False, verbose=0)
    assert len(history.history["loss"]) == 3
    # fit's epochs 0..2 serve the sequence's epochs 0..2 (Keras' epoch numbers).
    assert seq.epoch == 3
    for epoch in (0, 1, 2):
        rows = [r for (e, _), rs in seq.served.items() if e == epoch for r in rs]
        assert sorted(rows) == list(range(N))


def test_resume_reproduces_the_same_batches(data_dir):
    full = Recording(data_dir, x="image", y="aux", batch_size=100, seed=21)
    small_model().fit(full, epochs=4, shuffle=False, verbose=0)
    resumed = Recording(data_dir, x="image", y="aux", batch_size=100, seed=21)
    resumed.set_epoch(2)
    small_model().fit(resumed, initial_epoch=2, epochs=4, shuffle=False, verbose=0)
    later = {key: rows for key, rows in full.served.items() if key[0] >= 3}
    assert later and {key: rows for key, rows in resumed.served.items() if key[0] >= 3} == later


def test_fit_evaluate_predict_with_process_workers(data_dir):
    seq = memseq.MemmapSequence(data_dir, x="image", y="aux", batch_size=100, seed=0, workers=2, use_multiprocessing=True)
    model = small_model()
    history = model.fit(seq, epochs=2, shuffle=False, verbose=0)
    assert len(history.history["loss"]) == 2 and np.isfinite(history.history["loss"]).all()
    assert np.isfinite(model.evaluate(seq, verbose=0))
    plain = memseq.MemmapSequence(data_dir, x="image", batch_size=100, shuffle=False, workers=2, use_multiprocessing=True)
    assert model.predict(plain, verbose=0).shape == (N, 100)


def test_worker_exception_surfaces(data_dir):
    class Failing(memseq.MemmapSequence):
        def augment(self, batch, rng):
            raise RuntimeError("augment exploded")

    seq = Failing(data_dir, x="image", y="aux", batch_size=100, workers=2)
    with pytest.raises(Exception, match="augment exploded"):
        small_model().fit(seq, epochs=1, verbose=0)
