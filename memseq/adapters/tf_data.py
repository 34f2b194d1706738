"""tf.data adapter: a :class:`~memseq.MemmapSequence` as a ``tf.data.Dataset``.

``to_tf_dataset(seq)`` (or ``seq.to_tf_dataset()``) returns a dataset that serves
the same batches as ``seq[i]``, in the same order, for the same ``(seed, epoch)``:

- **Random access, no generator.** The pipeline is
  ``from_tensors(epoch counter) -> flat_map(range(len(seq))) ->
  map(numpy_function(build batch i), num_parallel_calls=AUTOTUNE) -> prefetch(AUTOTUNE)``,
  so batches are built in parallel by tf.data's threads (numpy's gathers from the
  memory map release the GIL). A batch is ``seq.get_fields(i, epoch)`` (rows, then
  ``augment``), gathered into the sequence's recycled 64-byte-aligned buffers,
  which TensorFlow adopts without a copy. ``tf.data.Dataset.from_generator`` is never
  used: it funnels every batch through one Python generator, and creating one makes
  TensorFlow set glibc malloc's mmap threshold process-wide, which slows every large
  numpy allocation afterwards (see DESIGN.md).
- **Epochs.** The first iteration of the dataset (the first ``iter(ds)``) serves
  ``seq.epoch`` as it was when the dataset was made (or ``epoch=``), each further
  iteration the next epoch, so ``model.fit(ds, epochs=3)`` sees three different
  shuffles. The counter lives in the pipeline (a Python counter read by a
  ``numpy_function`` when an iteration asks for its first batch); the sequence
  itself is never mutated. Concurrent iterations take epochs in the order they
  ask for their first batch.
- **Schema.** ``element_spec`` comes from ``seq.fields`` (dtype and row shape of
  every field; the batch dimension is ``None``) without reading a batch. If a
  subclass's ``augment`` changes a field's dtype or row shape, pass
  ``output_signature=``: the same nested structure as a batch, of
  ``tf.TensorSpec``. Each batch is checked against the signature in the worker, and
  a mismatch raises a :class:`~memseq.SchemaError` naming the field.
- **Structure.** Elements have the structure of ``seq[i]``: ``(x, y)``,
  ``(x, y, sample_weight)``, and ``(x,)`` when ``y`` is None (a 1-tuple, which
  ``model.predict`` and ``model.fit`` read as inputs only; a bare tuple of several
  inputs would be read as ``(x, y)``). Each part is a tensor, a tuple or a dict,
  as selected by ``x``/``y``/``sample_weight``.
- **Distributed.** With ``input_context`` (a ``tf.distribute.InputContext``), each
  input pipeline serves its replicas' shares of every global batch, with the
  per-replica batch size; see :func:`to_tf_dataset`, :func:`dataset_fn` and
  :func:`distribute`.

Keras notes (Keras 3.15): ``fit`` makes a new iterator per epoch, so each ``fit``
epoch is the next memseq epoch. Under a ``tf.distribute`` strategy, ``fit`` first
pulls one batch from a throwaway iteration to build the model, so training starts
at the dataset's second epoch. Legacy ``tf_keras`` keeps one iterator for a whole
``fit`` on a distributed dataset (and needs ``steps_per_epoch``): add ``.repeat()``,
each pass is then the next epoch.

TensorFlow is imported inside the functions of this module only, so
``import memseq`` stays free of it (the first time without its start-up noise:
:mod:`memseq.adapters.tf_import`).
"""

from __future__ import annotations

import threading
from collections.abc import Callable
from typing import Any

import numpy as np

from memseq.adapters.tf_exit import guarded
from memseq.adapters.tf_import import import_tensorflow
from memseq.errors import SchemaError
from memseq.order import ReplicaShare, replica_share
from memseq.util import forksafe as _forksafe
from memseq.util.checks import INT64_MAX, bounded_repr, check_bool, check_int

__all__ = ["MAX_PARALLEL_CALLS", "dataset_fn", "distribute", "per_iteration", "to_tf_dataset"]

# The most batches ``to_tf_dataset`` builds in parallel. tf.data reserves a result slot
# per parallel call up front (``10**9`` of them abort the process), and each call in
# flight holds a whole batch in memory; far fewer run at once on any machine, since
# tf.data's threads are as many as the cores.
MAX_PARALLEL_CALLS = 1024


class _EpochCounter:
    """Hands out consecutive epoch numbers, one per iteration of a dataset.

    Read through a ``numpy_function`` at the start of every iteration; a lock
    because tf.data may run iterations on several threads.
    """

    def __init__(self, first: int):
        self._next = first
        self._lock = threading.Lock()
        _forksafe.register(self)

    def _after_fork_in_child(self) -> None:
        self._lock = threading.Lock()

    def __call__(self) -> np.int64:
        with self._lock:
            epoch = self._next
            if epoch > INT64_MAX:
                raise SchemaError(f"to_tf_dataset: the next epoch, {epoch}, exceeds 2**63 - 1.")
            self._next += 1
        return np.int64(epoch)


def _signature(seq: Any, output_signature: Any) -> tuple[Any, dict[str, Any]]:
    """The batch structure with field names as leaves, and field name -> tf.TensorSpec."""
    import tensorflow as tf

    fields = seq.fields
    # seq.pack turns a dict of fields into the structure of seq[i]: fed with field
    # names it gives the template whose leaves tell which field goes where.
    template = seq.pack({name: name for name in fields})
    if output_signature is None:
        return template, {
            name: tf.TensorSpec((None, *row_shape), tf.as_dtype(dtype)) for name, (dtype, row_shape) in fields.items()
        }
    try:
        tf.nest.assert_same_structure(template, output_signature, check_types=False)
    except (ValueError, TypeError) as e:
        raise SchemaError(
            f"output_signature must have the structure of a batch, {_describe(template)}. "
            f"Received: {output_signature!r}"
        ) from e
    specs: dict[str, Any] = {}
    for name, spec in zip(tf.nest.flatten(template), tf.nest.flatten(output_signature)):
        if not isinstance(spec, tf.TensorSpec):
            raise SchemaError(f"output_signature: field {name!r} needs a tf.TensorSpec. Received: {spec!r}")
        if spec.shape.rank is None or spec.shape.rank < 1:
            raise SchemaError(
                f"output_signature: field {name!r} needs a shape with a batch dimension first, "
                f"e.g. (None, 64, 64, 3). Received: {spec.shape}"
            )
        if name in specs and specs[name] != spec:
            raise SchemaError(
                f"output_signature: field {name!r} appears twice with different specs: {specs[name]} and {spec}."
            )
        specs[name] = spec
    return template, {name: specs[name] for name in fields}


def _describe(template: Any) -> str:
    import tensorflow as tf

    return repr(tf.nest.map_structure(lambda name: f"<{name}>", template)).replace("'", "")


def _checker(specs: dict[str, Any]) -> Callable[[str, np.ndarray], None]:
    """Checks a field array against its spec (dtype, shape) in the worker: a clear error, not a crash."""
    expected = {
        name: (np.dtype(spec.dtype.as_numpy_dtype), tuple(spec.shape.as_list())) for name, spec in specs.items()
    }

    def check(name: str, array: np.ndarray) -> None:
        dtype, shape = expected[name]
        if (
            array.dtype != dtype
            or array.ndim != len(shape)
            or any(want is not None and want != got for want, got in zip(shape, array.shape))
        ):
            raise SchemaError(
                f"Field {name!r}: the batch has {array.dtype} {array.shape}, the dataset's signature says "
                f"{dtype} {tuple(shape)}. If augment() changes dtypes or shapes, pass "
                "to_tf_dataset(output_signature=...) with the new specs."
            )

    return check


class _Loader:
    """Builds one element: ``(epoch, element index) -> list of field arrays``, run by tf.data threads.

    TensorFlow may use a returned array's buffer as the tensor's memory without
    copying. The sequence hands out 64-byte-aligned arrays from its buffer pool,
    which reuses a buffer only once nothing (TensorFlow's tensor included)
    references it, so a batch in flight is never overwritten.
    """

    def __init__(self, seq: Any, names: list[str], specs: dict[str, Any], share: ReplicaShare | None):
        self.seq = seq
        self.names = names
        self.share = share
        self.check = _checker(specs)

    def __call__(self, epoch: np.int64, element: np.int64) -> list[np.ndarray]:
        epoch, element = int(epoch), int(element)
        if self.share is None:
            batch = self.seq.get_fields(element, epoch)
        else:
            index, replica = self.share.element(element)
            batch = self.seq.get_share(index, epoch, replica, self.share.num_replicas)
        for name in self.names:
            self.check(name, batch[name])
        return [batch[name] for name in self.names]


def _check_arguments(seq: Any, deterministic: Any, epoch: Any, num_parallel_calls: Any) -> tuple[int, int]:
    """Validates to_tf_dataset's arguments; returns (first epoch, num_parallel_calls)."""
    import tensorflow as tf

    if not all(hasattr(seq, name) for name in ("get_fields", "get_share", "pack", "fields", "epoch", "batch_size")):
        raise SchemaError(f"to_tf_dataset needs a memseq.MemmapSequence. Received: {type(seq).__name__}")
    check_bool(deterministic, "deterministic")
    first_epoch = check_int(seq.epoch if epoch is None else epoch, "epoch", 0)
    if num_parallel_calls is None:
        return first_epoch, tf.data.AUTOTUNE
    if num_parallel_calls != tf.data.AUTOTUNE or isinstance(num_parallel_calls, (bool, np.bool_)):
        try:
            check_int(num_parallel_calls, "num_parallel_calls", 1, maximum=MAX_PARALLEL_CALLS)
        except SchemaError:
            raise SchemaError(
                f"num_parallel_calls must be an int from 1 to {MAX_PARALLEL_CALLS} "
                f"(memseq.tfdata.MAX_PARALLEL_CALLS) or tf.data.AUTOTUNE. Received: {bounded_repr(num_parallel_calls)}"
            ) from None
    return first_epoch, int(num_parallel_calls)


def _replica_share(seq: Any, input_context: Any) -> ReplicaShare | None:
    """The share of ``input_context`` (a ``tf.distribute.InputContext``), or None without one."""
    if input_context is None:
        return None
    names = ("num_replicas_in_sync", "num_input_pipelines", "input_pipeline_id")
    values = {}
    for name in names:
        value = getattr(input_context, name, None)
        if value is None:
            raise SchemaError(
                "input_context must be a tf.distribute.InputContext (with num_replicas_in_sync, "
                f"num_input_pipelines and input_pipeline_id). Received: {bounded_repr(input_context)}"
            )
        values[name] = check_int(value, f"input_context.{name}", 0)
    return replica_share(seq.batch_size, *(values[name] for name in names))


def per_iteration(start: Callable[[], Any], num_elements: int) -> Any:
    """A ``tf.data.Dataset`` of ``(start(), i)`` for ``i`` in ``range(num_elements)``, anew each iteration.

    ``start`` (a Python callable returning an int) runs once per iteration of the
    dataset, when that iteration asks for its first element, not when the dataset
    or its iterator is made: so it sees state set just before an epoch begins (the
    next epoch number, Keras' ``on_epoch_begin``). Used by :func:`to_tf_dataset`
    (each iteration the next epoch) and by ``fit(seq)``'s adapter.

    Args:
        start: Called with no argument at the start of every iteration.
        num_elements: Elements per iteration.

    Returns:
        A dataset of ``(int64 scalar, int64 element index)`` pairs.
    """
    tf = import_tensorflow()

    @tf.autograph.experimental.do_not_convert
    def next_epoch(_: Any) -> Any:
        return tf.numpy_function(guarded(lambda: np.int64(start())), [], tf.int64, stateful=True, name="memseq_iteration")

    @tf.autograph.experimental.do_not_convert
    def elements(epoch: Any) -> Any:
        return tf.data.Dataset.zip(tf.data.Dataset.from_tensors(epoch).repeat(), tf.data.Dataset.range(num_elements))

    return tf.data.Dataset.from_tensors(np.int64(0)).map(next_epoch).flat_map(elements)


def to_tf_dataset(
    seq: Any,
    *,
    output_signature: Any = None,
    deterministic: bool = True,
    input_context: Any = None,
    epoch: int | None = None,
    num_parallel_calls: int | None = None,
    ragged: bool = False,
) -> Any:
    """A ``tf.data.Dataset`` serving the batches of ``seq``.

    Same batches, same order as the sequence for the same ``(seed, epoch)``. The
    first iteration serves ``epoch`` (default: ``seq.epoch`` now), each further
    iteration (each new iterator, i.e. each ``fit`` epoch) the next epoch. The
    sequence is not modified. ``augment`` runs inside the pipeline, in parallel,
    with the same rng as in the sequence, so batches are bit-identical to
    ``seq.get_batch(i, epoch)``.

    Distributed input (``input_context``): global batch ``s`` of an epoch is
    ``seq.batch_rows(s, epoch)`` (``seq.batch_size`` is the *global* batch size,
    which must divide by the number of replicas). Its rows, in ascending order, are
    dealt round-robin to the ``R`` replicas: replica ``r`` gets ``rows[r::R]``, i.e.
    ``input_context.get_per_replica_batch_size(seq.batch_size)`` rows of a full
    batch, each share a random subset spread over the whole row range. Input
    pipeline ``p`` serves the shares of its replicas
    ``p * R/P ... (p+1) * R/P - 1`` for every step, in that order, so each step
    trains on exactly the rows of the sequence's global batch ``s`` and every row is
    served once per epoch across all pipelines. Every pipeline serves the same number
    of steps (``len(seq)``). ``augment`` runs once per share with
    ``rng = np.random.default_rng([seed, epoch, s, r])``. With
    ``drop_remainder=False``, a last batch of fewer than ``R`` rows leaves some
    replicas an empty share; ``drop_remainder=True`` avoids that.

    Args:
        seq: A :class:`memseq.MemmapSequence`.
        output_signature: Optional nested structure of ``tf.TensorSpec`` with the
            structure of a batch (like ``seq[0]``), for subclasses whose
            ``augment`` changes dtypes or row shapes. Default: taken from
            ``seq.fields``, batch dimension ``None``.
        deterministic: ``True`` serves batches in the sequence's order. ``False``
            lets tf.data hand out whichever batch is ready first (faster when
            batch times vary; the set of batches per epoch is unchanged).
        input_context: A ``tf.distribute.InputContext`` (as passed to the function
            given to ``strategy.distribute_datasets_from_function``): serve only
            this input pipeline's share, with the per-replica batch size.
        epoch: The epoch of the first iteration. Default: ``seq.epoch``.
        num_parallel_calls: Batches built in parallel, from 1 to
            :data:`MAX_PARALLEL_CALLS` (1024). Default: ``tf.data.AUTOTUNE``.
        ragged: Serve stored variable-length fields as ``tf.RaggedTensor`` (rows
            truncated to ``Padding.max_length``, no padding) instead of padded
            tensors. Not with ``input_context``.

    Returns:
        A ``tf.data.Dataset`` of batches, with ``len(seq)`` elements per iteration
        (``len(seq) * R/P`` with ``input_context``).

    Raises:
        SchemaError: If ``seq`` is not a MemmapSequence, an argument is invalid,
            ``output_signature`` does not fit the batch structure, or the global
            batch size does not divide by the number of replicas. While iterating,
            a batch that does not match the signature fails the iteration with a
            ``tf.errors.OpError`` whose message is the SchemaError's.

    Example:
        >>> seq = memseq.MemmapSequence("data/train", x="image", y="label",
        ...                             batch_size=256, seed=0)
        >>> ds = memseq.adapters.tf_data.to_tf_dataset(seq)   # or seq.to_tf_dataset()
        >>> model.fit(ds, epochs=3)                 # epochs 0, 1, 2 of seq
        >>> strategy = tf.distribute.MirroredStrategy()
        >>> dist = memseq.adapters.tf_data.distribute(seq, strategy)
    """
    tf = import_tensorflow()  # the process's first import of TensorFlow, if it is, without its start-up noise

    first_epoch, num_parallel_calls = _check_arguments(seq, deterministic, epoch, num_parallel_calls)
    template, specs = _signature(seq, output_signature)
    names = list(specs)
    dtypes = [specs[name].dtype for name in names]
    share = _replica_share(seq, input_context)
    num_elements = len(seq) * (1 if share is None else share.replicas_per_pipeline)
    load = guarded(_Loader(seq, names, specs, share))
    row_lengths = None
    if check_bool(ragged, "ragged"):
        from memseq.adapters.tf_ragged import RowLengths

        row_lengths = RowLengths(seq, names, input_context)

    @tf.autograph.experimental.do_not_convert
    def build(epoch: Any, element: Any) -> Any:
        arrays = tf.numpy_function(load, [epoch, element], dtypes, stateful=False, name="memseq_batch")
        by_name = {}
        for name, array in zip(names, arrays):
            array.set_shape(specs[name].shape)
            by_name[name] = array
        if row_lengths is not None and row_lengths.names:
            lengths = tf.numpy_function(guarded(row_lengths), [epoch, element], [tf.int32] * len(row_lengths.names),
                                        stateful=False, name="memseq_lengths")
            row_lengths.wrap(by_name, lengths)
        return tf.nest.map_structure(lambda name: by_name[name], template)

    # Each iteration of the dataset serves the next epoch.
    ds = per_iteration(_EpochCounter(first_epoch), num_elements)
    ds = ds.map(build, num_parallel_calls=num_parallel_calls, deterministic=bool(deterministic))
    ds = ds.apply(tf.data.experimental.assert_cardinality(num_elements))
    ds = ds.prefetch(tf.data.AUTOTUNE)
    if input_context is not None:
        options = tf.data.Options()
        # Already sharded by input pipeline: tf.distribute must not shard again.
        options.experimental_distribute.auto_shard_policy = tf.data.experimental.AutoShardPolicy.OFF
        ds = ds.with_options(options)
    return ds


def dataset_fn(seq: Any, **kwargs: Any) -> Callable[[Any], Any]:
    """A function of a ``tf.distribute.InputContext`` for ``distribute_datasets_from_function``.

    Args:
        seq: A :class:`memseq.MemmapSequence`; its ``batch_size`` is the global batch size.
        **kwargs: Further arguments of :func:`to_tf_dataset`.

    Returns:
        ``lambda input_context: to_tf_dataset(seq, input_context=input_context, **kwargs)``.

    Example:
        >>> dist = strategy.distribute_datasets_from_function(memseq.adapters.tf_data.dataset_fn(seq))
    """

    def make(input_context: Any) -> Any:
        return to_tf_dataset(seq, input_context=input_context, **kwargs)

    return make


def distribute(seq: Any, strategy: Any, **kwargs: Any) -> Any:
    """``strategy.distribute_datasets_from_function`` over the sequence's batches.

    Each input pipeline (one per worker) serves its replicas' shares of every
    global batch; see :func:`to_tf_dataset` for how the shares are cut.

    Args:
        seq: A :class:`memseq.MemmapSequence`; its ``batch_size`` is the global batch size.
        strategy: A ``tf.distribute.Strategy`` (``MirroredStrategy``,
            ``MultiWorkerMirroredStrategy``, ...).
        **kwargs: Further arguments of :func:`to_tf_dataset`.

    Returns:
        A ``tf.distribute.DistributedDataset``; pass it to ``model.fit`` or iterate it.

    Example:
        >>> with strategy.scope():
        ...     model = make_model()
        >>> model.fit(memseq.adapters.tf_data.distribute(seq, strategy), epochs=3)
    """
    return strategy.distribute_datasets_from_function(dataset_fn(seq, **kwargs))
