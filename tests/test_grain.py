"""Grain over memseq: records in MapDataset and DataLoader, seq.to_grain(), checkpoints, fit under JAX."""

from __future__ import annotations

import importlib.util
import pickle

import numpy as np
import pytest
from conftest import assert_same_array

import memseq

grain = pytest.importorskip("grain", reason="grain (test extra) is not installed")

N = 600
ROW = (4, 4, 3)


pytestmark = pytest.mark.dataset(N, ROW, classes=3, fields=("id",), shard_rows=250)  # the data_path fixture (conftest)


def _expected(path, indices):
    ds = memseq.open(path)
    return {name: ds[name][np.asarray(indices)] for name in ds}


def test_mapdataset_shuffle_batch_map_returns_the_rows_asked_for(data_path):
    source = memseq.open(data_path).records()
    pipeline = grain.MapDataset.source(source).shuffle(seed=3).batch(16)
    order = grain.MapDataset.range(N).shuffle(seed=3).batch(16)
    assert len(pipeline) == len(order) == -(-N // 16)
    for k in (0, 7, len(pipeline) - 1):
        batch = pipeline[k]
        expected = _expected(data_path, order[k])
        for name in expected:
            assert_same_array(batch[name], expected[name])
    mapped = grain.MapDataset.source(source).map(lambda r: (r["image"].astype(np.float32) / 255, r["label"])).batch(8)
    x, y = mapped[2]
    expected = _expected(data_path, range(16, 24))
    assert_same_array(y, expected["label"])
    np.testing.assert_array_equal(x, expected["image"].astype(np.float32) / 255)


@pytest.fixture
def absl_flags_parsed():
    # grain 0.2.18's DataLoader reads absl flags, which only absl.app parses:
    # outside an absl program, mark them parsed (their defaults apply).
    from absl import flags

    if not flags.FLAGS.is_parsed():
        flags.FLAGS.mark_as_parsed()


@pytest.mark.parametrize("workers", [0, 2], ids=["threads", "processes"])
def test_dataloader_returns_the_rows_asked_for(data_path, workers, absl_flags_parsed):
    # Each record carries its row number ("id"): every batch must hold exactly those rows.
    source = memseq.open(data_path).records()
    sampler = grain.samplers.IndexSampler(num_records=N, shuffle=True, seed=5, num_epochs=1)
    loader = grain.DataLoader(
        data_source=source,
        sampler=sampler,
        operations=[grain.transforms.Batch(batch_size=50)],
        worker_count=workers,
        read_options=grain.ReadOptions(num_threads=4),
    )
    ids = []
    for batch in loader:
        expected = _expected(data_path, batch["id"])
        for name in expected:
            assert_same_array(batch[name], expected[name])
        ids.extend(batch["id"].tolist())
    assert sorted(ids) == list(range(N))  # one shuffled epoch: every row once
    assert ids != list(range(N))


def test_pickled_source_is_small(data_path):
    source = memseq.open(data_path).records()
    assert len(pickle.dumps(source)) < 16 * 1024
    assert len(pickle.dumps(grain.MapDataset.source(source).shuffle(seed=0).batch(64))) < 16 * 1024


class Flipped(memseq.MemmapSequence):
    def augment(self, batch, rng):
        batch["image"] = memseq.augment.random_flip(batch["image"], rng)
        return batch


def _assert_same_batch(actual, expected):
    assert len(actual) == len(expected)
    for a, e in zip(actual, expected):
        assert_same_array(a, e)


def test_to_grain_items_are_the_sequences_batches_across_epochs(data_path):
    seq = Flipped(data_path, x="image", y="label", batch_size=64, seed=7)
    n = len(seq)
    dataset = seq.to_grain(num_epochs=2)
    assert isinstance(dataset, grain.MapDataset)
    assert len(dataset) == 2 * n
    for k in range(2 * n):
        _assert_same_batch(dataset[k], seq.get_batch(k % n, k // n))
    # Epoch 1 is a new shuffle, not epoch 0 again.
    assert not np.array_equal(dataset[0][1], dataset[n][1]) or not np.array_equal(dataset[0][0], dataset[n][0])
    # Iterating (Grain's prefetch threads) gives the same batches in order.
    for k, batch in enumerate(dataset.to_iter_dataset()):
        _assert_same_batch(batch, seq.get_batch(k % n, k // n))
    assert k == 2 * n - 1
    # Endless by default, starting at the sequence's epoch; the sequence is not changed.
    seq.set_epoch(3)
    endless = seq.to_grain()
    _assert_same_batch(endless[n + 1], seq.get_batch(1, 4))
    assert seq.epoch == 3
    _assert_same_batch(seq.to_grain(epoch=5)[0], seq.get_batch(0, 5))


def test_to_grain_checkpoint_mid_epoch_resumes_at_the_next_batch(data_path):
    seq = memseq.MemmapSequence(data_path, x="image", y="label", batch_size=64, seed=1)
    n = len(seq)
    dataset = seq.to_grain()
    iterator = iter(dataset.to_iter_dataset())
    for _ in range(n + 3):  # into the middle of epoch 1
        next(iterator)
    state = iterator.get_state()
    resumed = iter(dataset.to_iter_dataset())
    resumed.set_state(state)
    _assert_same_batch(next(resumed), seq.get_batch(3, 1))
    _assert_same_batch(next(iterator), seq.get_batch(3, 1))


@pytest.mark.slow
def test_to_grain_in_dataloader_worker_processes_with_checkpoint(data_path, absl_flags_parsed):
    seq = Flipped(data_path, x="image", y="label", batch_size=64, seed=2)
    n = len(seq)
    dataset = seq.to_grain(num_epochs=2)
    assert len(pickle.dumps(dataset)) < 16 * 1024

    def loader():
        return grain.DataLoader(
            data_source=dataset,
            sampler=grain.samplers.IndexSampler(num_records=len(dataset), shuffle=False, num_epochs=1),
            worker_count=2,
        )

    iterator = iter(loader())
    for k in range(n + 2):
        _assert_same_batch(next(iterator), seq.get_batch(k % n, k // n))
    state = iterator.get_state()
    resumed = iter(loader())
    resumed.set_state(state)
    _assert_same_batch(next(resumed), seq.get_batch(2, 1))


FIT_SCRIPT = """
import os, sys
os.environ["KERAS_BACKEND"] = "jax"
import numpy as np
import grain
import keras
import memseq

if __name__ == "__main__":
    path = sys.argv[1]
    seq = memseq.MemmapSequence(path, x="image", y="label", batch_size=64, seed=0)
    model = keras.Sequential([keras.Input({row}), keras.layers.Flatten(), keras.layers.Rescaling(1 / 255), keras.layers.Dense(3)])
    model.compile("sgd", keras.losses.SparseCategoricalCrossentropy(from_logits=True))
    history = model.fit(seq.to_grain(), steps_per_epoch=len(seq), epochs=2, verbose=0)
    assert len(history.history["loss"]) == 2
    records = (
        grain.MapDataset.source(memseq.open(path).records())
        .shuffle(seed=0)
        .map(lambda r: (r["image"], r["label"]))
        .batch(64)
    )
    history = model.fit(records, epochs=2, verbose=0)
    assert len(history.history["loss"]) == 2
    print("backend", keras.backend.backend(), "tensorflow imported:", "tensorflow" in sys.modules)
"""


@pytest.mark.slow
@pytest.mark.skipif(importlib.util.find_spec("jax") is None, reason="jax (test extra) not installed")
def test_fit_under_jax_with_to_grain_and_records(data_path, run_python):
    result = run_python(FIT_SCRIPT.format(row=ROW), str(data_path), timeout=300)
    assert result.returncode == 0, result.stderr[-3000:]
    assert "backend jax" in result.stdout


def test_to_grain_arguments(data_path):
    seq = memseq.MemmapSequence(data_path, x="image", y="label", batch_size=64)
    with pytest.raises(memseq.SchemaError, match="num_epochs"):
        seq.to_grain(num_epochs=0)
    with pytest.raises(memseq.SchemaError, match="epoch"):
        seq.to_grain(epoch=-1)
    with pytest.raises(memseq.BatchIndexError):
        seq.to_grain(num_epochs=1)[len(seq)]
    assert len(seq.to_grain(num_epochs=1)[2:5]) == 3
