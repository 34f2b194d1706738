"""Resuming fit: the epoch served is Keras' epoch number; memseq.BackupAndRestore resumes mid-epoch exactly."""

from __future__ import annotations

import random

import keras
import numpy as np
import pytest

import memseq

ROWS, BATCH = 80, 8  # 10 batches per epoch


class Noisy(memseq.MemmapSequence):
    """Augmentation from the batch's rng, so a replayed batch must match in values too."""

    def augment(self, batch, rng):
        batch["x"] = batch["x"] + rng.normal(size=batch["x"].shape).astype(np.float32)
        return batch


class Recorder(keras.Model):
    """A linear model that records every batch it trains on (eagerly: the values are visible)."""

    def __init__(self, log):
        super().__init__()
        self.dense = keras.layers.Dense(1, kernel_initializer="ones")
        self.record = log.append  # a bound method: Keras would track (copy) a list attribute

    def call(self, x):
        return self.dense(x)

    def train_step(self, data):
        x, _ = data
        self.record(np.asarray(x).copy())
        return super().train_step(data)


def _data():
    rng = np.random.default_rng(0)
    return {"x": rng.normal(size=(ROWS, 3)).astype(np.float32), "y": rng.normal(size=(ROWS, 1)).astype(np.float32)}


def _model(log):
    model = Recorder(log)
    model.compile(optimizer=keras.optimizers.SGD(0.01), loss="mse", run_eagerly=True)
    model(np.zeros((1, 3), np.float32))  # built: BackupAndRestore needs it
    return model


class Crash(keras.callbacks.Callback):
    def __init__(self, epoch, batch):
        super().__init__()
        self.at = (epoch, batch)
        self.epoch = None

    def on_epoch_begin(self, epoch, logs=None):
        self.epoch = epoch

    def on_train_batch_end(self, batch, logs=None):
        if (self.epoch, batch) == self.at:
            raise KeyboardInterrupt("killed")


class Saves(memseq.BackupAndRestore):
    """Counts the batches trained (in this process) when each backup is written."""

    def __init__(self, *args, log, **kwargs):
        super().__init__(*args, **kwargs)
        self.log, self.saved_at = log, []

    def _save_model(self):
        super()._save_model()
        self.saved_at.append(len(self.log))


def _sequence(workers=0, processes=False):
    return Noisy(_data(), x="x", y="y", batch_size=BATCH, seed=3, workers=workers, use_multiprocessing=processes)


@pytest.mark.parametrize(
    ("save_freq", "workers", "processes"), [(4, 0, False), (3, 2, False), ("epoch", 0, False), (4, 2, True)]
)
def test_a_run_killed_mid_epoch_resumes_at_the_next_batch(tmp_path, save_freq, workers, processes):
    epochs = 3
    whole: list[np.ndarray] = []
    uninterrupted = _model(whole)
    uninterrupted.fit(_sequence(workers, processes), epochs=epochs, shuffle=True, verbose=0)
    assert len(whole) == epochs * ROWS // BATCH

    crash_epoch, crash_batch = 1, random.Random(str(save_freq)).randrange(1, 10)
    before: list[np.ndarray] = []
    callback = Saves(tmp_path / "backup", save_freq=save_freq, log=before)
    with pytest.raises(KeyboardInterrupt):
        _model(before).fit(
            _sequence(workers, processes), epochs=epochs, shuffle=True, verbose=0,
            callbacks=[callback, Crash(crash_epoch, crash_batch)],
        )
    restored_at = callback.saved_at[-1]  # batches trained when the last backup was written
    assert 0 < restored_at < len(before) or save_freq == "epoch"

    after: list[np.ndarray] = []
    resumed = _model(after)
    resumed.fit(
        _sequence(workers, processes), epochs=epochs, shuffle=True, verbose=0,
        callbacks=[memseq.BackupAndRestore(tmp_path / "backup", save_freq=save_freq)],
    )
    # Nothing trained twice, nothing skipped: the batches (rows and augmented values)
    # after the restored point are the uninterrupted run's, and so are the weights.
    assert restored_at + len(after) == len(whole)
    for got, expected in zip(after, whole[restored_at:]):
        np.testing.assert_array_equal(got, expected)
    for a, b in zip(resumed.get_weights(), uninterrupted.get_weights()):
        np.testing.assert_allclose(a, b, rtol=1e-6)


def test_keras_own_backup_and_restore_replays_the_interrupted_epoch_from_batch_zero(tmp_path):
    whole: list[np.ndarray] = []
    _model(whole).fit(_sequence(), epochs=3, verbose=0)
    assert len(whole) == 30
    with pytest.raises(KeyboardInterrupt):
        _model([]).fit(
            _sequence(), epochs=3, verbose=0,
            callbacks=[keras.callbacks.BackupAndRestore(tmp_path / "b", save_freq=4), Crash(1, 6)],
        )
    after: list[np.ndarray] = []
    _model(after).fit(_sequence(), epochs=3, verbose=0, callbacks=[keras.callbacks.BackupAndRestore(tmp_path / "b", save_freq=4)])
    # Keras restarts epoch 1 at batch 0 (for every dataset); memseq serves epoch 1's order.
    assert len(after) == 20
    for got, expected in zip(after, whole[10:]):
        np.testing.assert_array_equal(got, expected)


def test_initial_epoch_serves_the_uninterrupted_runs_epochs():
    whole: list[np.ndarray] = []
    _model(whole).fit(_sequence(), epochs=3, verbose=0)
    later: list[np.ndarray] = []
    _model(later).fit(_sequence(), initial_epoch=2, epochs=3, verbose=0)
    assert len(whole) == 30 and len(later) == 10
    for got, expected in zip(later, whole[20:]):
        np.testing.assert_array_equal(got, expected)


def test_a_position_from_another_backup_is_not_used(tmp_path):
    with pytest.raises(KeyboardInterrupt):
        _model([]).fit(_sequence(), epochs=2, verbose=0, callbacks=[memseq.BackupAndRestore(tmp_path / "b", save_freq=4), Crash(1, 6)])
    (tmp_path / "b" / "memseq_position.json").write_text('{"epoch": 1, "batch": 3, "keras": [0, 3]}')
    after: list[np.ndarray] = []
    with pytest.warns(UserWarning, match="does not belong to the backup"):
        _model(after).fit(_sequence(), epochs=2, verbose=0, callbacks=[memseq.BackupAndRestore(tmp_path / "b", save_freq=4)])
    assert len(after) == 10  # epoch 1 again from batch 0, as Keras' own callback does


LEGACY = """
import os, sys
os.environ["TF_CPP_MIN_LOG_LEVEL"] = "3"
import numpy as np
import tf_keras
import memseq

class Recording(memseq.MemmapSequence):
    def get_fields(self, index, epoch):
        os.write(1, f"SERVED {epoch} {index}\\n".encode())  # one write: workers share stdout
        return super().get_fields(index, epoch)

if __name__ == "__main__":
    rng = np.random.default_rng(0)
    data = {"x": rng.normal(size=(64, 3)).astype("float32"), "y": rng.normal(size=(64, 1)).astype("float32")}
    seq = Recording(data, x="x", y="y", batch_size=8, seed=1)
    model = tf_keras.Sequential([tf_keras.layers.Dense(1, input_shape=(3,))])
    model.compile("sgd", "mse")
    model.fit(seq, epochs=3, initial_epoch=int(sys.argv[1]), workers=4, use_multiprocessing=sys.argv[2] == "1", verbose=0)
"""


@pytest.mark.slow
@pytest.mark.parametrize("processes", ["0", "1"])
def test_legacy_tf_keras_with_workers_serves_keras_epoch_numbers_every_run(run_python, processes):
    runs = []
    for initial in (0, 0, 1):
        result = run_python(LEGACY, str(initial), processes, timeout=300)
        assert result.returncode == 0, result.stderr[-3000:]
        served = [tuple(map(int, line.split()[1:])) for line in result.stdout.splitlines() if line.startswith("SERVED")]
        runs.append(served)
    assert sorted(runs[0]) == sorted(runs[1])  # run to run, whatever the thread timing
    for served, initial in zip(runs, (0, 0, 1)):
        # tf_keras reads batch 0 once more, in the main process, to infer its signature.
        peek = [(0, 0)] if served.count((0, 0)) > (initial == 0) else []
        assert sorted(served) == sorted(peek + [(e, i) for e in range(initial, 3) for i in range(8)])


DATA_PARALLEL = """
import os, sys
os.environ["KERAS_BACKEND"] = "jax"
os.environ["XLA_FLAGS"] = "--xla_force_host_platform_device_count=2"
import numpy as np
import keras
import memseq
from keras.src.trainers import data_adapters

class Recording(memseq.MemmapSequence):
    def get_fields(self, index, epoch):
        os.write(1, f"SERVED {epoch} {index}\\n".encode())
        return super().get_fields(index, epoch)

if __name__ == "__main__":
    keras.distribution.set_distribution(keras.distribution.DataParallel(devices=keras.distribution.list_devices()))
    rng = np.random.default_rng(0)
    data = {"x": rng.normal(size=(64, 3)).astype("float32"), "y": rng.normal(size=(64, 1)).astype("float32")}
    seq = Recording(data, x="x", y="y", batch_size=8, seed=1, workers=2, use_multiprocessing=sys.argv[1] == "1")
    print("ADAPTER", type(data_adapters.get_data_adapter(seq)).__name__, flush=True)
    model = keras.Sequential([keras.Input((3,)), keras.layers.Dense(1)])
    model.compile("sgd", "mse")
    model.fit(seq, epochs=2, verbose=0)
    print("DEVICES", len(keras.distribution.list_devices()), flush=True)
"""


@pytest.mark.slow
@pytest.mark.parametrize("processes", ["0", "1"])
def test_jax_data_parallel_keeps_memseq_adapter_and_epochs_in_step(run_python, processes):
    result = run_python(DATA_PARALLEL, processes, timeout=300)
    assert result.returncode == 0, result.stderr[-3000:]
    assert "ADAPTER SequenceAdapter" in result.stdout and "DEVICES 2" in result.stdout
    served = [tuple(map(int, line.split()[1:])) for line in result.stdout.splitlines() if line.startswith("SERVED")]
    # Epoch 0 may be read more than once: Keras' JAX trainer takes a first batch to
    # build the model, from an epoch it then drops. Nothing outside epochs 0 and 1.
    assert {e for e, _ in served} == {0, 1}
    assert {i for e, i in served if e == 0} == set(range(8))
    assert sorted(i for e, i in served if e == 1) == list(range(8))


class Shifted(memseq.MemmapSequence):
    """State changed in on_epoch_end, which process workers must see in the next epoch."""

    def __init__(self, *args, **kwargs):
        super().__init__(*args, **kwargs)
        self.shift = 0.0

    def __getitem__(self, index):
        x, y = super().__getitem__(index)
        return x + self.shift, y

    def on_epoch_end(self):
        super().on_epoch_end()
        self.shift += 100.0


def test_state_a_subclass_changes_between_epochs_reaches_persistent_workers():
    log: list[np.ndarray] = []
    seq = Shifted(_data(), x="x", y="y", batch_size=BATCH, shuffle=False, workers=2, use_multiprocessing=True)
    _model(log).fit(seq, epochs=2, verbose=0, shuffle=False)
    # Keras calls on_epoch_end once before the first epoch, then after each.
    first, second = np.concatenate(log[:10]), np.concatenate(log[10:])
    np.testing.assert_allclose(second - first, 100.0, rtol=1e-5)


LEGACY_RESUME = """
import os, sys, json
os.environ["TF_CPP_MIN_LOG_LEVEL"] = "3"
import numpy as np
import tf_keras
import memseq

class Noisy(memseq.MemmapSequence):
    def augment(self, batch, rng):
        batch["x"] = batch["x"] + rng.normal(size=batch["x"].shape).astype(np.float32)
        return batch

class Recorder(tf_keras.Model):
    def __init__(self):
        super().__init__()
        self.dense = tf_keras.layers.Dense(1, kernel_initializer="ones")
    def call(self, x):
        return self.dense(x)
    def train_step(self, data):
        x, _ = data
        print("BATCH", json.dumps(np.asarray(x).round(5).tolist()), flush=True)
        return super().train_step(data)

class Crash(tf_keras.callbacks.Callback):
    def on_epoch_begin(self, epoch, logs=None):
        self.epoch = epoch
    def on_train_batch_end(self, batch, logs=None):
        if sys.argv[1] == "crash" and (self.epoch, batch) == (1, int(sys.argv[2])):
            os._exit(9)  # killed

if __name__ == "__main__":
    rng = np.random.default_rng(0)
    data = {"x": rng.normal(size=(80, 3)).astype(np.float32), "y": rng.normal(size=(80, 1)).astype(np.float32)}
    seq = Noisy(data, x="x", y="y", batch_size=8, seed=3)
    model = Recorder()
    model.compile(optimizer=tf_keras.optimizers.SGD(0.01), loss="mse", run_eagerly=True)
    callbacks = [Crash()]
    if sys.argv[1] != "whole":
        callbacks.insert(0, tf_keras.callbacks.BackupAndRestore(sys.argv[3], save_freq=3))
    model.fit(seq, epochs=3, verbose=0, shuffle=False, workers=int(sys.argv[4]), callbacks=callbacks)
"""


@pytest.mark.slow
@pytest.mark.parametrize("workers", ["1", "4"])
def test_legacy_tf_keras_resumes_mid_epoch_at_the_next_batch(run_python, tmp_path, workers):
    def batches(*args):
        result = run_python(LEGACY_RESUME, *args, timeout=300)
        return result, [line for line in result.stdout.splitlines() if line.startswith("BATCH")]

    crash_batch = random.Random(workers).randrange(3, 9)
    whole_run, whole = batches("whole", "0", "-", workers)
    assert whole_run.returncode == 0, whole_run.stderr[-3000:]
    assert len(whole) == 30
    killed, before = batches("crash", str(crash_batch), str(tmp_path / "b"), workers)
    assert killed.returncode == 9, killed.stderr[-3000:]
    resumed_run, after = batches("resume", "0", str(tmp_path / "b"), workers)
    assert resumed_run.returncode == 0, resumed_run.stderr[-3000:]
    # tf_keras saved after every third batch trained (counting across epochs).
    restored_at = (10 + crash_batch + 1) // 3 * 3
    assert len(after) == 30 - restored_at
    assert after == whole[restored_at:]
