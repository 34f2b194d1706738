"""``model.fit(seq)`` fast path: a Keras 3 data adapter for :class:`~memseq.MemmapSequence`.

Keras 3 feeds any ``PyDataset`` through its ``PyDatasetAdapter``: under TensorFlow a
``from_generator`` dataset whose tf.data autotuning and prefetching are switched off
whenever workers are used, so building a batch and the training step run one after
the other (measured: 0.49x the speed of in-RAM arrays), and whose
``OrderedEnqueuer`` waits forever on a worker process that died.

For a ``MemmapSequence``, Keras gets :class:`SequenceAdapter` instead. Keras looks
adapters up with ``keras.src.trainers.data_adapters.get_data_adapter(x, y, ...,
shuffle, class_weight)``; :func:`install` wraps that function once (when
``memseq.sequence`` is imported) so it returns a ``SequenceAdapter`` for a
``MemmapSequence`` and defers to Keras for everything else. Wrapping the lookup,
rather than making the sequence a ``DataAdapter`` itself (which Keras would return
before looking at any argument), lets the adapter see ``class_weight`` and
``shuffle`` and honour them exactly as Keras does for a ``PyDataset``. If a future
Keras renames the function, nothing is wrapped and ``fit(seq)`` runs through Keras'
own ``PyDatasetAdapter``: slower, never wrong.

What the adapter keeps from Keras: the epoch protocol (``fit`` calls
``on_epoch_end()`` once before the first epoch, then ``on_epoch_begin``/batches/
``on_epoch_end``, so a fresh sequence serves epochs 1, 2, ... exactly as before),
``fit(shuffle=True)`` reordering whole batches with Python's ``random`` (as
``PyDatasetAdapter`` does), ``class_weight`` turned into sample weights by Keras'
own function, the output signature inferred from batches 0 and 1, and the
``workers``/``use_multiprocessing``/``max_queue_size`` options of the sequence.
What it changes: batches are built ahead by :mod:`memseq._workers` (threads or
processes, at most ``max_queue_size`` ahead), and under TensorFlow the tf.data
pipeline prefetches, so batch preparation overlaps the training step; a dead
worker raises :class:`~memseq.WorkerError` instead of hanging.

Backends: ``get_numpy_iterator``, ``get_jax_iterator`` and ``get_torch_dataloader``
never import TensorFlow; only ``get_tf_dataset`` does.
"""

from __future__ import annotations

import functools
import importlib
import inspect
import random
import threading
from collections.abc import Iterator
from typing import Any

import numpy as np
from keras.src.trainers.data_adapters import data_adapter_utils
from keras.src.trainers.data_adapters.data_adapter import DataAdapter

from memseq import tfdata
from memseq._workers import default_start_method, make_producer

__all__ = ["SequenceAdapter", "install"]


class SequenceAdapter(DataAdapter):
    """Serves a :class:`~memseq.MemmapSequence` to Keras 3's ``fit``, ``evaluate`` and ``predict``.

    Args:
        sequence: The sequence. Its ``workers``, ``use_multiprocessing`` and
            ``max_queue_size`` choose how batches are built ahead.
        class_weight: ``fit``'s ``class_weight``: turned into sample weights with
            Keras' own ``class_weight_to_sample_weights``, as Keras does for a
            ``PyDataset``.
        shuffle: ``fit``'s ``shuffle``: reorder whole batches every epoch with
            Python's ``random`` (rows are already shuffled by the sequence).

    Raises:
        ValueError: While iterating, if ``class_weight`` is given and the sequence
            also yields sample weights (Keras' own message).
    """

    def __init__(self, sequence: Any, *, class_weight: Any = None, shuffle: bool = False):
        import keras

        self._seq = sequence
        self._class_weight = class_weight
        self._shuffle = bool(shuffle)
        self._producer = make_producer(
            sequence.get_fields,
            workers=sequence.workers,
            use_multiprocessing=sequence.use_multiprocessing,
            max_queue_size=sequence.max_queue_size,
            start_method=default_start_method(keras.backend.backend()),
        )
        self._within_epoch = False
        self._signature: Any = None
        self._tf_iterator: Iterator[Any] | None = None
        self._lock = threading.Lock()

    # -- batches

    def _standardize(self, fields: dict[str, np.ndarray]) -> tuple[Any, ...]:
        batch = self._seq.pack(fields)
        if self._class_weight is not None:
            # Exactly PyDatasetAdapter._standardize_batch, message included.
            if len(batch) == 3:
                raise ValueError("You cannot specify `class_weight` and `sample_weight` at the same time.")
            if len(batch) == 2:
                weights = data_adapter_utils.class_weight_to_sample_weights(batch[1], self._class_weight)
                batch = (*batch, weights)
        return batch

    def _epoch_order(self) -> list[int]:
        indices = list(range(len(self._seq)))
        if self._shuffle:
            random.shuffle(indices)  # what Keras' PyDatasetAdapter does with fit(shuffle=True)
        return indices

    def _iterate(self) -> Iterator[tuple[Any, ...]]:
        """One epoch of standardized batches: the sequence's current epoch, built ahead."""
        for fields in self._producer.epoch(self._epoch_order(), self._seq.epoch):
            yield self._standardize(fields)

    def get_numpy_iterator(self) -> Iterator[Any]:
        return self._iterate()

    def get_jax_iterator(self) -> Iterator[Any]:
        return data_adapter_utils.get_jax_iterator(self._iterate())

    def get_torch_dataloader(self) -> Any:
        return data_adapter_utils.get_torch_dataloader(self._iterate())

    def get_tf_dataset(self) -> Any:
        """A tf.data pipeline: one epoch per iteration, without ``from_generator``.

        Each iteration calls (through ``numpy_function``) a Python step that starts
        the epoch's producer on the first element and takes the next finished batch
        in order after that; the producer's workers build batches ahead, so the
        step only hands one over. ``from_generator`` is avoided: creating one makes
        TensorFlow set glibc's malloc thresholds process-wide (see DESIGN.md).
        """
        import tensorflow as tf

        signature = self._tensor_signature()
        specs = tf.nest.flatten(signature)
        num_batches = len(self._seq)

        def start() -> int:
            with self._lock:
                self._close_tf_iterator()
                self._tf_iterator = self._iterate()
            return 0

        def step(_: Any) -> list[np.ndarray]:
            return [np.asarray(part) for part in tf.nest.flatten(next(self._tf_iterator))]

        @tf.autograph.experimental.do_not_convert
        def load(_: Any, element: Any) -> Any:
            arrays = tf.numpy_function(step, [element], [s.dtype for s in specs], stateful=True, name="memseq_fit")
            for array, spec in zip(arrays, specs):
                array.set_shape(spec.shape)
            return tf.nest.pack_sequence_as(signature, arrays)

        # Each iteration starts the epoch's producer when it asks for its first batch
        # (after Keras' on_epoch_begin), then loads one finished batch per element.
        ds = tfdata.per_iteration(start, num_batches).map(load)
        ds = ds.apply(tf.data.experimental.assert_cardinality(num_batches))
        # No tf.data prefetch, not even the one tf.data injects by default: the
        # producer already builds max_queue_size batches ahead in its workers, so a
        # step only hands over a finished batch. A prefetch thread would call the
        # step while the training loop drops the iterator after an error, and
        # TensorFlow drops it holding the GIL while it waits for that thread, which
        # needs the GIL: a deadlock (seen here in about one run in four).
        options = tf.data.Options()
        options.experimental_optimization.inject_prefetch = False
        options.autotune.enabled = False
        return ds.with_options(options)

    def _tensor_signature(self) -> Any:
        """The element spec, from batches 0 and 1 of the current epoch, as Keras infers it."""
        if self._signature is None:
            count = min(data_adapter_utils.NUM_BATCHES_FOR_TENSOR_SPEC, len(self._seq))
            batches = [self._standardize(self._seq.get_fields(i, self._seq.epoch)) for i in range(count)]
            self._signature = data_adapter_utils.get_tensor_spec(batches)
        return self._signature

    def _close_tf_iterator(self) -> None:
        if self._tf_iterator is not None:
            self._tf_iterator.close()
            self._tf_iterator = None

    # -- epochs

    def on_epoch_begin(self) -> None:
        if self._within_epoch:
            raise ValueError("`on_epoch_begin` was called twice without `on_epoch_end` having been called.")
        self._within_epoch = True
        self._seq.on_epoch_begin()

    def on_epoch_end(self) -> None:
        # The epoch's producer stops when its iteration ends (or is dropped, or fails):
        # with fit(steps_per_epoch=...) one iteration spans several Keras epochs.
        self._seq.on_epoch_end()
        self._within_epoch = False

    @property
    def num_batches(self) -> int:
        return len(self._seq)

    @property
    def batch_size(self) -> int:
        return self._seq.batch_size

    @property
    def has_partial_batch(self) -> bool:
        return self._seq.num_rows % self._seq.batch_size != 0 and not self._seq.drop_remainder

    @property
    def partial_batch_size(self) -> int | None:
        return self._seq.num_rows % self._seq.batch_size if self.has_partial_batch else None


def install(sequence_type: type) -> bool:
    """Makes Keras 3 use :class:`SequenceAdapter` for instances of ``sequence_type``.

    Wraps ``keras.src.trainers.data_adapters.get_data_adapter`` once. Under a Keras
    distribution with several processes, Keras' own checks and adapter run
    unchanged.

    Returns:
        Whether the fast path is installed (False if this Keras has no such function).
    """
    try:
        module = importlib.import_module("keras.src.trainers.data_adapters")
        from keras.src.distribution import distribution_lib
    except ImportError:
        return False
    original = getattr(module, "get_data_adapter", None)
    if original is None:
        return False
    if getattr(original, "_memseq_wrapped", False):
        return True
    expected = {"x", "y", "sample_weight", "shuffle", "class_weight"}
    if not expected <= set(inspect.signature(original).parameters):
        return False

    @functools.wraps(original)
    def get_data_adapter(x: Any, y: Any = None, sample_weight: Any = None, *args: Any, **kwargs: Any) -> Any:
        if isinstance(x, sequence_type) and distribution_lib.distribution() is None:
            bound = inspect.signature(original).bind(x, y, sample_weight, *args, **kwargs)
            bound.apply_defaults()
            if y is not None:
                module.raise_unsupported_arg("y", "the targets", "PyDataset")
            if sample_weight is not None:
                module.raise_unsupported_arg("sample_weights", "the sample weights", "PyDataset")
            return SequenceAdapter(
                x, class_weight=bound.arguments["class_weight"], shuffle=bound.arguments["shuffle"]
            )
        return original(x, y, sample_weight, *args, **kwargs)

    get_data_adapter._memseq_wrapped = True  # type: ignore[attr-defined]
    module.get_data_adapter = get_data_adapter
    return True
