"""Keras' own PyDataset tests, ported to ``memseq.MemmapSequence``.

Sources (the installed keras 3.15.1, ``keras/src/trainers/``):

- ``data_adapters/py_dataset_adapter_test.py``: every test;
- ``epoch_iterator_test.py``: ``test_epoch_callbacks``, plus ``test_basic_flow`` and
  ``test_insufficient_data`` with the arrays given as a sequence;
- ``trainer_test.py::test_fit_with_data_adapter``: its ``py_dataset`` cases (the only
  trainer test that passes a ``PyDataset``).

Each Keras ``PyDataset`` subclass becomes a ``MemmapSequence`` subclass over the same
data (written with ``memseq.save`` into ``tmp_path``, or a mapping of backend
tensors where Keras' test holds tensors) that overrides the same hooks
(:mod:`keras_contract_helpers`). Where Keras' test builds a ``PyDatasetAdapter``
itself, the port asks ``keras.src.trainers.data_adapters.get_data_adapter`` for the
adapter, as ``fit``/``evaluate``/``predict`` do, so it exercises whatever adapter
``fit(seq)`` gets. Keras' assertions are kept; where one differs it is named at the
test:

- ``test_speedup`` asserts a time in Keras; here it asserts that the four worker
  threads run ``__getitem__`` concurrently (memseq's tests assert no times);
- ``test_iterate_infinite_with_none_num_batches`` and ``test_fit_with_data_adapter``
  assert nothing in Keras beyond "no exception"; here they also check what was served
  (batches cycle; ``fit`` ran the asked number of steps);
- ``test_fit_with_data_adapter``'s process-worker cases are skipped by Keras under
  TensorFlow ("hangs") and JAX; here they run under TensorFlow (memseq supports them)
  and are skipped under JAX as in Keras (each JAX worker start costs seconds);
- ``test_basic_flow``'s JAX-array case runs in the JAX run only (under TensorFlow it
  would start JAX's threads in a process that later forks workers); its torch case
  is skipped when torch is not installed.

Runs under the backend of ``KERAS_BACKEND`` (TensorFlow by default). The last test
runs this file again under JAX in a fresh interpreter, so one test command covers
both backends.
"""

from __future__ import annotations

import math
import os
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest

import memseq

keras = pytest.importorskip("keras")
from conftest import REPO_ROOT, subprocess_env  # noqa: E402
from keras.src import backend  # noqa: E402
from keras.src.trainers import data_adapters, epoch_iterator  # noqa: E402
from keras.src.utils.rng_utils import set_random_seed  # noqa: E402
from keras_contract_helpers import (  # noqa: E402
    CallbackSequence,
    ConcurrencySequence,
    DictSequence,
    ExampleSequence,
    ExceptionSequence,
    NoLenSequence,
    ShapesSequence,
    TrainerSequence,
)

BACKEND = backend.backend()
# Set in the interpreter that runs this file under JAX (see the last test).
CHILD_RUN = "MEMSEQ_KERAS_CONTRACT_CHILD"

# A hang (a worker that never answers) must fail a test, not stall the run.
pytestmark = pytest.mark.timeout(180)


def adapter_for(seq, *, shuffle=False, class_weight=None):
    """The adapter ``fit(seq, shuffle=..., class_weight=...)`` would use."""
    return data_adapters.get_data_adapter(seq, shuffle=shuffle, class_weight=class_weight)


def backend_iterator(adapter):
    """The adapter's iterator for the current backend, as Keras' tests choose it."""
    if BACKEND == "tensorflow":
        return adapter.get_tf_dataset()
    if BACKEND == "jax":
        return adapter.get_jax_iterator()
    if BACKEND == "torch":
        return adapter.get_torch_dataloader()
    return adapter.get_numpy_iterator()


def saved(tmp_path, name, fields):
    """``fields`` written with ``memseq.save`` under ``tmp_path / name``; returns the path."""
    path = tmp_path / name
    memseq.save(path, fields)
    return str(path)


# --------------------------------------------------------------------------------------
# data_adapters/py_dataset_adapter_test.py :: PyDatasetAdapterTest

BASIC_FLOW_CASES = [
    pytest.param(dict(workers=2, use_multiprocessing=True, max_queue_size=10, dataset_type="np"),
                 id="multiprocessing", marks=pytest.mark.slow),
    pytest.param(dict(workers=2, use_multiprocessing=False, max_queue_size=10, dataset_type="np"), id="multithreading"),
    pytest.param(dict(dataset_type="np"), id="single_np"),
    pytest.param(dict(dataset_type="tf"), id="single_tf"),
    pytest.param(dict(dataset_type="jax"), id="single_jax"),
    pytest.param(dict(dataset_type="torch"), id="single_torch"),
]


def basic_flow_data(tmp_path, dataset_type, x, y):
    """Keras' x, y as sequence data: saved files for numpy, else a mapping of backend tensors on the CPU."""
    if dataset_type == "np":
        return saved(tmp_path, "basic", {"x": x, "y": y})
    cpu_device = {"tensorflow": "CPU:0", "jax": "cpu:0"}.get(BACKEND, "cpu")
    with backend.device(cpu_device):
        if dataset_type == "tf":
            import tensorflow as tf

            return {"x": tf.constant(x), "y": tf.constant(y)}
        if dataset_type == "jax":
            if BACKEND != "jax":
                # Keras runs this case under every backend. Here JAX would start its
                # threads in a process that later forks worker processes (a deadlock
                # risk Python warns about); the JAX run covers the case.
                pytest.skip("JAX arrays are tested in the JAX run")
            import jax

            return {"x": jax.numpy.array(x), "y": jax.numpy.array(y)}
        torch = pytest.importorskip("torch")
        return {"x": torch.as_tensor(x), "y": torch.as_tensor(y)}


def expected_batch_class(dataset_type):
    if BACKEND == "tensorflow":
        import tensorflow as tf

        return tf.Tensor
    if BACKEND == "jax":
        # Keras passes jax.Array columns through; memseq batches are numpy arrays
        # (README, "Differences from Keras' PyDatasetAdapter that remain").
        return np.ndarray
    if BACKEND == "torch":
        import torch

        return torch.Tensor
    return np.ndarray


@pytest.mark.parametrize("shuffle", [True, False], ids=["shuffle", "no_shuffle"])
@pytest.mark.parametrize("infinite", [True, False], ids=["infinite", "finite"])
@pytest.mark.parametrize("case", BASIC_FLOW_CASES)
def test_basic_flow(tmp_path, case, infinite, shuffle):
    workers = case.get("workers", 0)
    use_multiprocessing = case.get("use_multiprocessing", False)
    max_queue_size = case.get("max_queue_size", 0)
    dataset_type = case["dataset_type"]
    if use_multiprocessing and shuffle:
        pytest.skip("Starting processes is slow, test fewer variants (as Keras)")

    set_random_seed(1337)
    x = np.random.random((64, 4)).astype("float32")
    y = np.array([[i, i] for i in range(64)], dtype="float32")
    data = basic_flow_data(tmp_path, dataset_type, x, y)
    seq = ExampleSequence(
        data,
        batch_size=16,
        workers=workers,
        use_multiprocessing=use_multiprocessing,
        max_queue_size=max_queue_size,
        infinite=infinite,
    )
    adapter = adapter_for(seq, shuffle=shuffle)
    it = backend_iterator(adapter)
    expected_class = expected_batch_class(dataset_type)

    sample_order = []
    adapter.on_epoch_begin()
    for batch in it:
        assert len(batch) == 2
        bx, by = batch
        assert isinstance(bx, expected_class), type(bx)
        assert isinstance(by, expected_class), type(by)
        assert bx.dtype == by.dtype
        assert "float32" in str(bx.dtype)
        assert tuple(bx.shape) == (16, 4)
        assert tuple(by.shape) == (16, 2)
        for i in range(by.shape[0]):
            sample_order.append(backend.convert_to_numpy(by[i, 0]))
        if infinite:
            if len(sample_order) == 64:
                adapter.on_epoch_end()
                adapter.on_epoch_begin()
            elif len(sample_order) >= 128:
                break
    adapter.on_epoch_end()

    expected_order = list(range(64))
    if infinite:
        np.testing.assert_allclose(sample_order, expected_order + expected_order)
    elif shuffle:
        assert not np.allclose(sample_order, expected_order)
        np.testing.assert_allclose(sorted(sample_order), expected_order)
    else:
        np.testing.assert_allclose(sample_order, expected_order)


def test_class_weight(tmp_path):
    x = np.random.randint(1, 100, (4, 5))
    y = np.array([0, 1, 2, 1])
    class_w = {0: 2, 1: 1, 2: 3}
    seq = ExampleSequence(saved(tmp_path, "cw", {"x": x, "y": y}), batch_size=2)
    adapter = adapter_for(seq, shuffle=False, class_weight=class_w)
    gen = backend_iterator(adapter)

    index = -1
    for index, batch in enumerate(gen):
        # Batch is a tuple of (x, y, class_weight)
        assert len(batch) == 3
        batch = [backend.convert_to_numpy(part) for part in batch]
        for sub_elem in range(2):
            np.testing.assert_array_equal(batch[0][sub_elem], x[index * 2 + sub_elem])
            np.testing.assert_array_equal(batch[1][sub_elem], y[index * 2 + sub_elem])
            class_key = np.int32(batch[1][sub_elem])
            np.testing.assert_array_equal(batch[2][sub_elem], class_w[class_key])
    assert index == 1  # 2 batches


def test_speedup(tmp_path):
    # Keras asserts that 4 worker threads take less time than none, with 0.2 s of
    # sleep per batch. memseq's tests assert no times: this port asserts the cause
    # instead, that the workers run __getitem__ concurrently (and without workers,
    # one call at a time), each batch once.
    x = np.random.random((40, 4))
    y = np.random.random((40, 2))
    data = saved(tmp_path, "speedup", {"x": x, "y": y})

    no_speedup = ConcurrencySequence(data, batch_size=4, delay=0.1)
    batches = list(adapter_for(no_speedup, shuffle=False).get_numpy_iterator())
    assert len(batches) == 10
    assert no_speedup.max_active == 1
    assert no_speedup.calls == 10

    speedup = ConcurrencySequence(data, batch_size=4, workers=4, max_queue_size=8, delay=0.1)
    batches = list(adapter_for(speedup, shuffle=False).get_numpy_iterator())
    assert len(batches) == 10
    assert speedup.calls == 10
    assert speedup.max_active > 1


def test_dict_inputs(tmp_path):
    inputs = {"x": np.random.random((40, 4)), "y": np.random.random((40, 2))}
    seq = DictSequence(saved(tmp_path, "dict", inputs), batch_size=4)
    adapter = adapter_for(seq, shuffle=False)
    for batch in adapter.get_numpy_iterator():
        assert len(batch) == 2
        bx, by = batch["x"], batch["y"]
        assert isinstance(bx, np.ndarray)
        assert isinstance(by, np.ndarray)
        assert bx.dtype == by.dtype
        assert bx.shape == (4, 4)
        assert by.shape == (4, 2)

    import tensorflow as tf

    for batch in adapter.get_tf_dataset():
        assert len(batch) == 2
        bx, by = batch["x"], batch["y"]
        assert isinstance(bx, tf.Tensor)
        assert isinstance(by, tf.Tensor)
        assert bx.dtype == by.dtype
        assert tuple(bx.shape) == (4, 4)
        assert tuple(by.shape) == (4, 2)


def test_with_different_shapes(tmp_path):
    data = saved(
        tmp_path, "shapes", {"x": np.zeros((34, 4), "float32"), "y": np.zeros((34, 2), "float32")}
    )
    adapter = adapter_for(ShapesSequence(data), shuffle=False)
    it = backend_iterator(adapter)

    seen = 0
    for i, batch in enumerate(it):
        seen += 1
        assert len(batch) == 2
        bx, by = batch
        assert bx.dtype == by.dtype
        assert "float32" in str(bx.dtype)
        if i == 0:
            assert tuple(bx.shape) == (16, 4)
            assert tuple(by.shape) == (16, 2)
        elif i == 1:
            assert tuple(bx.shape) == (16, 5)
            assert tuple(by.shape) == (16, 2)
        else:
            assert tuple(bx.shape) == (2, 6)
            assert tuple(by.shape) == (2, 2)
    assert seen == 3


@pytest.mark.parametrize(
    "case",
    [
        pytest.param(dict(workers=2, use_multiprocessing=True, max_queue_size=10), id="multiprocessing",
                     marks=pytest.mark.slow),
        pytest.param(dict(workers=2, max_queue_size=10), id="multithreading"),
        pytest.param(dict(), id="single"),
    ],
)
def test_exception_reported(tmp_path, case):
    workers = case.get("workers", 0)
    use_multiprocessing = case.get("use_multiprocessing", False)
    max_queue_size = case.get("max_queue_size", 0)
    if BACKEND == "jax" and use_multiprocessing:
        pytest.skip("Keras skips this case under JAX (its CI failed with use_multiprocessing=True)")
    data = saved(
        tmp_path,
        "exc",
        {"x": np.random.random((32, 4)).astype("float32"), "y": np.random.random((32, 2)).astype("float32")},
    )
    seq = ExceptionSequence(
        data, workers=workers, use_multiprocessing=use_multiprocessing, max_queue_size=max_queue_size
    )
    adapter = adapter_for(seq, shuffle=False)

    expected_exception_class = ValueError
    if BACKEND == "tensorflow":
        import tensorflow as tf

        # tf.data wraps the exception
        expected_exception_class = tf.errors.InvalidArgumentError
    it = iter(backend_iterator(adapter))
    next(it)
    next(it)
    with pytest.raises(expected_exception_class, match="Expected exception"):
        next(it)


def test_iterate_finite(tmp_path):
    data = saved(tmp_path, "finite", {"x": np.ones((6, 11), dtype="int32"), "y": np.zeros((6, 11), dtype="int32")})
    seq = ExampleSequence(data, batch_size=2)
    batches = [batch for batch in seq]
    assert len(batches) == 3


def test_iterate_infinite_with_none_num_batches(tmp_path):
    data = saved(
        tmp_path, "infinite", {"x": np.arange(66, dtype="int32").reshape(6, 11), "y": np.zeros((6, 11), dtype="int32")}
    )
    seq = ExampleSequence(data, batch_size=2, infinite=True)
    index = -1
    for index, (bx, _) in enumerate(seq):
        # Keras only checks that iteration goes on; the port also checks what it serves.
        np.testing.assert_array_equal(bx, np.arange(66).reshape(6, 11)[(index % 3) * 2 : (index % 3) * 2 + 2])
        if index >= 10:
            break
    assert index == 10


def test_iterate_infinite_with_no_len(tmp_path):
    data = saved(tmp_path, "nolen", {"x": np.arange(6, dtype="int32").reshape(6, 1)})
    index = -1
    for index, (bx,) in enumerate(NoLenSequence(data)):
        np.testing.assert_array_equal(bx, [[(index % 3) * 2], [(index % 3) * 2 + 1]])
        if index >= 10:
            break
    assert index == 10


# --------------------------------------------------------------------------------------
# epoch_iterator_test.py :: TestEpochIterator


@pytest.mark.parametrize("call_type", ["iterator", "enumerate_epoch"])
def test_epoch_iterator_basic_flow(tmp_path, call_type):
    # Keras passes x, y and sample_weight arrays; here a sequence over the same arrays.
    fields = {"x": np.random.random((100, 16)), "y": np.random.random((100, 4)), "sw": np.random.random((100,))}
    seq = memseq.MemmapSequence(
        saved(tmp_path, "ei", fields), x="x", y="y", sample_weight="sw", batch_size=16, shuffle=True, seed=0
    )
    iterator = epoch_iterator.EpochIterator(x=seq, shuffle=True)
    steps_seen = []
    generator = iterator if call_type == "iterator" else iterator.enumerate_epoch()
    for begin_step, end_step, batch in generator:
        batch = batch[0]
        steps_seen.append(begin_step)
        assert begin_step == end_step
        assert len(batch) == 3
        assert isinstance(batch[0], np.ndarray)
    assert steps_seen == [0, 1, 2, 3, 4, 5, 6]


def test_epoch_iterator_insufficient_data(tmp_path):
    batch_size = 8
    steps_per_epoch = 6
    dataset_size = batch_size * (steps_per_epoch - 2)
    x = np.arange(dataset_size).reshape((dataset_size, 1))
    seq = memseq.MemmapSequence(
        saved(tmp_path, "short", {"x": x, "y": x * 2}), x="x", y="y", batch_size=batch_size, shuffle=False
    )
    iterator = epoch_iterator.EpochIterator(x=seq, steps_per_epoch=steps_per_epoch)
    steps_seen = []
    with pytest.warns(match="Your input ran out of data"):
        for step, _, _ in iterator:
            steps_seen.append(step)
    assert len(steps_seen) == steps_per_epoch - 2


@pytest.mark.parametrize("infinite", [True, False], ids=["infinite", "finite"])
def test_epoch_callbacks(tmp_path, infinite):
    seq = CallbackSequence(saved(tmp_path, "cb", {"data": np.random.rand(64, 2)}), infinite=infinite)
    epoch_iter = epoch_iterator.EpochIterator(x=seq, steps_per_epoch=10)

    num_epochs = 5
    for _ in range(num_epochs):
        for _, _, _ in epoch_iter:
            pass
    assert seq.tracker == [1, 2] * num_epochs


# --------------------------------------------------------------------------------------
# trainer_test.py :: TestTrainer.test_fit_with_data_adapter (its py_dataset cases)


class StepCounter(keras.callbacks.Callback):
    """Counts training batches per epoch."""

    def on_train_begin(self, logs=None):
        self.steps = []

    def on_epoch_begin(self, epoch, logs=None):
        self.steps.append(0)

    def on_train_batch_end(self, batch, logs=None):
        self.steps[-1] += 1


FIT_CASES = [
    pytest.param({}, {}, id="py_dataset"),
    pytest.param({}, {"class_weight": {0: 1, 1: 2}}, id="py_dataset_cw"),
    pytest.param({"infinite": True}, {"steps_per_epoch": 20}, id="py_dataset_infinite"),
    pytest.param({"infinite": True}, {"steps_per_epoch": 20, "class_weight": {0: 1, 1: 2}},
                 id="py_dataset_infinite_cw"),
    pytest.param({"workers": 2}, {}, id="py_dataset_multithreading"),
    pytest.param({"workers": 2}, {"class_weight": {0: 1, 1: 2}}, id="py_dataset_multithreading_cw"),
    pytest.param({"infinite": True, "workers": 2}, {"steps_per_epoch": 20}, id="py_dataset_multithreading_infinite"),
    pytest.param({"workers": 2, "use_multiprocessing": True}, {}, id="py_dataset_multiprocessing",
                 marks=pytest.mark.slow),
    pytest.param({"workers": 2, "use_multiprocessing": True}, {"class_weight": {0: 1, 1: 2}},
                 id="py_dataset_multiprocessing_cw", marks=pytest.mark.slow),
    pytest.param({"infinite": True, "workers": 2, "use_multiprocessing": True}, {"steps_per_epoch": 20},
                 id="py_dataset_multiprocessing_infinite", marks=pytest.mark.slow),
]


@pytest.fixture(scope="module")
def trainer_data(tmp_path_factory):
    """trainer_test.TestPyDataset's batches: 20 of ones (5, 4) and zeros (5, 3)."""
    path = tmp_path_factory.mktemp("trainer") / "ones"
    memseq.save(path, {"x": np.ones((100, 4), "float32"), "y": np.zeros((100, 3), "float32")})
    return str(path)


@pytest.mark.parametrize(("dataset_kwargs", "fit_kwargs"), FIT_CASES)
def test_fit_with_data_adapter(trainer_data, dataset_kwargs, fit_kwargs):
    if dataset_kwargs.get("use_multiprocessing", False) and BACKEND == "jax":
        pytest.skip("Keras skips process workers in fit under JAX (not supported there)")
    # Keras' ExampleModel: a Dense(3) layer without bias, kernel of ones, as a model.
    model = keras.Sequential(
        [keras.Input((4,)), keras.layers.Dense(3, use_bias=False, kernel_initializer="ones")]
    )
    model.compile(
        optimizer=keras.optimizers.Adagrad(),
        loss=keras.losses.MeanSquaredError(),
        metrics=[keras.metrics.MeanSquaredError()],
        jit_compile=True,
    )
    seq = TrainerSequence(trainer_data, **dataset_kwargs)
    counter = StepCounter()
    history = model.fit(seq, None, epochs=3, callbacks=[counter], verbose=0, **fit_kwargs)
    # Keras asserts nothing here; the port checks that fit ran 3 epochs of 20 steps.
    assert counter.steps == [20, 20, 20]
    assert len(history.history["loss"]) == 3
    assert all(math.isfinite(loss) for loss in history.history["loss"])


# --------------------------------------------------------------------------------------
# The same tests under JAX, from a TensorFlow run.


@pytest.mark.slow
@pytest.mark.timeout(900)
@pytest.mark.skipif(BACKEND != "tensorflow" or os.environ.get(CHILD_RUN) == "1",
                    reason="runs only from a TensorFlow run, once")
def test_contract_holds_under_jax_too():
    env = subprocess_env()
    env["KERAS_BACKEND"] = "jax"
    env[CHILD_RUN] = "1"
    result = subprocess.run(
        [sys.executable, "-m", "pytest", "-q", "-p", "no:cacheprovider", str(Path(__file__).resolve())],
        cwd=REPO_ROOT,
        env=env,
        capture_output=True,
        text=True,
        timeout=850,
    )
    assert result.returncode == 0, "under KERAS_BACKEND=jax:\n" + result.stdout[-6000:] + result.stderr[-2000:]
