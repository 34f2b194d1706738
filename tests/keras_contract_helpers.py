"""``MemmapSequence`` ports of the ``PyDataset`` subclasses in Keras' own tests.

Used by ``tests/test_keras_contract.py``. Each class mirrors one Keras test class
(keras 3.15.1, ``keras/src/trainers/``) and overrides the same hooks
(``__getitem__``, ``num_batches``, ``on_epoch_begin``/``on_epoch_end``), but keeps its
data in memseq fields instead of Python attributes. They live in their own module,
which imports neither TensorFlow nor the test module, so worker processes
(``spawn``/``forkserver``) can import them cheaply.
"""

from __future__ import annotations

import math
import threading
import time

import numpy as np

import memseq


class ExampleSequence(memseq.MemmapSequence):
    """``py_dataset_adapter_test.ExamplePyDataset``: batch ``idx`` is rows ``[idx*bs, (idx+1)*bs)`` of x, y.

    ``infinite=True`` makes ``num_batches`` ``None`` and wraps the index around, as
    Keras' class does. ``delay`` sleeps in ``__getitem__``.
    """

    def __init__(self, data, *, batch_size=32, delay=0, infinite=False, sample_weight=None, **kwargs):
        super().__init__(
            data, x="x", y="y", sample_weight=sample_weight, batch_size=batch_size, shuffle=False, **kwargs
        )
        self.delay = delay
        self.infinite = infinite

    @property
    def num_batches(self):
        if self.infinite:
            return None
        return math.ceil(self.num_rows / self.batch_size)

    def __getitem__(self, idx):
        time.sleep(self.delay)
        if self.infinite:
            idx = idx % math.ceil(self.num_rows / self.batch_size)
        return super().__getitem__(idx)


class ConcurrencySequence(ExampleSequence):
    """An :class:`ExampleSequence` that records how many ``__getitem__`` calls overlap (threads only)."""

    def __init__(self, data, **kwargs):
        super().__init__(data, **kwargs)
        self.active = 0
        self.max_active = 0
        self.calls = 0
        self._gauge = threading.Lock()

    def __getitem__(self, idx):
        with self._gauge:
            self.active += 1
            self.calls += 1
            self.max_active = max(self.max_active, self.active)
        try:
            return super().__getitem__(idx)
        finally:
            with self._gauge:
                self.active -= 1


class DictSequence(memseq.MemmapSequence):
    """``py_dataset_adapter_test.DictPyDataset``: each batch is the dict ``{"x": ..., "y": ...}`` (inputs only)."""

    def __init__(self, data, *, batch_size=32, **kwargs):
        super().__init__(data, x={"x": "x", "y": "y"}, batch_size=batch_size, shuffle=False, **kwargs)

    @property
    def num_batches(self):
        return math.ceil(self.num_rows / self.batch_size)


class ExceptionSequence(memseq.MemmapSequence):
    """``py_dataset_adapter_test.ExceptionPyDataset``: 4 batches; ``__getitem__`` raises from batch 2 on."""

    def __init__(self, data, **kwargs):
        super().__init__(data, x="x", y="y", batch_size=8, shuffle=False, **kwargs)

    @property
    def num_batches(self):
        return 4

    def __getitem__(self, index):
        if index < 2:
            return super().__getitem__(index)
        raise ValueError("Expected exception")


class ShapesSequence(memseq.MemmapSequence):
    """``py_dataset_adapter_test.test_with_different_shapes``' class: 3 batches of different shapes."""

    def __init__(self, data, **kwargs):
        super().__init__(data, x="x", y="y", batch_size=16, shuffle=False, **kwargs)

    @property
    def num_batches(self):
        return 3

    def __getitem__(self, idx):
        if idx == 0:
            return np.ones([16, 4], "float32"), np.ones([16, 2], "float32")
        if idx == 1:
            return np.ones([16, 5], "float32"), np.ones([16, 2], "float32")
        return np.ones([2, 6], "float32"), np.ones([2, 2], "float32")


class NoLenSequence(memseq.MemmapSequence):
    """``test_iterate_infinite_with_no_len``' class: ``num_batches`` unknown.

    It raises ``NotImplementedError``, as ``PyDataset``'s default does for a class
    without ``__len__``.
    """

    def __init__(self, data, **kwargs):
        super().__init__(data, x="x", batch_size=2, shuffle=False, **kwargs)

    @property
    def num_batches(self):
        raise NotImplementedError("num_batches is unknown")

    def __getitem__(self, idx):
        return super().__getitem__(idx % len(self))


class CallbackSequence(memseq.MemmapSequence):
    """``epoch_iterator_test.test_epoch_callbacks``' class: records hook calls; x-only batches.

    ``tracker`` gets 1 for each ``on_epoch_begin`` and 2 for each ``on_epoch_end``.
    """

    def __init__(self, data, *, workers=1, use_multiprocessing=False, max_queue_size=10, infinite=False):
        super().__init__(
            data,
            x="data",
            batch_size=16,
            shuffle=False,
            workers=workers,
            use_multiprocessing=use_multiprocessing,
            max_queue_size=max_queue_size,
        )
        self.infinite = infinite
        self.tracker = []

    @property
    def num_batches(self):
        if self.infinite:
            return None
        return self.num_rows // self.batch_size

    def on_epoch_begin(self):
        super().on_epoch_begin()
        self.tracker.append(1)

    def __getitem__(self, index):
        return super().__getitem__(index % 2)

    def on_epoch_end(self):
        super().on_epoch_end()
        self.tracker.append(2)


class TrainerSequence(memseq.MemmapSequence):
    """``trainer_test.TestPyDataset``: 20 batches of 5 rows of ones (x) and zeros (y); ``None`` batches if infinite."""

    def __init__(self, data, *, infinite=False, **kwargs):
        super().__init__(data, x="x", y="y", batch_size=5, shuffle=False, **kwargs)
        self.infinite = infinite

    @property
    def num_batches(self):
        return None if self.infinite else 20

    def __getitem__(self, idx):
        return super().__getitem__(idx % 20)
