"""model.fit / evaluate / predict through memseq's adapter (memseq/_fit.py).

Batches bit-identical to seq.get_batch through fit, fit's class_weight and shuffle
honoured as Keras does, the epoch numbering, dead workers and exceptions inside
augment surfacing instead of hanging, and the JAX backend without TensorFlow.
"""

from __future__ import annotations

import importlib.util

import numpy as np
import pytest

import memseq

keras = pytest.importorskip("keras")
from keras.src.trainers import data_adapters  # noqa: E402

from memseq.adapters.keras.adapter import SequenceAdapter  # noqa: E402

ROW = (4, 4, 3)
N = 300


pytestmark = pytest.mark.dataset(N, ROW, classes=3, fields=("row",))  # the data_path fixture (conftest)


class Noisy(memseq.MemmapSequence):
    def augment(self, batch, rng):
        batch["image"] = memseq.augment.gaussian_noise(memseq.augment.random_flip(batch["image"], rng), rng, stddev=5.0)
        return batch


def identity_model(shape):
    model = keras.Sequential([keras.Input(shape), keras.layers.Identity()])
    return model


def tiny_model(seed=0):
    keras.utils.set_random_seed(seed)
    model = keras.Sequential(
        [keras.Input(ROW), keras.layers.Rescaling(1 / 255), keras.layers.Flatten(), keras.layers.Dense(3)]
    )
    model.compile("sgd", keras.losses.SparseCategoricalCrossentropy(from_logits=True))
    return model


def test_keras_gets_memseq_adapter_for_a_sequence_and_its_own_for_anything_else(data_path):
    seq = memseq.MemmapSequence(data_path, x="image", y="label", batch_size=32)
    assert isinstance(data_adapters.get_data_adapter(seq), SequenceAdapter)
    x = np.zeros((8, 2))
    assert not isinstance(data_adapters.get_data_adapter(x, x, batch_size=4), SequenceAdapter)
    with pytest.raises(ValueError, match="`y` should not be passed"):
        data_adapters.get_data_adapter(seq, y=np.zeros(3))


@pytest.mark.parametrize(("workers", "processes"), [(0, False), (1, False), (3, False), (2, True)])
def test_predict_sees_exactly_the_sequences_batches(data_path, workers, processes):
    seq = Noisy(data_path, x="image", batch_size=32, seed=4, workers=workers, use_multiprocessing=processes)
    seq.set_epoch(5)
    predicted = identity_model(ROW).predict(seq, verbose=0)
    # predict serves the sequence's current epoch (it does not call on_epoch_end first).
    expected = np.concatenate([seq.get_batch(i, 5)[0] for i in range(len(seq))])
    np.testing.assert_array_equal(predicted, expected.astype(predicted.dtype))
    assert predicted.shape[0] == N


class Recording(memseq.MemmapSequence):
    """Records which (batch, epoch) pairs were built: thread workers share the list."""

    def __init__(self, *args, **kwargs):
        super().__init__(*args, **kwargs)
        self.built = []

    def get_fields(self, index, epoch):
        self.built.append((index, epoch))
        return super().get_fields(index, epoch)


@pytest.mark.parametrize("workers", [0, 2])
def test_fit_serves_keras_epoch_numbers(data_path, workers):
    seq = Recording(data_path, x="image", y="label", batch_size=64, seed=1, workers=workers)
    seq.set_epoch(7)  # fit does not count from the sequence's epoch: Keras' epoch numbers rule
    tiny_model().fit(seq, epochs=2, shuffle=False, verbose=0)
    assert seq.built[:2] == [(0, 7), (1, 7)]  # batches 0 and 1, read once for the output signature
    assert sorted(seq.built[2:]) == sorted((i, e) for e in (0, 1) for i in range(len(seq)))
    assert seq.epoch == 2
    # A later fit that continues the run serves exactly what one longer fit would.
    seq.built.clear()
    tiny_model().fit(seq, initial_epoch=2, epochs=4, shuffle=False, verbose=0)
    assert sorted(seq.built[2:]) == sorted((i, e) for e in (2, 3) for i in range(len(seq)))


def _fit_weights(seq, old_path, monkeypatch, **fit_kwargs):
    if old_path:
        monkeypatch.setattr(data_adapters, "get_data_adapter", data_adapters.get_data_adapter.__wrapped__)
    model = tiny_model(seed=3)
    model.fit(seq, epochs=2, verbose=0, **fit_kwargs)
    monkeypatch.undo()
    return [w.numpy() if hasattr(w, "numpy") else np.asarray(w) for w in model.weights]


def test_class_weight_gives_the_same_training_as_keras_own_adapter(data_path, monkeypatch):
    # Rows in stored order: Keras' own adapter serves other epoch numbers (it counts hook calls).
    kwargs = dict(x="image", y="label", batch_size=32, seed=2, shuffle=False)
    class_weight = {0: 0.5, 1: 2.0, 2: 7.0}
    ours = _fit_weights(memseq.MemmapSequence(data_path, **kwargs), False, monkeypatch, class_weight=class_weight, shuffle=False)
    keras_own = _fit_weights(memseq.MemmapSequence(data_path, **kwargs), True, monkeypatch, class_weight=class_weight, shuffle=False)
    unweighted = _fit_weights(memseq.MemmapSequence(data_path, **kwargs), False, monkeypatch, shuffle=False)
    for a, b in zip(ours, keras_own):
        np.testing.assert_allclose(a, b, rtol=1e-5, atol=1e-6)
    assert not all(np.allclose(a, b) for a, b in zip(ours, unweighted))


def test_class_weight_with_sample_weight_is_keras_error(data_path):
    seq = memseq.MemmapSequence(data_path, x="image", y="label", sample_weight="row", batch_size=32)
    with pytest.raises(Exception, match="You cannot specify `class_weight` and `sample_weight` at the same time"):
        tiny_model().fit(seq, epochs=1, verbose=0, class_weight={0: 1.0, 1: 1.0, 2: 1.0})


def test_fit_shuffle_true_reorders_whole_batches_as_keras_does(data_path):
    seq = Recording(data_path, x="image", y="label", batch_size=32, seed=1, workers=0)
    import random

    random.seed(0)
    tiny_model().fit(seq, epochs=1, shuffle=True, verbose=0)
    order = [i for i, e in seq.built[2:]]  # after the two signature reads
    assert sorted(order) == list(range(len(seq))) and order != sorted(order)
    # Seeded with (seed, epoch), not Python's global random: a resumed run replays it.
    again = Recording(data_path, x="image", y="label", batch_size=32, seed=1, workers=0)
    random.seed(1)
    tiny_model().fit(again, epochs=1, shuffle=True, verbose=0)
    assert [i for i, e in again.built[2:]] == order


class Failing(memseq.MemmapSequence):
    """Raises what it is told to while building batch 3."""

    error = ValueError("boom in augment")

    def augment(self, batch, rng):
        if int(batch["row"][0]) == 3 * 32 and self.error is not None:
            raise self.error
        return batch


@pytest.mark.parametrize("error", [ValueError("boom in augment"), SystemExit(3), KeyboardInterrupt()])
def test_an_exception_in_augment_in_a_thread_surfaces(data_path, error):
    Failing.error = error
    seq = Failing(data_path, x="row", batch_size=32, shuffle=False, workers=2)
    with pytest.raises(Exception) as info:
        identity_model(()).predict(seq, verbose=0)
    text = str(info.value)
    assert type(error).__name__ in text or isinstance(info.value, type(error))
    if isinstance(error, ValueError):
        assert "boom in augment" in text
    else:
        assert "batch 3 of epoch 0" in text


WORKER_SCRIPT = '''
import os, signal, sys, threading, time, multiprocessing
import numpy as np
import memseq

class Dying(memseq.MemmapSequence):
    """In a worker process, dies (or raises) while building batch 3."""

    def augment(self, batch, rng):
        if int(batch["row"][0]) == 3 * 32 and multiprocessing.parent_process() is not None:
            how = os.environ["HOW"]
            with open(os.environ["STAMP"], "w") as f:
                f.write(repr(time.time()))
            if how == "sigkill":
                os.kill(os.getpid(), signal.SIGKILL)
            elif how == "exit":
                os._exit(3)
            elif how == "systemexit":
                raise SystemExit(5)
            raise ValueError("boom in a worker process")
        return batch
'''

RUN_WORKER_CASE = '''
import os, sys, threading, time
import multiprocessing
import keras
from dying import Dying

if __name__ == "__main__":
    call = sys.argv[1]
    seq = Dying({path!r}, x="row", y="label", batch_size=32, shuffle=False, workers=2, use_multiprocessing=True)
    model = keras.Sequential([keras.Input(()), keras.layers.Identity()])
    model.compile("sgd", "mse")
    try:
        getattr(model, call)(seq, verbose=0)
    except BaseException as error:
        raised = time.time()
        with open(os.environ["STAMP"]) as f:
            died = float(f.read())
        print("RAISED", type(error).__name__, repr(str(error)))
        print("SECONDS", raised - died)
    # Worker processes live as long as the sequence (persistent workers).
    del seq, model
    import gc
    gc.collect()
    children = multiprocessing.active_children()
    workers = [t.name for t in threading.enumerate() if t.name.startswith("memseq") and not t.name.startswith("memseq-readahead")]
    print("LEFT", len(children), workers)
'''


@pytest.mark.slow
@pytest.mark.parametrize(
    ("how", "call", "expected"),
    [
        ("sigkill", "fit", "died with signal SIGKILL while building batch 3"),
        ("exit", "predict", "died with exit code 3 while building batch 3"),
        ("sigkill", "evaluate", "died with signal SIGKILL while building batch 3"),
        ("raise", "fit", "boom in a worker process"),
        ("systemexit", "predict", "SystemExit(5)"),
    ],
)
def test_a_dying_or_failing_worker_process_raises_promptly_and_leaves_nothing(data_path, run_python, tmp_path, monkeypatch, how, call, expected):
    (tmp_path / "dying.py").write_text(WORKER_SCRIPT)
    monkeypatch.setenv("HOW", how)
    monkeypatch.setenv("STAMP", str(tmp_path / "stamp"))
    # The hard timeout catches a hang; the 10 s bound is measured from the worker's death.
    result = run_python(RUN_WORKER_CASE.format(path=data_path), call, timeout=120)
    assert result.returncode == 0, result.stderr[-3000:]
    lines = dict(line.split(" ", 1) for line in result.stdout.splitlines() if line[:4] in ("RAIS", "SECO", "LEFT"))
    assert expected in lines["RAISED"], lines["RAISED"][-1500:]
    assert float(lines["SECONDS"]) < 10, lines
    assert lines["LEFT"] == "0 []", lines


JAX_SCRIPT = '''
import os, sys
os.environ["KERAS_BACKEND"] = "jax"
import numpy as np
import memseq
import keras
from noisy import Noisy

if __name__ == "__main__":
    processes = sys.argv[1] == "1"
    seq = Noisy({path!r}, x="image", y="label", batch_size=32, seed=4, workers=2, use_multiprocessing=processes)
    model = keras.Sequential([keras.Input({row}), keras.layers.Identity()])
    predicted = model.predict(seq, verbose=0)
    expected = np.concatenate([seq.get_batch(i, 0)[0] for i in range(len(seq))])
    assert np.array_equal(predicted, expected.astype(predicted.dtype))
    model = keras.Sequential([keras.Input({row}), keras.layers.Flatten(), keras.layers.Dense(3)])
    model.compile("sgd", keras.losses.SparseCategoricalCrossentropy(from_logits=True))
    history = model.fit(seq, epochs=2, verbose=0, class_weight={{0: 1.0, 1: 2.0, 2: 3.0}})
    assert len(history.history["loss"]) == 2
    print("backend", keras.backend.backend(), "tensorflow imported:", "tensorflow" in sys.modules)
'''

NOISY_MODULE = """
import memseq

class Noisy(memseq.MemmapSequence):
    def augment(self, batch, rng):
        batch["image"] = memseq.augment.gaussian_noise(memseq.augment.random_flip(batch["image"], rng), rng, stddev=5.0)
        return batch
"""


@pytest.mark.slow
@pytest.mark.skipif(importlib.util.find_spec("jax") is None, reason="jax (test extra) not installed")
@pytest.mark.parametrize("processes", [False, True])
def test_jax_backend_fits_without_tensorflow(data_path, run_python, tmp_path, monkeypatch, processes):
    (tmp_path / "noisy.py").write_text(NOISY_MODULE)
    result = run_python(JAX_SCRIPT.format(path=data_path, row=ROW), int(processes), timeout=300)
    assert result.returncode == 0, result.stderr[-3000:]
    assert "backend jax tensorflow imported: False" in result.stdout
    # Workers start with forkserver under JAX: no fork-with-threads warning.
    assert "fork()" not in result.stderr, result.stderr[-2000:]


@pytest.mark.slow
@pytest.mark.skipif(importlib.util.find_spec("torch") is None, reason="torch is not installed (large wheel; optional)")
@pytest.mark.parametrize("processes", [False, True])
def test_torch_backend_fits_without_tensorflow(data_path, run_python, tmp_path, processes):
    (tmp_path / "noisy.py").write_text(NOISY_MODULE)
    script = JAX_SCRIPT.replace('"jax"', '"torch"')
    result = run_python(script.format(path=data_path, row=ROW), int(processes), timeout=300)
    assert result.returncode == 0, result.stderr[-3000:]
    assert "backend torch tensorflow imported: False" in result.stdout


def test_sequence_adapter_describes_batches(data_path):
    seq = memseq.MemmapSequence(data_path, x="image", y="label", batch_size=64)
    adapter = SequenceAdapter(seq)
    assert adapter.num_batches == len(seq) == 5
    assert adapter.batch_size == 64
    assert adapter.has_partial_batch and adapter.partial_batch_size == N % 64
    exact = SequenceAdapter(memseq.MemmapSequence(data_path, x="image", batch_size=64, drop_remainder=True))
    assert not exact.has_partial_batch and exact.partial_batch_size is None
    batches = list(adapter.get_numpy_iterator())
    assert len(batches) == 5
    for i, (x, y) in enumerate(batches):
        np.testing.assert_array_equal(x, seq.get_batch(i)[0])
        np.testing.assert_array_equal(y, seq.get_batch(i)[1])


def test_legacy_form_in_keras3_is_still_a_type_error(data_path):
    seq = memseq.MemmapSequence(data_path, x="image", y="label", batch_size=64)
    with pytest.raises(TypeError):
        tiny_model().fit(seq, epochs=1, workers=2, verbose=0)



@pytest.mark.parametrize(("workers", "processes"), [(0, False), (2, False), (2, True)])
def test_fit_with_steps_per_epoch_spanning_keras_epochs(data_path, workers, processes):
    # One iteration of the sequence then spans several Keras epochs (Keras keeps its
    # iterator): nothing may be stopped under it at on_epoch_end.
    seq = memseq.MemmapSequence(data_path, x="image", y="label", batch_size=32, seed=0, workers=workers,
                                use_multiprocessing=processes)
    history = tiny_model().fit(seq, epochs=4, steps_per_epoch=3, shuffle=False, verbose=0)
    assert len(history.history["loss"]) == 4


KILLED_TRAINER = '''
import os, sys, time, multiprocessing
os.environ["KERAS_BACKEND"] = sys.argv[1]
import numpy as np
import keras
import memseq

class Slow(memseq.MemmapSequence):
    def augment(self, batch, rng):
        time.sleep(0.05)
        return batch

if __name__ == "__main__":
    if sys.argv[2] != "default":
        multiprocessing.set_start_method(sys.argv[2])
    data = {"x": np.zeros((4096, 3), np.float32), "y": np.zeros((4096, 1), np.float32)}
    seq = Slow(data, x="x", y="y", batch_size=8, workers=3, use_multiprocessing=True)

    class Report(keras.callbacks.Callback):
        def on_train_batch_end(self, batch, logs=None):
            if batch == 2:
                print("PIDS", " ".join(str(p.pid) for p in multiprocessing.active_children()), flush=True)

    model = keras.Sequential([keras.Input((3,)), keras.layers.Dense(1)])
    model.compile("sgd", "mse")
    model.fit(seq, epochs=100, verbose=0, callbacks=[Report()])
'''


@pytest.mark.slow
@pytest.mark.parametrize(("backend", "method"), [("tensorflow", "default"), ("tensorflow", "spawn"), ("jax", "default")])
def test_sigkill_of_the_trainer_leaves_no_worker(tmp_path, backend, method):
    import subprocess
    import sys

    from conftest import subprocess_env, wait_for_exit

    if backend == "jax" and importlib.util.find_spec("jax") is None:
        pytest.skip("jax (test extra) not installed")
    script = tmp_path / "trainer.py"
    script.write_text(KILLED_TRAINER)
    trainer = subprocess.Popen(
        [sys.executable, str(script), backend, method], stdout=subprocess.PIPE, stderr=subprocess.DEVNULL,
        env=subprocess_env(), text=True, cwd=tmp_path,
    )
    try:
        line = trainer.stdout.readline()
        pids = [int(p) for p in line.split()[1:]]
        assert line.startswith("PIDS") and len(pids) >= 3, line
    finally:
        trainer.kill()
        trainer.wait()
    assert wait_for_exit(pids, 5) == []
    assert trainer.stdout.read() == ""  # nobody holds the trainer's output open



class Scaled(memseq.MemmapSequence):
    """Overrides __getitem__ (the batch depends on the epoch) and on_epoch_end (state workers must see)."""

    def __init__(self, *args, **kwargs):
        super().__init__(*args, **kwargs)
        self.offset = 0

    def __getitem__(self, index):
        (row,) = super().__getitem__(index)
        return (row * 1000 + self.epoch * 100 + self.offset,)

    def on_epoch_end(self):
        super().on_epoch_end()
        self.offset += 1


@pytest.mark.parametrize(("workers", "processes"), [(0, False), (3, False), (2, True)])
def test_a_subclass_getitem_is_what_predict_and_fit_see_in_every_worker_kind(data_path, workers, processes):
    seq = Scaled(data_path, x="row", batch_size=32, shuffle=False, workers=workers, use_multiprocessing=processes)
    seq.set_epoch(4)
    expected = np.concatenate([seq[i][0] for i in range(len(seq))])
    predicted = identity_model(()).predict(seq, verbose=0)
    np.testing.assert_array_equal(predicted, expected.astype(predicted.dtype))


class FewerBatches(memseq.MemmapSequence):
    @property
    def num_batches(self):
        return 3


def test_an_overridden_num_batches_is_honoured(data_path):
    seq = FewerBatches(data_path, x="row", batch_size=32, shuffle=False)
    assert identity_model(()).predict(seq, verbose=0).shape[0] == 3 * 32


class Endless(memseq.MemmapSequence):
    num_batches = None

    def __getitem__(self, index):
        return super().__getitem__(index % len(self))


def test_num_batches_none_is_an_endless_dataset(data_path):
    seq = Endless(data_path, x="image", y="label", batch_size=32, seed=0, workers=2)
    history = tiny_model().fit(seq, steps_per_epoch=25, epochs=2, verbose=0)  # 25 > len(seq) == 10
    assert len(history.history["loss"]) == 2


def test_an_evaluate_after_a_fit_that_raised_serves_the_sequences_own_epoch(data_path):
    class Boom(keras.callbacks.Callback):
        def on_train_batch_end(self, batch, logs=None):
            raise RuntimeError("stop")

    seq = Recording(data_path, x="image", y="label", batch_size=64, seed=1)
    with pytest.raises(RuntimeError, match="stop"):
        tiny_model().fit(seq, initial_epoch=6, epochs=8, verbose=0, callbacks=[Boom()])
    seq.set_epoch(2)
    seq.built.clear()
    tiny_model().predict(seq, verbose=0)
    assert {e for _, e in seq.built} == {2}  # not the crashed fit's epoch 6


def test_a_subclass_that_forgets_super_init_is_told_so(data_path):
    class Forgetful(memseq.MemmapSequence):
        def __init__(self, path):
            self.path = path

    with pytest.raises(AttributeError, match=r"did not call MemmapSequence.__init__.*super\(\).__init__"):
        Forgetful(data_path)[0]


NO_MAIN_GUARD = '''
import multiprocessing
import numpy as np
import keras
import memseq

multiprocessing.set_start_method("spawn", force=True)
seq = memseq.MemmapSequence({"x": np.zeros((64, 3), np.float32)}, x="x", batch_size=8, workers=1, use_multiprocessing=True)
model = keras.Sequential([keras.Input((3,)), keras.layers.Identity()])
model.predict(seq, verbose=0)
'''


@pytest.mark.slow
def test_a_script_without_a_main_guard_is_told_to_add_one(run_python):
    result = run_python(NO_MAIN_GUARD, timeout=300)
    assert result.returncode != 0
    # memseq's message, after the worker's own traceback (Python's bootstrapping error).
    assert "each worker imports your main module" in result.stderr, result.stderr[-3000:]
    assert '`if __name__ == "__main__":` guard' in result.stderr
