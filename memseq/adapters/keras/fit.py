"""``model.fit(seq)``: Keras data adapters for :class:`~memseq.MemmapSequence`, Keras 3 and tf_keras.

Keras 3 feeds any ``PyDataset`` through its ``PyDatasetAdapter``, whose
``OrderedEnqueuer`` waits forever on a worker process that died, restarts its worker
pool every epoch, and (under TensorFlow) switches tf.data's prefetching off whenever
workers are used. For a ``MemmapSequence`` Keras gets :class:`SequenceAdapter`
instead: :func:`install` wraps ``keras.src.trainers.data_adapters.get_data_adapter``
once (when ``memseq.batching.sequence`` is imported) so it returns a ``SequenceAdapter`` for a
``MemmapSequence`` and defers to Keras for everything else. If a future Keras moves
what is wrapped, nothing is wrapped and ``fit(seq)`` runs through Keras' own adapter:
slower, never wrong.

The contract the adapter keeps is Keras' ``PyDataset`` contract, read off the
sequence's public surface only:

- **Batches are what ``seq[i]`` returns.** A subclass that overrides ``__getitem__``
  gets its own batches, in workers too (process workers get the sequence's epoch set
  to the one being served); a sequence that does not override it is served by
  ``seq.get_batch(i, epoch)``, the same values without a detour. ``num_batches`` is
  honoured, ``None`` meaning endless, as Keras does.
- **The epoch served is Keras' epoch number.** ``fit``'s epoch ``k`` (the number
  callbacks receive, counting from ``initial_epoch``) reads the sequence's epoch
  ``k``, set with ``set_epoch(k)`` when the epoch begins: resuming with
  ``initial_epoch``, ``BackupAndRestore`` or a later ``fit(initial_epoch=...)`` serves
  exactly the shuffles of an uninterrupted run, and the epoch never depends on how
  often a hook was called. Outside ``fit``'s epochs (``evaluate``, ``predict``) the
  sequence's own epoch is served. Keras' epoch is read from its ``CallbackList``,
  whose ``on_epoch_begin`` is wrapped for that.
- **Mid-epoch resume** with :class:`memseq.BackupAndRestore`: the epoch it restores
  starts at the batch after the last one saved (:func:`resume_at`).
- ``fit(shuffle=True)`` reorders whole batches, as Keras does, but from a generator
  seeded with ``(seed, epoch)``, so the order can be replayed.
- ``class_weight`` becomes sample weights with Keras' own function; the output
  signature is inferred from batches 0 and 1, as Keras infers it.
- Workers follow the sequence's ``workers``/``use_multiprocessing``/``max_queue_size``
  exactly as Keras chooses (inline for ``workers <= 1`` without processes,
  ``max_queue_size=0`` for no bound), built by :mod:`memseq.batching.workers`: persistent
  worker processes, a dead worker raises :class:`~memseq.WorkerError`, errors in
  batch order, no orphans.
- Under a Keras distribution the adapter stays on; when Keras runs several processes
  each serves only its share of every global batch (``seq.get_share``).

Legacy ``tf_keras`` (2.x) gets :class:`LegacySequenceAdapter`, put first in its list
of adapters by :func:`install_legacy`: the same batches, epochs and workers, instead
of tf_keras' ``OrderedEnqueuer``, which calls ``on_epoch_end`` once or twice per epoch
depending on thread timing.
"""

from __future__ import annotations

import functools
import importlib
import inspect
import itertools
import threading
import weakref
from collections.abc import Iterable, Iterator
from typing import Any

import numpy as np
from keras.src.trainers.data_adapters import data_adapter_utils
from keras.src.trainers.data_adapters.data_adapter import DataAdapter

from memseq.batching.workers import default_start_method, make_producer
from memseq.util import forksafe as _forksafe

__all__ = ["BatchBuilder", "SequenceAdapter", "current_start", "install", "install_legacy", "resume_at", "standardize"]


# Batches in an endless sequence's tf.data epoch: more than any fit asks for.
_ENDLESS = 2**62

# -- Keras' epoch number, as fit's CallbackList announces it


class _FitClock:
    """The epoch of the ``fit`` under way (``None`` outside one) and a pending resume point."""

    def __init__(self) -> None:
        self.reset()

    def reset(self, owner: Any = None) -> None:
        """Starts afresh, for the ``fit`` whose ``CallbackList`` is ``owner`` (``None``: no fit)."""
        self.owner = None if owner is None else weakref.ref(owner)
        self.epoch: int | None = None
        self.resume: tuple[int, int] | None = None  # (epoch, first batch), set by BackupAndRestore
        self.start = 0  # the first batch of the epoch under way

    def owned_by(self, callbacks: Any) -> bool:
        return self.owner is not None and self.owner() is callbacks

    def epoch_begin(self, epoch: int) -> None:
        self.epoch = int(epoch)
        self.start = 0
        if self.resume is not None and self.resume[0] == self.epoch:
            self.start = self.resume[1]
        self.resume = None

    def take_start(self) -> int:
        """The first batch of this epoch (once: validation adapters then start at 0)."""
        start, self.start = self.start, 0
        return start


_clock = _FitClock()


def resume_at(epoch: int, batch: int) -> None:
    """Makes the next ``fit`` epoch ``epoch`` start at batch ``batch`` (position in its order).

    Called by :class:`memseq.BackupAndRestore` from ``on_train_begin``; the first
    training adapter to begin that epoch honours it once.
    """
    _clock.resume = (int(epoch), int(batch))


def current_start() -> int:
    """The batch at which the epoch under way started (0 unless it was resumed)."""
    return _clock.start


def _legacy_resume_step(callbacks: Any, epoch: int) -> int:
    """The batch at which tf_keras' ``BackupAndRestore`` resumes ``epoch`` (0: none).

    tf_keras restores the epoch and step counters of its checkpoint and skips the
    steps already trained, but its data iterator starts at batch 0; memseq's adapter
    starts the epoch at that step instead, so the data match the steps.
    """
    state = getattr(getattr(callbacks, "model", None), "_training_state", None)
    steps = (getattr(callbacks, "params", None) or {}).get("steps")
    if state is None or not steps:
        return 0
    try:
        from tf_keras.src.utils.mode_keys import ModeKeys

        resumed, step = state.maybe_load_initial_counters_from_ckpt(steps, epoch, ModeKeys.TRAIN)
    except (ImportError, AttributeError, TypeError):  # another tf_keras: restart at batch 0
        return 0
    return int(step) if int(resumed) == epoch else 0


def _wrap_callback_list(callback_list_type: type, *, legacy: bool = False) -> None:
    """Wraps a ``CallbackList`` class so that ``fit``'s epoch numbers reach the clock.

    ``fit`` runs its validation through ``evaluate`` with its own ``CallbackList``:
    an ``evaluate`` or ``predict`` with another list is not part of the ``fit`` (a
    ``fit`` that raised never calls ``on_train_end``), so it resets the clock.
    """
    if getattr(callback_list_type.on_epoch_begin, "_memseq_wrapped", False):
        return

    def wrap(name: str, before: Any = None, after: Any = None) -> None:
        original = getattr(callback_list_type, name)

        @functools.wraps(original)
        def wrapper(self: Any, *args: Any, **kwargs: Any) -> Any:
            if before is not None:
                before(self, *args)
            try:
                return original(self, *args, **kwargs)
            finally:
                if after is not None:
                    after(self)

        wrapper._memseq_wrapped = True  # type: ignore[attr-defined]
        setattr(callback_list_type, name, wrapper)

    def outside_fit(callbacks: Any, *_: Any) -> None:
        if not _clock.owned_by(callbacks):
            _clock.reset()

    # Reset before the callbacks run: BackupAndRestore sets a resume point in on_train_begin.
    wrap("on_train_begin", before=lambda callbacks, *_: _clock.reset(callbacks))
    def epoch_begin(callbacks: Any, epoch: int, *_: Any) -> None:
        if legacy and _clock.epoch is None:  # the first epoch of a tf_keras fit
            step = _legacy_resume_step(callbacks, epoch)
            if step:
                _clock.resume = (epoch, step)
        _clock.epoch_begin(epoch)

    wrap("on_epoch_begin", before=epoch_begin)
    wrap("on_train_end", after=lambda callbacks: _clock.reset())
    wrap("on_test_begin", before=outside_fit)
    wrap("on_predict_begin", before=outside_fit)


# -- building batches


# The sequence class :func:`install` was given (MemmapSequence): subclasses are compared to it.
_sequence_type: type | None = None


def overrides(sequence: Any, name: str) -> bool:
    """Whether ``type(sequence)`` overrides the installed sequence class's attribute ``name``."""
    return getattr(type(sequence), name) is not getattr(_sequence_type, name)


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


def _distribution_share() -> tuple[int, int] | None:
    """``(process, num_processes)`` under a Keras distribution spanning several processes."""
    try:
        from keras.src.distribution import distribution_lib
    except ImportError:
        return None
    distribution = distribution_lib.distribution()
    if distribution is None or not getattr(distribution, "_is_multi_process", False):
        return None
    return int(distribution._process_id), int(distribution._num_processes)


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
            batch = (*batch, data_adapter_utils.class_weight_to_sample_weights(batch[1], class_weight))
    return batch


class _EpochFeed:
    """What both adapters share: which batches an epoch serves, in which order, built by whom.

    Its producer's workers start with the first epoch and live as long as the adapter:
    one ``fit`` (every epoch), ``evaluate`` or ``predict`` call. Keras drops the
    adapter when the call returns or raises, which stops them.
    """

    def __init__(self, sequence: Any, *, class_weight: Any, shuffle: bool, backend: str, options: Any = None):
        self.seq = sequence
        self.class_weight = class_weight
        self.shuffle = bool(shuffle)
        self.share = _distribution_share()
        if options is None:  # Keras 3: the PyDataset's own options
            options = (sequence.workers, sequence.use_multiprocessing, sequence.max_queue_size)
        self.producer = _producer_for(sequence, options, self.share, backend)
        self.start = 0

    def begin(self) -> None:
        """Sets the sequence to Keras' epoch (in a fit) and takes a pending resume point."""
        if _clock.epoch is not None and self.seq.epoch != _clock.epoch:
            self.seq.set_epoch(_clock.epoch)
        self.start = _clock.take_start()

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
        return count, (standardize(batch, self.class_weight) for batch in self.producer.epoch(order, epoch))

    def batches(self) -> Iterator[Any]:
        """One epoch of standardized batches: the sequence's current epoch, from its first batch on."""
        yield from self.open()[1]

    def signature(self) -> Any:
        """The element spec, from batches 0 and 1, as Keras infers it."""
        num_batches = self.seq.num_batches
        count = data_adapter_utils.NUM_BATCHES_FOR_TENSOR_SPEC
        if num_batches is not None:
            count = min(count, num_batches)
        if count == 0:
            raise ValueError("The PyDataset has length 0")
        return data_adapter_utils.get_tensor_spec([standardize(self.seq[i], self.class_weight) for i in range(count)])


class SequenceAdapter(DataAdapter):
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

        self._feed = _EpochFeed(sequence, class_weight=class_weight, shuffle=shuffle, backend=keras.backend.backend())
        self._seq = sequence
        self._within_epoch = False
        self._signature: Any = None
        self._tf_iterator: Iterator[Any] | None = None
        self._lock = threading.Lock()
        _forksafe.register(self)

    def get_numpy_iterator(self) -> Iterator[Any]:
        return self._feed.batches()

    def get_jax_iterator(self) -> Iterator[Any]:
        return data_adapter_utils.get_jax_iterator(self._feed.batches())

    def get_torch_dataloader(self) -> Any:
        return data_adapter_utils.get_torch_dataloader(self._feed.batches())

    def get_mlx_iterator(self) -> Iterator[Any]:
        # Keras' MLX backend (newer Keras) converts numpy batches itself where this is missing.
        convert = getattr(data_adapter_utils, "get_mlx_iterator", None)
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


def install(sequence_type: type) -> bool:
    """Makes Keras 3 use :class:`SequenceAdapter` for instances of ``sequence_type``.

    Wraps ``keras.src.trainers.data_adapters.get_data_adapter`` and
    ``keras.callbacks.CallbackList``'s train and epoch hooks, once.

    Returns:
        Whether the fast path is installed (False if this Keras has no such function).
    """
    try:
        module = importlib.import_module("keras.src.trainers.data_adapters")
        from keras.callbacks import CallbackList
    except ImportError:
        return False
    original = getattr(module, "get_data_adapter", None)
    if original is None:
        return False
    if getattr(original, "_memseq_wrapped", False):
        return True
    global _sequence_type
    _sequence_type = sequence_type
    expected = {"x", "y", "sample_weight", "shuffle", "class_weight"}
    if not expected <= set(inspect.signature(original).parameters) or not hasattr(module, "raise_unsupported_arg"):
        return False
    _wrap_callback_list(CallbackList)

    @functools.wraps(original)
    def get_data_adapter(x: Any, y: Any = None, sample_weight: Any = None, *args: Any, **kwargs: Any) -> Any:
        if isinstance(x, sequence_type):
            bound = inspect.signature(original).bind(x, y, sample_weight, *args, **kwargs)
            bound.apply_defaults()
            if y is not None:
                module.raise_unsupported_arg("y", "the targets", "PyDataset")
            if sample_weight is not None:
                module.raise_unsupported_arg("sample_weights", "the sample weights", "PyDataset")
            return SequenceAdapter(x, class_weight=bound.arguments["class_weight"], shuffle=bound.arguments["shuffle"])
        return original(x, y, sample_weight, *args, **kwargs)

    get_data_adapter._memseq_wrapped = True  # type: ignore[attr-defined]
    module.get_data_adapter = get_data_adapter
    return True


# -- legacy tf_keras


def install_legacy(sequence_type: type) -> bool:
    """Makes tf_keras' ``fit`` serve instances of ``sequence_type`` through :class:`LegacySequenceAdapter`.

    Returns:
        Whether it is installed (False if this tf_keras does not look as expected).
    """
    try:
        data_adapter = importlib.import_module("tf_keras.src.engine.data_adapter")
        callbacks = importlib.import_module("tf_keras.src.callbacks")
    except ImportError:
        return False
    adapters = getattr(data_adapter, "ALL_ADAPTER_CLS", None)
    base = getattr(data_adapter, "KerasSequenceAdapter", None)
    if not isinstance(adapters, list) or base is None or not hasattr(base, "_handle_multiprocessing"):
        return False
    if any(getattr(cls, "_memseq_type", None) is sequence_type for cls in adapters):
        return True
    _wrap_callback_list(callbacks.CallbackList, legacy=True)
    # tf_keras insists that exactly one adapter handles an input: the subclass takes
    # the place of KerasSequenceAdapter and defers to it for other sequences.
    legacy = _legacy_adapter_type(base, sequence_type)
    if base in adapters:
        adapters[adapters.index(base)] = legacy
    else:
        adapters.insert(0, legacy)
    return True


def _legacy_adapter_type(base: type, sequence_type: type) -> type:
    class LegacySequenceAdapter(base):  # type: ignore[misc, valid-type]
        """tf_keras' ``KerasSequenceAdapter``, with memseq's epochs and workers for memseq sequences.

        For a memseq sequence, batches come from memseq's producers (``fit``'s
        ``workers``/``use_multiprocessing``/``max_queue_size``, as tf_keras passes
        them), the epoch is tf_keras' epoch number, and the sequence's
        ``on_epoch_end`` is called exactly once per epoch. Other sequences get
        tf_keras' own behaviour.
        """

        _memseq_type = sequence_type

        def _handle_multiprocessing(self, x: Any, workers: int, use_multiprocessing: bool, max_queue_size: int) -> Any:
            if not isinstance(x, sequence_type):
                return super()._handle_multiprocessing(x, workers, use_multiprocessing, max_queue_size)
            feed = _EpochFeed(
                x,
                class_weight=None,
                shuffle=self._shuffle_sequence,
                backend="tensorflow",
                options=(workers, use_multiprocessing, max_queue_size),
            )
            self._memseq_feed = feed

            def generator_fn() -> Iterator[Any]:
                feed.begin()  # tf_keras asks for an epoch's first batch after on_epoch_begin
                yield from feed.batches()

            return generator_fn

        def on_epoch_end(self) -> None:
            if isinstance(self._keras_sequence, sequence_type):
                self._keras_sequence.on_epoch_end()
            else:
                super().on_epoch_end()

    LegacySequenceAdapter.__name__ = LegacySequenceAdapter.__qualname__ = "LegacySequenceAdapter"
    return LegacySequenceAdapter
