"""MemmapSequence: a Keras ``PyDataset`` that serves shuffled batches from memmap files.

What a batch holds is a pure function of ``(seed, epoch, batch index)``:

- the rows come from :mod:`memseq.order` (a fresh permutation of rows every epoch
  when ``shuffle=True``, cut into consecutive batches);
- ``augment(batch, rng)`` gets ``rng = np.random.default_rng([seed, epoch, index])``.

So batches are identical whether Keras runs them in the main thread, in worker
threads or in worker processes (fork, spawn or forkserver), in any order. The only
mutable state is the epoch: ``on_epoch_end()`` advances it (Keras calls it), and
``set_epoch(n)`` jumps to it (to resume a run).

Under ``fit`` (see :mod:`memseq.adapters.keras`):

- ``workers``, ``use_multiprocessing`` and ``max_queue_size`` belong to the
  ``PyDataset`` constructor; ``fit(seq, workers=...)`` is a ``TypeError`` in Keras 3
  (legacy tf_keras still takes them in ``fit``).
- The epoch served is Keras' epoch number: ``fit``'s epoch ``k`` (counting from
  ``initial_epoch``) serves ``set_epoch(k)``'s batches, so a run resumed with
  ``initial_epoch`` or ``BackupAndRestore`` sees the shuffles of an uninterrupted run.
- Batches are what ``seq[i]`` returns: a subclass may override ``__getitem__`` and
  ``num_batches`` (``None``: endless), as Keras' ``PyDataset`` contract allows.
- A sequence pickles by reference (file paths, seed, epoch: a few KiB), never array
  data, so worker processes start fast under fork, spawn and forkserver and share
  the page cache.
"""

from __future__ import annotations

import importlib.util
import os
import random
from collections.abc import Mapping
from typing import Any

import keras
import numpy as np

from memseq.batching import padding as _padding
from memseq.batching.buffers import ALIGN, BufferPool
from memseq.batching.hosts import remote_order_cost, resolve_hosts, shard_aware_order
from memseq.errors import SchemaError
from memseq.order import BatchPlan
from memseq.read.arrays import rows_array
from memseq.read.dataset import Column, Dataset, RawColumn
from memseq.read.opener import open as open_dataset
from memseq.read.raw import memmap_reference
from memseq.read.remote import remote_files_of
from memseq.read.remote_prefetch import ShardPrefetcher
from memseq.readahead.batches import BatchReadahead
from memseq.util.checks import check_bool, check_int, equal_row_counts, is_sorted

__all__ = ["MemmapSequence"]


def _legacy_sequence_bases() -> tuple[type, ...]:
    # tf_keras (legacy Keras 2) only accepts its own Sequence type and still takes
    # workers= in fit(). Inherit from it too when it is installed, so the legacy
    # `model.fit(seq, workers=4, use_multiprocessing=True)` works; never require it.
    # Only under Keras' TensorFlow backend: importing tf_keras imports TensorFlow,
    # which JAX and PyTorch users must not pay for.
    if keras.backend.backend() != "tensorflow" or importlib.util.find_spec("tf_keras") is None:
        return ()
    try:
        import tf_keras
    except Exception:  # a broken tf_keras install must not break memseq
        return ()
    return (tf_keras.utils.Sequence,)


def _as_columns(data: Any) -> tuple[Mapping[str, Any], str]:
    """Resolves ``data`` to a mapping of field name -> array-like, and a short description."""
    if isinstance(data, (str, os.PathLike)):
        data = open_dataset(data)
    if isinstance(data, Dataset):
        return data, repr(data.path)
    if not isinstance(data, Mapping):
        raise SchemaError(
            "data must be a dataset path, a memseq.Dataset, or a mapping of field name -> array. "
            f"Received: {type(data).__name__}"
        )
    if not data:
        raise SchemaError("data has no fields.")
    columns = {}
    for name, array in data.items():
        if isinstance(array, np.memmap):
            # Pickling an np.memmap copies its data; a RawColumn over the same bytes
            # pickles as (path, dtype, shape, offset). Copy-on-write and
            # non-contiguous memmaps stay as they are.
            reference = memmap_reference(array)
            array = array if reference is None else RawColumn(*reference)
        elif not hasattr(array, "shape") or not hasattr(array, "dtype") or not _numpy_dtype(array.dtype):
            # Lists, and tensors of other libraries (tf.Tensor, jax.Array): in memory anyway.
            try:
                array = np.asarray(array)
            except (TypeError, ValueError) as error:
                raise SchemaError(
                    f"Field {name!r} must be an array-like of numbers. Received: {type(array).__name__}"
                ) from error
        columns[name] = rows_array(array, f"Field {name!r}", expected="at least one dimension (rows)")
    return columns, f"<mapping of {len(columns)} fields>"


def _numpy_dtype(dtype: Any) -> bool:
    try:
        np.dtype(dtype)
    except TypeError:
        return False
    return True


def _parse_selection(selection: Any, role: str, available: Mapping[str, Any]) -> tuple[str, Any]:
    """Validates x / y / sample_weight: a name, a list of names, or a dict {input: field}."""

    def check(name: Any) -> str:
        if not isinstance(name, str):
            raise SchemaError(f"{role} must name fields with strings. Received: {name!r}")
        if name not in available:
            raise SchemaError(f"{role}: no field {name!r}; fields are {list(available)}.")
        return name

    if isinstance(selection, str):
        return "single", check(selection)
    if isinstance(selection, Mapping):
        if not selection:
            raise SchemaError(f"{role} is an empty dict; name at least one field.")
        return "dict", {str(key): check(value) for key, value in selection.items()}
    if isinstance(selection, (list, tuple)):
        if not selection:
            raise SchemaError(f"{role} is an empty list; name at least one field.")
        return "tuple", [check(name) for name in selection]
    raise SchemaError(
        f"{role} must be a field name, a list of names or a dict {{input name: field}}. Received: {selection!r}"
    )


def _selected_names(kind: str, value: Any) -> list[str]:
    if kind == "single":
        return [value]
    if kind == "tuple":
        return list(value)
    return list(value.values())


def _pick(kind: str, value: Any, batch: Mapping[str, np.ndarray]) -> Any:
    if kind == "single":
        return batch[value]
    if kind == "tuple":
        return tuple(batch[name] for name in value)
    return {key: batch[name] for key, name in value.items()}


def _gather(column: Any, rows: np.ndarray, ascending: bool, buffers: BufferPool) -> np.ndarray:
    """Rows ``rows`` of one column, in a recycled buffer.

    ``rows`` must be valid row numbers, as :meth:`MemmapSequence.batch_rows` gives,
    and ``ascending`` must say whether they are sorted: neither is checked again
    here (that is the point: this is the hot path).
    """
    if isinstance(column, _padding.BatchField):
        return column.gather(rows, buffers)
    if isinstance(column, (Column, np.ndarray)):
        out = buffers.empty((len(rows), *column.shape[1:]), column.dtype)
        if isinstance(column, Column):
            return column.take(rows, out=out, trusted=ascending)
        # mode="clip" skips numpy's bounds checks: the rows are already valid.
        return np.take(column, rows, axis=0, out=out, mode="clip")
    out = buffers.empty((len(rows), *column.shape[1:]), column.dtype)
    out[...] = column[rows]
    return out


LEGACY_BASES = _legacy_sequence_bases()


class MemmapSequence(keras.utils.PyDataset, *LEGACY_BASES):
    """A Keras dataset of shuffled batches read straight from memory-mapped files.

    Pass it to ``model.fit``, ``evaluate`` or ``predict``. Every epoch it shuffles
    *rows* (each batch is a fresh random set of rows), deterministically from
    ``seed``. Subclass it and override :meth:`augment` to add augmentation; it runs
    inside Keras' worker threads or processes.

    Args:
        data: A dataset path, a :class:`memseq.Dataset`, or a mapping of field
            name -> array-like (``np.ndarray``, ``np.memmap``, :func:`memseq.open_raw`
            results) with equal lengths.
        x: The model inputs: a field name, a list of names (a tuple of inputs), or
            a dict ``{model input name: field name}``.
        y: The targets, selected the same way; ``None`` yields inputs only (predict).
        sample_weight: Optional per-row weights, selected the same way (needs ``y``).
        batch_size: Rows per batch.
        shuffle: ``True`` shuffles rows every epoch; ``False`` serves rows in stored
            (or ``indices``) order; ``"block"`` or ``memseq.BlockShuffle(block_rows,
            window_blocks)`` shuffles blocks of contiguous rows and rows within windows
            of blocks, for data larger than RAM (see :class:`memseq.BlockShuffle`).
        seed: Seed of the epoch orders and of ``augment``'s rng. ``None`` draws one
            now from Python's ``random`` (so ``keras.utils.set_random_seed`` makes it
            repeatable); it is shown in ``repr`` so the run can be repeated.
        drop_remainder: Drop the last batch if it has fewer than ``batch_size`` rows.
        indices: Optional 1-D row indices (or a boolean mask) to serve instead of
            all rows: a train/validation split, for example.
        readahead: Ask the kernel to read the rows of coming batches while this one
            is built, from the known order: ``True`` (up to 256 MiB ahead), ``False``,
            or a number of bytes; ``None`` (default) means on for shuffled orders and
            off for ``shuffle=False`` (the kernel reads a sequential scan ahead by
            itself). Background threads read the coming rows (block orders: whole
            blocks). It never changes what a batch holds, and skips
            batches whose data are already in the page cache.
        padding: How variable-length fields are padded: a :class:`memseq.Padding`
            (pad value, ``max_length``, ``multiple``) for all of them, or a dict
            ``{field: Padding}``; default ``Padding()`` (zeros, to the longest row of
            the batch). For a variable-length field ``"f"``, ``x``/``y`` may also
            select ``"f:lengths"`` (int32 lengths) and ``"f:mask"`` (bool mask).
        workers: Keras worker count (``PyDataset`` option).
        use_multiprocessing: Keras workers are processes instead of threads.
        max_queue_size: Batches Keras keeps ready (``PyDataset`` option).
        hosts: Several hosts training together: ``(num_hosts, host_index)``, ``"jax"``
            or a ``tf.distribute.InputContext``; each host serves its slice of every epoch
            (see :class:`memseq.order.BatchPlan`), every row once over all hosts.

    Raises:
        SchemaError: For unknown fields, unequal lengths, or invalid arguments.
        BatchIndexError: If ``indices`` holds an out-of-range row.
        DatasetNotFoundError, FormatError: If a dataset path cannot be opened.

    Example:
        >>> seq = memseq.MemmapSequence("data/train", x="image", y="label",
        ...                             batch_size=64, seed=0, workers=4,
        ...                             use_multiprocessing=True)
        >>> images, labels = seq[0]
        >>> model.fit(seq, epochs=10, shuffle=False)
    """

    def __init__(
        self,
        data: Any,
        x: Any,
        y: Any = None,
        sample_weight: Any = None,
        *,
        batch_size: int = 32,
        shuffle: Any = True,
        seed: int | None = None,
        drop_remainder: bool = False,
        indices: Any = None,
        readahead: bool | int | None = None,
        padding: Any = None,
        workers: int = 1,
        use_multiprocessing: bool = False,
        max_queue_size: int = 10,
        hosts: Any = None,
    ):
        super().__init__(
            workers=check_int(workers, "workers", 0),
            use_multiprocessing=check_bool(use_multiprocessing, "use_multiprocessing"),
            max_queue_size=check_int(max_queue_size, "max_queue_size", 0),
        )
        columns, self._description = _as_columns(data)
        self.data = columns
        columns = _padding.selectable(columns, padding)
        self.padding = padding
        self._x = _parse_selection(x, "x", columns)
        self._y = None if y is None else _parse_selection(y, "y", columns)
        if sample_weight is not None and y is None:
            raise SchemaError("sample_weight needs y: Keras reads (x, y, sample_weight).")
        self._sw = None if sample_weight is None else _parse_selection(sample_weight, "sample_weight", columns)
        self._selection = (x, y, sample_weight)
        names: list[str] = []
        for part in (self._x, self._y, self._sw):
            if part is not None:
                names += [n for n in _selected_names(*part) if n not in names]
        self._columns = {name: columns[name] for name in names}
        num_source_rows = equal_row_counts(
            {name: column.shape[0] for name, column in self._columns.items()}, "selected fields"
        )
        self.shuffle = shuffle
        row_nbytes = sum(_padding.row_nbytes(c) for c in self._columns.values())
        shuffle = shard_aware_order(shuffle, self.data, row_nbytes)
        self.plan = BatchPlan(
            num_source_rows,
            batch_size,
            shuffle=shuffle,
            # Python's random, so keras.utils.set_random_seed makes a drawn seed repeatable.
            seed=random.getrandbits(32) if seed is None else seed,
            drop_remainder=drop_remainder,
            indices=indices,
            row_nbytes=row_nbytes,
            hosts=resolve_hosts(hosts),
        )
        self._readahead = BatchReadahead.for_plan(readahead, self.plan, self._columns.values(), row_nbytes)
        # A dataset at a URL: its shards are downloaded ahead, in the order each epoch needs them.
        remote = remote_files_of(self.data)
        self._remote = None if remote is None else ShardPrefetcher(remote, self.plan)
        if not remote_order_cost(self.data, shuffle, row_nbytes) and self._remote is not None:
            self._remote.check_cache(stacklevel=2)  # a ShardShuffle window larger than cache_limit
        self.readahead = self._readahead.bound_bytes if self._readahead else 0
        self.seed = self.plan.seed
        self.batch_size = self.plan.batch_size
        self.drop_remainder = self.plan.drop_remainder
        # Only call augment (and build its rng) when a subclass overrides it.
        self._augments = type(self).augment is not MemmapSequence.augment
        self._epoch = 0
        # Batch arrays are recycled once nothing references them (see memseq.batching.buffers).
        self._buffers = BufferPool()
        self.plan.permutation(0)  # computed now, so forked workers inherit it

    def __getattr__(self, name: str) -> Any:
        # Only reached when normal lookup fails: in a subclass whose __init__ forgot
        # super().__init__, every attribute this class sets is missing.
        if "plan" not in self.__dict__ and not name.startswith("__"):
            raise AttributeError(
                f"{type(self).__name__} has no attribute {name!r}: its __init__ did not call "
                "MemmapSequence.__init__. Add `super().__init__(data, x=..., y=..., **kwargs)` "
                f"to {type(self).__name__}.__init__."
            )
        raise AttributeError(f"{type(self).__name__!r} object has no attribute {name!r}")

    # -- epochs

    @property
    def epoch(self) -> int:
        """The epoch being served (0 for a new sequence)."""
        return self._epoch

    def set_epoch(self, epoch: int) -> None:
        """Serves epoch ``epoch`` from now on (to resume a run).

        Args:
            epoch: The epoch number, >= 0.

        Example:
            >>> seq.set_epoch(initial_epoch)
            >>> model.fit(seq, initial_epoch=initial_epoch, epochs=10, shuffle=False)
        """
        self._epoch = check_int(epoch, "epoch", 0)
        self.plan.permutation(self._epoch)

    def on_epoch_end(self) -> None:
        """Advances to the next epoch (a new shuffle). Keras calls this.

        Under ``fit`` the epoch served is set from Keras' epoch number when each epoch
        begins, so how often this hook is called never changes what is served.
        """
        self.set_epoch(self._epoch + 1)

    def serve_order(self, epoch: int, batches: Any) -> None:
        """Tells readahead that ``epoch``'s batches will be asked for in the order ``batches`` (fit's batch shuffle)."""
        if self._remote is not None:
            self._remote.set_order(epoch, batches)

    # -- batches

    def __len__(self) -> int:
        return self.plan.num_batches

    @property
    def num_rows(self) -> int:
        """Rows served per epoch (before ``drop_remainder``)."""
        return self.plan.num_rows

    @property
    def fields(self) -> dict[str, tuple[np.dtype, tuple[int, ...]]]:
        """The selected fields: name -> (dtype, row shape), as read from the data."""
        return {name: (np.dtype(c.dtype), tuple(c.shape[1:])) for name, c in self._columns.items()}

    def batch_rows(self, index: int, epoch: int | None = None) -> np.ndarray:
        """The row numbers of batch ``index`` of ``epoch`` (default: the current epoch).

        With ``shuffle=True`` the rows of a batch are returned in ascending order:
        the batch is still a uniformly random set of rows, and ascending reads are
        kinder to the page cache and the disk.

        Raises:
            BatchIndexError: If ``index`` is out of range.
        """
        index = self.plan.check_index(index)
        epoch = self._epoch if epoch is None else check_int(epoch, "epoch", 0)
        return self.plan.batch_rows(index, epoch)

    def get_batch(self, index: int, epoch: int | None = None) -> Any:
        """Batch ``index`` of ``epoch`` (default: the current one), augmented.

        The same ``(seed, epoch, index)`` always gives the same batch. The
        sequence's own epoch is not changed.

        Returns:
            ``(x, y)``, ``(x, y, sample_weight)``, or ``(x,)`` when ``y`` is None
            (a dict ``x`` on its own, as Keras does); each part is an array, a
            tuple of arrays or a dict of arrays, as selected by ``x``, ``y`` and
            ``sample_weight``.
        """
        # get_fields checks the index and the epoch.
        return self.pack(self.get_fields(index, self._epoch if epoch is None else epoch))

    def get_fields(self, index: int, epoch: int) -> dict[str, np.ndarray]:
        """Batch ``index`` of ``epoch`` as a dict of field name -> array, after :meth:`augment`.

        Every array is C-contiguous and 64-byte aligned, so TensorFlow and JAX can
        use it without a copy; memseq reuses its memory only once nothing
        references it any more.

        Args:
            index: The batch index (negative counts from the end).
            epoch: The epoch, >= 0.

        Returns:
            Field name -> array, for every selected field.

        Raises:
            BatchIndexError: If ``index`` is out of range.
            SchemaError: If a subclass's ``augment`` does not return the batch dict.
        """
        index = self.plan.check_index(index)
        epoch = check_int(epoch, "epoch", 0)  # before readahead is asked for anything
        if self._readahead is not None:
            self._readahead.ask(index, epoch)
        if self._remote is not None:
            self._remote.ask(index, epoch)
        return self._build(self.plan.batch_rows(index, epoch), epoch, index, None)

    def get_share(self, index: int, epoch: int, replica: int, num_replicas: int) -> dict[str, np.ndarray]:
        """Replica ``replica``'s share of global batch ``index`` of ``epoch``, after :meth:`augment`.

        For distributed input: the share is ``batch_rows(index, epoch)[replica::num_replicas]``
        (see :meth:`memseq.order.BatchPlan.replica_rows`), augmented with its own rng
        (seeded from ``(seed, epoch, index, replica)``). Arrays as in :meth:`get_fields`.

        Args:
            index: The global batch index.
            epoch: The epoch, >= 0.
            replica: The replica, in ``[0, num_replicas)``.
            num_replicas: Replicas in sync.

        Returns:
            Field name -> array, for every selected field.
        """
        index = self.plan.check_index(index)
        epoch = check_int(epoch, "epoch", 0)  # before readahead is asked for anything
        if self._readahead is not None:
            self._readahead.ask(index, epoch, (replica, num_replicas))
        if self._remote is not None:
            self._remote.ask(index, epoch, (replica, num_replicas))
        rows = self.plan.replica_rows(self.plan.batch_rows(index, epoch), replica, num_replicas)
        return self._build(rows, epoch, index, replica)

    def _build(self, rows: np.ndarray, epoch: int, index: int, replica: int | None) -> dict[str, np.ndarray]:
        batch = self._read_rows(rows)
        if not self._augments:
            return batch
        out = self.augment(batch, np.random.default_rng(self.plan.rng_key(epoch, index, replica)))
        if not isinstance(out, Mapping) or any(name not in out for name in self._columns):
            raise SchemaError(
                f"{type(self).__name__}.augment must return the batch dict with the fields "
                f"{list(self._columns)}. Received: {type(out).__name__}"
                + (f" with keys {list(out)}" if isinstance(out, Mapping) else "")
            )
        return {name: self._aligned(name, value) for name, value in out.items()}

    def _aligned(self, name: str, value: Any) -> np.ndarray:
        """An augmented field as a C-contiguous, 64-byte-aligned numpy array.

        TensorFlow wraps an aligned array without copying; otherwise it copies the
        batch while holding the GIL, stalling every other pipeline thread (measured:
        3,100 vs 7,700 batches/s of 3 MiB). numpy releases the GIL while it copies.
        """
        if not isinstance(value, np.ndarray):
            # Array-likes (a tf.Tensor, a jax array) are converted; anything else is a mistake.
            if not hasattr(value, "__array__") or np.ndim(value) < 1:
                raise SchemaError(
                    f"{type(self).__name__}.augment must return numpy arrays with a batch dimension. "
                    f"Field {name!r} is a {type(value).__name__}."
                )
            value = np.asarray(value)
        if value.flags.c_contiguous and value.ctypes.data % ALIGN == 0:
            return value
        out = self._buffers.empty(value.shape, value.dtype)
        np.copyto(out, value)
        return out

    def _read_rows(self, rows: np.ndarray) -> dict[str, np.ndarray]:
        """The selected fields' values at ``rows`` (valid row numbers from :meth:`batch_rows`), not augmented."""
        ascending = self.plan.order.sorts_batches or is_sorted(rows)
        return {name: _gather(column, rows, ascending, self._buffers) for name, column in self._columns.items()}

    def pack(self, batch: Mapping[str, Any]) -> Any:
        """Arranges a dict of fields into the structure of ``seq[i]``.

        Args:
            batch: Field name -> value, for every selected field (as :meth:`get_fields` returns).

        Returns:
            ``(x, y)``, ``(x, y, sample_weight)``, or ``(x,)`` when ``y`` is None (a
            dict ``x`` on its own); each part a value, a tuple or a dict, as selected by
            ``x``, ``y`` and ``sample_weight``.

        Example:
            >>> seq.pack(seq.get_fields(0, epoch=0))   # == seq.get_batch(0, epoch=0)
        """
        x = _pick(*self._x, batch)
        if self._y is None:
            # A dict of inputs as it is, as Keras' PyDataset returns it; anything else
            # in a 1-tuple: Keras reads a bare tuple of inputs as (x, y, ...).
            return x if self._x[0] == "dict" else (x,)
        y = _pick(*self._y, batch)
        if self._sw is None:
            return x, y
        return x, y, _pick(*self._sw, batch)

    def __getitem__(self, index: int) -> Any:
        return self.get_batch(index)

    def augment(self, batch: dict[str, np.ndarray], rng: np.random.Generator) -> dict[str, np.ndarray]:
        """Transforms one batch; override it to add augmentation. Identity by default.

        Called once per batch inside Keras' workers, with this batch's rows of every
        selected field. Use only ``rng`` for randomness (never ``np.random``'s
        global state: Keras does not reseed workers, so it would repeat across
        them): it is seeded from ``(seed, epoch, batch index)``, so results do not
        depend on worker count, worker kind or scheduling.

        Args:
            batch: Field name -> numpy array of this batch's rows (fresh arrays you
                may modify in place).
            rng: A ``numpy.random.Generator`` for this batch.

        Returns:
            The batch dict (the same or a new one) with every selected field.

        Example:
            >>> class Flipped(memseq.MemmapSequence):
            ...     def augment(self, batch, rng):
            ...         batch["image"] = memseq.augment.random_flip(batch["image"], rng)
            ...         return batch
        """
        return batch

    def to_tf_dataset(self, **kwargs: Any) -> Any:
        """This sequence's batches as a ``tf.data.Dataset`` (see :func:`memseq.adapters.tf_data.to_tf_dataset`).

        Same batches in the same order as the sequence for the same seed and
        epoch. The first iteration serves the current epoch, each further
        iteration (each ``fit`` epoch) the next one; the sequence is not modified.
        Batches are built in parallel by tf.data threads, ``augment`` included.

        Args:
            **kwargs: Keyword arguments of :func:`memseq.adapters.tf_data.to_tf_dataset`:
                ``output_signature`` (for an ``augment`` that changes dtypes or
                shapes), ``deterministic``, ``input_context`` (distributed input),
                ``epoch``, ``num_parallel_calls``, ``ragged``.

        Returns:
            A ``tf.data.Dataset`` whose elements have the structure of ``seq[i]``:
            ``(x, y)``, ``(x, y, sample_weight)``, or ``(x,)`` when ``y`` is None.

        Example:
            >>> seq = memseq.MemmapSequence("data/train", x="image", y="label", batch_size=256, seed=0)
            >>> model.fit(seq.to_tf_dataset(), epochs=3)
        """
        from memseq.adapters import (
            tf_data,  # the one allowed upward import (see tests/test_import.py)
        )

        return tf_data.to_tf_dataset(self, **kwargs)

    def to_grain(self, **kwargs: Any) -> Any:
        """This sequence's batches as a ``grain.MapDataset`` (see :func:`memseq.adapters.grain.to_grain`).

        Item ``k`` is batch ``k % len(seq)`` of epoch ``seq.epoch + k // len(seq)``,
        exactly ``seq.get_batch`` (augmentation included); endless by default.

        Example:
            >>> model.fit(seq.to_grain(), steps_per_epoch=len(seq), epochs=3)
        """
        from memseq.adapters import grain as _grain

        return _grain.to_grain(self, **kwargs)

    # Pickling: by reference. Columns pickle as file paths, the plan without its
    # permutation cache (recomputed in the worker), the buffer pool empty.

    def __repr__(self) -> str:
        x, y, sw = self._selection
        parts = [f"data={self._description}", f"x={x!r}", f"y={y!r}"]
        if sw is not None:
            parts.append(f"sample_weight={sw!r}")
        parts += [
            f"batch_size={self.batch_size}",
            f"shuffle={self.shuffle!r}",
            f"seed={self.seed}",
            f"drop_remainder={self.drop_remainder}",
            f"rows={self.plan.num_rows}",
            f"batches={self.plan.num_batches}",
            f"epoch={self._epoch}",
            f"workers={self._workers}",
            f"use_multiprocessing={self._use_multiprocessing}",
        ]
        return f"{type(self).__name__}({', '.join(parts)})"

