"""Epoch orders: which rows each batch of each epoch holds.

An order is a pure function of ``(seed, epoch)``: nothing depends on how many
workers run, on which process asks, or on what was read before. That is what
makes augmentation reproducible across thread and process workers and lets a run
resume exactly.

Randomness is never global: the permutation of epoch ``e`` comes from
``np.random.default_rng([seed, e])``. ``tests/test_order.py`` pins the order for one
seed, so it never drifts silently between releases.

Orders are objects with a ``permutation(num_rows, seed, epoch)`` method, so that a
block-wise shuffle for data larger than RAM (shuffle blocks of contiguous rows,
then rows inside a window of blocks) can be added later as one more order, chosen
by a new value of ``MemmapSequence(shuffle=...)``, without changing callers.

:class:`BatchPlan` is the one place that answers "which rows, in which batch, for
which replica, with which rng": it validates a subset (``indices``), caches the
epoch permutations, cuts them into batches (sorted when the order allows), deals a
batch's rows to replicas for distributed input, and gives each batch's rng key.
:class:`~memseq.MemmapSequence` and the tf.data adapter consume it; neither
re-derives any of it.
"""

from __future__ import annotations

import dataclasses
import operator
import threading
from typing import Any

import numpy as np

from memseq._checks import check_int, row_indices
from memseq.errors import BatchIndexError, SchemaError

__all__ = [
    "BatchPlan",
    "EpochOrder",
    "FullShuffle",
    "ReplicaShare",
    "Sequential",
    "num_batches",
    "replica_share",
    "resolve_shuffle",
]


class EpochOrder:
    """Base class of epoch orders.

    Attributes:
        sorts_batches: Whether rows inside a batch may be sorted ascending. True for
            random orders: a batch is then still a uniformly random set of rows, and
            ascending reads are friendlier to the page cache and the disk.
    """

    sorts_batches: bool = False

    def permutation(self, num_rows: int, seed: int, epoch: int) -> np.ndarray:
        """Returns the order of positions ``0..num_rows-1`` for this epoch.

        Args:
            num_rows: How many positions to order.
            seed: The sequence's seed.
            epoch: The epoch number (>= 0).

        Returns:
            A 1-D integer array, a permutation of ``range(num_rows)``.
        """
        raise NotImplementedError


@dataclasses.dataclass(frozen=True)
class Sequential(EpochOrder):
    """Rows in their stored order, the same every epoch (``shuffle=False``)."""

    def permutation(self, num_rows: int, seed: int, epoch: int) -> np.ndarray:
        return np.arange(num_rows, dtype=_index_dtype(num_rows))


@dataclasses.dataclass(frozen=True)
class FullShuffle(EpochOrder):
    """A fresh uniform permutation of all rows every epoch (``shuffle=True``)."""

    sorts_batches = True

    def permutation(self, num_rows: int, seed: int, epoch: int) -> np.ndarray:
        rng = np.random.default_rng([seed, epoch])
        # int32 halves the memory of the permutation for up to 2**31 rows.
        return rng.permutation(np.arange(num_rows, dtype=_index_dtype(num_rows)))


def _index_dtype(num_rows: int) -> type:
    return np.int32 if num_rows < 2**31 else np.int64


def resolve_shuffle(shuffle: Any) -> EpochOrder:
    """Turns a ``shuffle=`` argument into an :class:`EpochOrder`.

    Args:
        shuffle: ``True`` (shuffle rows every epoch), ``False`` (stored order),
            or an :class:`EpochOrder` instance.

    Returns:
        The order.

    Raises:
        SchemaError: For any other value.
    """
    if shuffle is True or (isinstance(shuffle, np.bool_) and bool(shuffle)):
        return FullShuffle()
    if shuffle is False or (isinstance(shuffle, np.bool_) and not bool(shuffle)):
        return Sequential()
    if isinstance(shuffle, EpochOrder):
        return shuffle
    raise SchemaError(
        f"shuffle must be True (shuffle rows every epoch) or False (stored order). Received: {shuffle!r}"
    )


def num_batches(num_rows: int, batch_size: int, drop_remainder: bool) -> int:
    """Number of batches for ``num_rows`` rows: the last partial one kept unless ``drop_remainder``."""
    if drop_remainder:
        return num_rows // batch_size
    return -(-num_rows // batch_size)


@dataclasses.dataclass(frozen=True)
class ReplicaShare:
    """Which replicas' shares of every global batch one input pipeline serves.

    Attributes:
        first_replica: The first replica this pipeline serves.
        replicas_per_pipeline: How many consecutive replicas it serves.
        num_replicas: Replicas in sync across all pipelines.
    """

    first_replica: int
    replicas_per_pipeline: int
    num_replicas: int

    def element(self, element: int) -> tuple[int, int]:
        """``(global batch index, replica)`` of this pipeline's ``element``-th element."""
        index, offset = divmod(element, self.replicas_per_pipeline)
        return index, self.first_replica + offset


def replica_share(batch_size: int, num_replicas: int, num_pipelines: int, pipeline_id: int) -> ReplicaShare:
    """The share of input pipeline ``pipeline_id`` when ``num_replicas`` replicas train in sync.

    Args:
        batch_size: The global batch size; must divide by ``num_replicas``.
        num_replicas: Replicas in sync (``input_context.num_replicas_in_sync``).
        num_pipelines: Input pipelines (``input_context.num_input_pipelines``).
        pipeline_id: This pipeline (``input_context.input_pipeline_id``).

    Returns:
        The :class:`ReplicaShare`: pipeline ``p`` serves replicas
        ``p * R/P ... (p+1) * R/P - 1``.

    Raises:
        SchemaError: If replicas do not split evenly over pipelines, or the batch
            size does not divide by the number of replicas.
    """
    if num_replicas < 1 or num_pipelines < 1 or num_replicas % num_pipelines or not 0 <= pipeline_id < num_pipelines:
        raise SchemaError(
            f"input_context: {num_replicas} replicas do not split evenly over {num_pipelines} input pipelines "
            f"(pipeline id {pipeline_id})."
        )
    if batch_size % num_replicas:
        raise SchemaError(
            f"With input_context, the sequence's batch_size is the global batch size and must divide by the "
            f"number of replicas ({num_replicas}). Received: batch_size={batch_size}"
        )
    per_pipeline = num_replicas // num_pipelines
    return ReplicaShare(pipeline_id * per_pipeline, per_pipeline, num_replicas)


class BatchPlan:
    """Which rows every batch of every epoch holds, and the rng key of each batch.

    A pure function of its arguments and ``(epoch, batch index)``: the same in every
    thread and process. Pickles without its permutation cache (a few bytes plus
    ``indices``).

    Args:
        num_source_rows: Rows in the data.
        batch_size: Rows per batch (the global batch size for distributed input).
        shuffle: ``True``, ``False`` or an :class:`EpochOrder` (see :func:`resolve_shuffle`).
        seed: Seed of the orders and of the rng keys, an int >= 0.
        drop_remainder: Drop a last batch with fewer than ``batch_size`` rows.
        indices: Optional subset: 1-D row indices (no negatives) or a boolean mask.

    Raises:
        SchemaError: For invalid arguments, or when there would be no batch.
        BatchIndexError: If ``indices`` holds an out-of-range row.

    Example:
        >>> plan = BatchPlan(1000, 64, shuffle=True, seed=0)
        >>> plan.batch_rows(0, epoch=3)[:3]
        array([ 12,  40, 113])
    """

    def __init__(
        self,
        num_source_rows: int,
        batch_size: int,
        *,
        shuffle: Any = True,
        seed: int = 0,
        drop_remainder: bool = False,
        indices: Any = None,
    ):
        self.batch_size = check_int(batch_size, "batch_size", 1)
        if not isinstance(drop_remainder, (bool, np.bool_)):
            raise SchemaError(f"drop_remainder must be True or False. Received: {drop_remainder!r}")
        self.drop_remainder = bool(drop_remainder)
        self.order = resolve_shuffle(shuffle)
        self.seed = check_int(seed, "seed", 0)
        self.num_source_rows = int(num_source_rows)
        self.indices = None
        if indices is not None:
            self.indices, _ = row_indices(
                indices, self.num_source_rows, what="indices", allow_negative=False, invalid=SchemaError
            )
        self.num_rows = self.num_source_rows if self.indices is None else len(self.indices)
        self.num_batches = num_batches(self.num_rows, self.batch_size, self.drop_remainder)
        if self.num_batches == 0:
            raise SchemaError(
                f"No batches: {self.num_rows} rows with batch_size={self.batch_size}"
                f"{' and drop_remainder=True' if self.drop_remainder else ''}."
            )
        self._lock = threading.Lock()
        self._permutations: dict[int, np.ndarray] = {}
        self._recent = 0

    def permutation(self, epoch: int) -> np.ndarray:
        """The order of positions ``0..num_rows-1`` in ``epoch``, cached.

        The cache keeps the most recently asked epoch and its neighbours (tf.data
        pipelines may run ahead into the next epoch).
        """
        perm = self._permutations.get(epoch)
        if perm is None:
            with self._lock:
                perm = self._permutations.get(epoch)
                if perm is None:
                    perm = self.order.permutation(self.num_rows, self.seed, epoch)
                    while len(self._permutations) >= 3:
                        farthest = max(self._permutations, key=lambda e: abs(e - self._recent))
                        del self._permutations[farthest]
                    self._permutations[epoch] = perm
        self._recent = epoch
        return perm

    def check_index(self, index: Any) -> int:
        """``index`` as a batch index in ``[0, num_batches)``; negative ones count from the end.

        Raises:
            TypeError: If ``index`` is not an integer.
            BatchIndexError: If it is out of range.
        """
        try:
            i = operator.index(index)
        except TypeError:
            raise TypeError(f"Batch indices must be integers. Received: {index!r}") from None
        if not -self.num_batches <= i < self.num_batches:
            raise BatchIndexError(f"Batch index {i} is out of range: this sequence has {self.num_batches} batches.")
        return i % self.num_batches

    def batch_rows(self, index: int, epoch: int) -> np.ndarray:
        """The row numbers (int64) of batch ``index`` (already checked) of ``epoch``.

        Sorted ascending when the order allows it (random orders): the batch is still
        the same random set of rows, and ascending reads are kinder to the disk.
        """
        start = index * self.batch_size
        positions = self.permutation(epoch)[start : start + self.batch_size]
        rows = positions if self.indices is None else self.indices[positions]
        if self.order.sorts_batches:
            rows = np.sort(rows)
        return rows.astype(np.int64, copy=False)

    @staticmethod
    def replica_rows(rows: np.ndarray, replica: int, num_replicas: int) -> np.ndarray:
        """Replica ``replica``'s share of a global batch's ``rows``: ``rows[replica::num_replicas]``.

        Dealt round-robin from ascending rows, so each share is a random subset spread
        over the whole row range, and the shares of all replicas are the batch.
        """
        return rows[replica::num_replicas]

    def rng_key(self, epoch: int, index: int, replica: int | None = None) -> list[int]:
        """The seed of batch ``index`` of ``epoch`` (of one replica's share) for ``augment``'s rng."""
        key = [self.seed, epoch, index]
        return key if replica is None else [*key, replica]

    def __getstate__(self) -> dict[str, Any]:
        state = self.__dict__.copy()
        del state["_lock"]
        state["_permutations"] = {}
        return state

    def __setstate__(self, state: dict[str, Any]) -> None:
        self.__dict__.update(state)
        self._lock = threading.Lock()
