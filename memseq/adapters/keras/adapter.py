"""The Keras 3 data adapter for :class:`~memseq.MemmapSequence`: which batches, built by whom.

:class:`SequenceAdapter` is what Keras' ``fit``, ``evaluate`` and ``predict`` get for
a ``MemmapSequence`` (see :mod:`memseq.adapters.keras` for the contract it keeps);
:class:`BatchBuilder` builds one batch as ``seq[i]`` would; ``EpochFeed`` is what it
shares with tf_keras' adapter (:mod:`memseq.adapters.keras.legacy`): an epoch's batch
order and the producer whose workers build them ahead.
"""

from __future__ import annotations

import itertools
import threading
import weakref
from collections.abc import Iterable, Iterator
from typing import Any

import numpy as np

import memseq.adapters.keras.internals as internals
from memseq.adapters.keras.clock import clock
from memseq.batching.workers import default_start_method, make_producer
from memseq.util import forksafe as _forksafe

__all__ = ["BatchBuilder", "EpochFeed", "SequenceAdapter", "overrides", "standardize"]


# Batches in an endless sequence's tf.data epoch: more than any fit asks for.
_ENDLESS = 2**62


# The sequence class the adapters serve (MemmapSequence, set by ``install``): subclasses
# are compared to it.
sequence_type: type | None = None


def overrides(sequence: Any, name: str) -> bool:
    """Whether ``type(sequence)`` overrides the served sequence class's attribute ``name``."""
    return getattr(type(sequence), name) is not getattr(sequence_type, name)


class BatchBuilder:
    """``build(index, epoch)``: what ``seq[index]`` returns in ``epoch`` (one process's share of it).

    Pickles as the sequence does: by reference.

    Args:
        sequence: The sequence.
        share: ``(process, num_processes)`` to serve that process's rows of every batch.
    """

    def __init__(self, sequence: Any, share: tuple[int, int] | None = None):
        self.sequence = sequence
        self.share = share
        self.custom = overrides(sequence, "__getitem__")

    def __call__(self, index: int, epoch: int) -> Any:
        sequence = self.sequence
        if not self.custom:
            if self.share is None:
                return sequence.get_batch(index, epoch)
            return sequence.pack(sequence.get_share(index, epoch, *self.share))
        if sequence.epoch != epoch:
            # Only in a worker process's copy; threads share the sequence, whose epoch
            # the adapter set before the epoch began.
            sequence.set_epoch(epoch)
        batch = sequence[index]
        if self.share is None:
            return batch
        process, num_processes = self.share
        return _map_arrays(lambda array: array[process::num_processes], batch)


def _map_arrays(fn: Any, structure: Any) -> Any:
    if isinstance(structure, dict):
        return {key: _map_arrays(fn, value) for key, value in structure.items()}
    if isinstance(structure, (tuple, list)):
        return type(structure)(_map_arrays(fn, value) for value in structure)
    return fn(structure) if structure is not None else None


def _producer_for(sequence: Any, options: tuple[int, bool, int], share: tuple[int, int] | None, backend: str) -> Any:
    workers, use_multiprocessing, max_queue_size = options
    return make_producer(
        BatchBuilder(sequence, share),
        workers=workers,
        use_multiprocessing=use_multiprocessing,
        max_queue_size=max_queue_size,
        start_method=default_start_method(backend),
        # State a subclass changes in its epoch hooks reaches process workers.
        refresh=overrides(sequence, "on_epoch_begin") or overrides(sequence, "on_epoch_end"),
    )


def standardize(batch: Any, class_weight: Any = None) -> Any:
    """A batch as Keras' ``PyDatasetAdapter`` standardizes it, messages included."""
    if isinstance(batch, dict):
        return batch
    if isinstance(batch, np.ndarray):
        batch = (batch,)
    if isinstance(batch, list):
        batch = tuple(batch)
    if not isinstance(batch, tuple) or len(batch) not in {1, 2, 3}:
        raise ValueError(
            "PyDataset.__getitem__() must return a tuple or a dict. "
            "If a tuple, it must be ordered either (input,) or (inputs, targets) or "
            f"(inputs, targets, sample_weights). Received: {str(batch)[:100]}... of type {type(batch)}"
        )
    if class_weight is not None:
        if len(batch) == 3:
            raise ValueError("You cannot specify `class_weight` and `sample_weight` at the same time.")
        if len(batch) == 2:
            batch = (*batch, internals.data_adapter_utils.class_weight_to_sample_weights(batch[1], class_weight))
    return batch


class EpochFeed:
    """What both adapters share: which batches an epoch serves, in which order, built by whom.

    Its producer's workers start with the first epoch and live as long as the adapter:
    one ``fit`` (every epoch), ``evaluate`` or ``predict`` call. Keras drops the
    adapter when the call returns or raises, which stops them.
    """

    def __init__(self, sequence: Any, *, class_weight: Any, shuffle: bool, backend: str, options: Any = None):
        self.seq = sequence
        self.class_weight = class_weight
        self.shuffle = bool(shuffle)
        self.share = internals.distribution_share()
        if options is None:  # Keras 3: the PyDataset's own options
            options = (sequence.workers, sequence.use_multiprocessing, sequence.max_queue_size)
        self.producer = _producer_for(sequence, options, self.share, backend)
        self.start = 0

    def begin(self) -> None:
        """Sets the sequence to Keras' epoch (in a fit) and takes a pending resume point."""
        if clock.epoch is not None and self.seq.epoch != clock.epoch:
            self.seq.set_epoch(clock.epoch)
        self.start = clock.take_start()

    def order(self, epoch: int) -> Iterable[int]:
        num_batches = self.seq.num_batches
        if num_batches is None:
            return itertools.count(self.start)
        indices = np.arange(num_batches)
        if self.shuffle:
            # Keras 3.15 shuffles with the global `random`; seeded here so a resumed
            # run replays the order (Keras 3.16 seeds it with the epoch too).
            indices = np.random.default_rng([self.seq.seed, epoch, num_batches]).permutation(num_batches)
        return indices[self.start :].tolist()

    def open(self) -> tuple[int | None, Iterator[Any]]:
        """This epoch's number of batches (``None``: endless) and its standardized batches, built ahead."""
        epoch = self.seq.epoch
        order = self.order(epoch)
        count = len(order) if isinstance(order, list) else None
        serve_order = getattr(self.seq, "serve_order", None)  # a MemmapSequence's: a subclass of PyDataset may lack it
        if count is not None and callable(serve_order):
            serve_order(epoch, order)
        return count, (standardize(batch, self.class_weight) for batch in self.producer.epoch(order, epoch))

    def batches(self) -> Iterator[Any]:
        """One epoch of standardized batches: the sequence's current epoch, from its first batch on."""
        yield from self.open()[1]

    def signature(self) -> Any:
        """The element spec, from batches 0 and 1, as Keras infers it."""
        num_batches = self.seq.num_batches
        count = internals.data_adapter_utils.NUM_BATCHES_FOR_TENSOR_SPEC
        if num_batches is not None:
            count = min(count, num_batches)
        if count == 0:
            raise ValueError("The PyDataset has length 0")
        return internals.data_adapter_utils.get_tensor_spec([standardize(self.seq[i], self.class_weight) for i in range(count)])


class SequenceAdapter(internals.DataAdapter or object):  # type: ignore[misc]
    """Serves a :class:`~memseq.MemmapSequence` to Keras 3's ``fit``, ``evaluate`` and ``predict``.

    Args:
        sequence: The sequence. Its ``workers``, ``use_multiprocessing`` and
            ``max_queue_size`` choose how batches are built ahead.
        class_weight: ``fit``'s ``class_weight``: turned into sample weights with
            Keras' own ``class_weight_to_sample_weights``, as Keras does for a ``PyDataset``.
        shuffle: ``fit``'s ``shuffle``: reorder whole batches every epoch, seeded with
            ``(seed, epoch)`` (rows are already shuffled by the sequence).

    Raises:
        ValueError: While iterating, if ``class_weight`` is given and the sequence
            also yields sample weights, or a batch is not a tuple or dict (Keras' messages).
    """

    def __init__(self, sequence: Any, *, class_weight: Any = None, shuffle: bool = False):
        import keras

        self._feed = EpochFeed(sequence, class_weight=class_weight, shuffle=shuffle, backend=keras.backend.backend())
        self._seq = sequence
        self._within_epoch = False
        self._signature: Any = None
        self._tf_iterator: Iterator[Any] | None = None
        self._lock = threading.Lock()
        _forksafe.register(self)

    def get_numpy_iterator(self) -> Iterator[Any]:
        return self._feed.batches()

    def get_jax_iterator(self) -> Iterator[Any]:
        return internals.data_adapter_utils.get_jax_iterator(self._feed.batches())

    def get_torch_dataloader(self) -> Any:
        return internals.data_adapter_utils.get_torch_dataloader(self._feed.batches())

    def get_mlx_iterator(self) -> Iterator[Any]:
        """The batches of :meth:`get_numpy_iterator`, for Keras' MLX backend.

        That backend converts numpy batches to MLX arrays itself; a Keras whose
        ``data_adapter_utils`` offers ``get_mlx_iterator`` gets that conversion applied.
        """
        convert = getattr(internals.data_adapter_utils, "get_mlx_iterator", None)
        return self._feed.batches() if convert is None else convert(self._feed.batches())

    def get_tf_dataset(self) -> Any:
        """A tf.data pipeline: one epoch per iteration, without ``from_generator``.

        Each iteration calls (through ``numpy_function``) a Python step that starts
        the epoch's producer on the first element and takes the next finished batch
        in order after that; the producer's workers build batches ahead, so the
        step only hands one over. ``from_generator`` is avoided: creating one makes
        TensorFlow set glibc's malloc thresholds process-wide (see DESIGN.md).
        """
        import tensorflow as tf

        if self._signature is None:
            self._signature = self._feed.signature()
        signature = self._signature
        specs = tf.nest.flatten(signature)

        # TensorFlow keeps these functions as long as it keeps the dataset's graph,
        # which can outlive fit: they hold the adapter (and its workers) weakly.
        adapter = weakref.ref(self)

        def start() -> np.int64:
            return np.int64(adapter()._start_tf_epoch())

        def step(_: Any) -> list[np.ndarray]:
            return [np.asarray(part) for part in tf.nest.flatten(next(adapter()._tf_iterator))]

        @tf.autograph.experimental.do_not_convert
        def begin(_: Any) -> Any:
            return tf.numpy_function(start, [], tf.int64, stateful=True, name="memseq_epoch")

        @tf.autograph.experimental.do_not_convert
        def load(element: Any) -> Any:
            arrays = tf.numpy_function(step, [element], [s.dtype for s in specs], stateful=True, name="memseq_fit")
            for array, spec in zip(arrays, specs):
                array.set_shape(spec.shape)
            return tf.nest.pack_sequence_as(signature, arrays)

        # Each iteration starts the epoch's producer when it asks for its first batch
        # (after Keras' on_epoch_begin), learns how many batches this epoch serves (a
        # resumed epoch serves fewer), then loads one finished batch per element.
        ds = tf.data.Dataset.from_tensors(np.int64(0)).map(begin).flat_map(tf.data.Dataset.range).map(load)
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

    def _after_fork_in_child(self) -> None:
        self._lock = threading.Lock()  # a thread of the parent may have held it
        self._tf_iterator = None

    def _start_tf_epoch(self) -> int:
        with self._lock:
            if self._tf_iterator is not None:
                self._tf_iterator.close()
            count, self._tf_iterator = self._feed.open()
        return _ENDLESS if count is None else count

    def on_epoch_begin(self) -> None:
        if self._within_epoch:
            raise ValueError("`on_epoch_begin` was called twice without `on_epoch_end` having been called.")
        self._within_epoch = True
        self._feed.begin()
        self._seq.on_epoch_begin()

    def on_epoch_end(self) -> None:
        self._seq.on_epoch_end()
        self._within_epoch = False

    @property
    def num_batches(self) -> int | None:
        return self._seq.num_batches

    @property
    def batch_size(self) -> int:
        return self._seq.batch_size

    @property
    def has_partial_batch(self) -> bool:
        return self._seq.num_rows % self._seq.batch_size != 0 and not self._seq.drop_remainder

    @property
    def partial_batch_size(self) -> int | None:
        return self._seq.num_rows % self._seq.batch_size if self.has_partial_batch else None
