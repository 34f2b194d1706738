"""Epoch orders: which rows each batch of each epoch holds.

An order is a pure function of ``(seed, epoch)``: nothing depends on how many
workers run, on which process asks, or on what was read before. That is what
makes augmentation reproducible across thread and process workers and lets a run
resume exactly.

Randomness is never global: the permutation of epoch ``e`` comes from
``np.random.default_rng([seed, e])``. ``tests/test_order.py`` pins the order for one
seed, so it never drifts silently between releases.

Orders are objects with a ``permutation(num_rows, seed, epoch)`` method:
:class:`Sequential` (``shuffle=False``), :class:`FullShuffle` (``shuffle=True``) and
:class:`BlockShuffle` (``shuffle=memseq.BlockShuffle(...)`` or ``shuffle="block"``),
the order for data larger than RAM: it shuffles blocks of contiguous rows, then rows
inside a window of consecutive blocks, so that an epoch reads each block once, in
large sequential pieces, while batches still mix rows from many places.
:class:`ShardShuffle` is the same with a dataset's shards as the blocks, for datasets in
object storage. :class:`LengthBuckets` (``shuffle=memseq.LengthBuckets(ds["tokens"])``)
batches rows of similar length together, to cut the padding of variable-length fields.

:class:`BatchPlan` is the one place that answers "which rows, in which batch, for
which replica, with which rng": it validates a subset (``indices``), caches the
epoch permutations, gives each host its slice of them, cuts them into batches (sorted
when the order allows), deals a batch's rows to replicas for distributed input, and gives each batch's rng key.
:class:`~memseq.MemmapSequence` and the tf.data adapter consume it; neither
re-derives any of it.
"""

from __future__ import annotations

import copy
import dataclasses
import operator
import threading
from typing import Any

import numpy as np

from memseq.errors import BatchIndexError, SchemaError
from memseq.util import forksafe as _forksafe
from memseq.util.checks import INT64_MAX, bounded_repr, check_bool, check_int, row_indices

__all__ = ["BatchPlan", "BlockShuffle", "EpochOrder", "FullShuffle", "LengthBuckets", "ReplicaShare", "Sequential",
           "ShardShuffle", "num_batches", "replica_share", "resolve_shuffle"]


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

    def bind(self, num_source_rows: int, batch_size: int, indices: np.ndarray | None) -> "EpochOrder":
        """This order as used by one :class:`BatchPlan`: the plan calls it once.

        Orders that depend only on ``(num_rows, seed, epoch)`` return themselves; an
        order that needs the batch size or which rows are served (such as
        :class:`LengthBuckets`) returns a copy that knows them.

        Args:
            num_source_rows: Rows in the data.
            batch_size: Rows per batch.
            indices: The rows served (a subset), or None for all rows.
        """
        return self

    def for_hosts(self, num_hosts: int) -> "EpochOrder":
        """This order when each epoch is cut into ``num_hosts`` contiguous, near-equal slices, one per host.

        :class:`BatchPlan` calls it once, after :meth:`bind`, and host ``h`` serves
        positions ``[num_rows * h // num_hosts, num_rows * (h + 1) // num_hosts)`` of
        each epoch's order. Orders that mix rows inside windows of blocks return a copy
        whose windows end at these cuts, so that no window's blocks are read by two
        hosts; other orders return themselves.
        """
        return self


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


@dataclasses.dataclass(frozen=True)
class BlockShuffle(EpochOrder):
    """Shuffle blocks of contiguous rows, then rows inside windows of consecutive blocks.

    Epoch ``e``: the ``ceil(num_rows / block_rows)`` blocks of ``block_rows``
    contiguous rows are put in a random order; the rows of every ``window_blocks``
    consecutive blocks of that order (a window) are then shuffled together. Every row
    appears once per epoch; the order is a pure function of ``(seed, epoch)``; memory
    beyond the permutation itself is one window of rows.

    Each batch then draws its rows from the ``window_blocks`` blocks of one window (two
    at a window boundary), and the blocks of a window are read once, sequentially,
    instead of rows from anywhere in the file: far fewer, far larger reads. What it
    gives up against a full shuffle is measured in ``benchmarks/bench_cold.py``
    (distinct blocks per batch, correlation of a row's file position with its
    position in the epoch). With readahead, memseq reads a window's blocks ahead whole.

    Args:
        block_rows: Rows per block (>= 1). Blocks of a few MiB make reads large.
        window_blocks: Blocks whose rows are mixed together (>= 1). Larger windows mix
            better and need more page cache (``block_rows * window_blocks`` rows).

    Example:
        >>> seq = memseq.MemmapSequence("data/train", x="image", y="label", batch_size=64,
        ...                             shuffle=memseq.BlockShuffle(block_rows=512, window_blocks=32))
    """

    block_rows: int = 512
    window_blocks: int = 32
    sorts_batches = True

    def __post_init__(self) -> None:
        check_int(self.block_rows, "block_rows", 1)
        check_int(self.window_blocks, "window_blocks", 1)

    def permutation(self, num_rows: int, seed: int, epoch: int) -> np.ndarray:
        dtype = _index_dtype(num_rows)
        rng = np.random.default_rng([seed, epoch])
        num_blocks = -(-num_rows // self.block_rows)
        starts = rng.permutation(num_blocks).astype(np.int64) * self.block_rows
        lengths = np.minimum(self.block_rows, num_rows - starts)
        # Rows of the blocks in block order: start of the row's block + offset in it.
        ends = np.cumsum(lengths)
        offsets = np.arange(num_rows, dtype=np.int64) - np.repeat(ends - lengths, lengths)
        positions = (np.repeat(starts, lengths) + offsets).astype(dtype)
        return _shuffle_windows(rng, positions, ends, self.window_blocks, self.__dict__.get("_num_hosts", 1))

    def for_hosts(self, num_hosts: int) -> "BlockShuffle":
        return _with_hosts(self, num_hosts)


def _shuffle_windows(
    rng: np.random.Generator, positions: np.ndarray, ends: np.ndarray, window: int, num_hosts: int = 1
) -> np.ndarray:
    """Shuffles ``positions`` in place inside windows of ``window`` consecutive blocks (blocks end at ``ends``).

    With ``num_hosts > 1`` the positions are first cut into the hosts' slices (see
    :meth:`EpochOrder.for_hosts`); windows are counted from each slice's start and end
    at its end, so a block cut in two counts as a block of each slice.
    """
    num_rows = len(positions)
    begin = 0
    for h in range(1, num_hosts + 1):
        cut = num_rows * h // num_hosts
        inner = ends[np.searchsorted(ends, begin, side="right") : np.searchsorted(ends, cut, side="left")]
        window_ends = [*inner[window - 1 :: window].tolist(), cut]
        for end in window_ends:
            if end > begin:
                rng.shuffle(positions[begin:end])
                begin = end
    return positions


def _with_hosts(order: EpochOrder, num_hosts: int) -> EpochOrder:
    # A copy keeps what bind() stored beside the dataclass fields.
    bound = copy.copy(order)
    object.__setattr__(bound, "_num_hosts", check_int(num_hosts, "num_hosts", 1))
    return bound


@dataclasses.dataclass(frozen=True)
class ShardShuffle(EpochOrder):
    """Shuffle whole shards, then rows inside windows of consecutive shards: a block shuffle aligned to shards.

    Like :class:`BlockShuffle` with the dataset's shards as the blocks. Made for
    datasets in object storage whose local cache is smaller than the dataset: at any
    time an epoch needs only the ``window_shards`` shards of one window (and the next,
    prefetched), so each shard is downloaded once per epoch, and with several hosts
    each host downloads about its share. A full shuffle needs every shard in every
    batch, so it works only when the cache holds the whole dataset.

    Args:
        window_shards: Shards whose rows are mixed together (>= 1).
        part_rows: Rows of each shard, in order. :class:`~memseq.MemmapSequence` fills
            them in from its :class:`~memseq.Dataset`; give them for other data.

    Example:
        >>> ds = memseq.open("s3://bucket/train", cache_limit="50GB")
        >>> seq = memseq.MemmapSequence(ds, x="image", y="label", batch_size=256,
        ...                             shuffle=memseq.ShardShuffle(window_shards=8))
    """

    window_shards: int = 4
    part_rows: tuple[int, ...] | None = None
    sorts_batches = True

    def __post_init__(self) -> None:
        check_int(self.window_shards, "window_shards", 1)
        if self.part_rows is not None:
            object.__setattr__(self, "part_rows", tuple(check_int(n, "part_rows", 0) for n in self.part_rows))

    def bind(self, num_source_rows: int, batch_size: int, indices: np.ndarray | None) -> "ShardShuffle":
        if self.part_rows is None:
            raise SchemaError("ShardShuffle needs the rows of each shard: use it with a memseq.Dataset, or give part_rows.")
        if sum(self.part_rows) != num_source_rows:
            raise SchemaError(
                f"ShardShuffle: part_rows add up to {sum(self.part_rows)} rows but the data have {num_source_rows}."
            )
        starts = np.cumsum((0, *self.part_rows), dtype=np.int64)
        rows = np.arange(num_source_rows, dtype=np.int64) if indices is None else np.asarray(indices, np.int64)
        shard = np.searchsorted(starts, rows, side="right") - 1
        bound = dataclasses.replace(self)
        # The positions of each shard's rows, shard by shard, and how many each shard has.
        object.__setattr__(bound, "_members", np.argsort(shard, kind="stable"))
        object.__setattr__(bound, "_lengths", np.bincount(shard, minlength=len(self.part_rows)).astype(np.int64))
        return bound

    def permutation(self, num_rows: int, seed: int, epoch: int) -> np.ndarray:
        members, lengths = self.__dict__["_members"], self.__dict__["_lengths"]  # set by bind
        rng = np.random.default_rng([seed, epoch])
        order = rng.permutation(len(lengths))
        firsts = np.cumsum(lengths) - lengths
        sizes = lengths[order]
        ends = np.cumsum(sizes)
        within = np.arange(num_rows, dtype=np.int64) - np.repeat(ends - sizes, sizes)
        positions = members[np.repeat(firsts[order], sizes) + within].astype(_index_dtype(num_rows))
        return _shuffle_windows(rng, positions, ends, self.window_shards, self.__dict__.get("_num_hosts", 1))

    def for_hosts(self, num_hosts: int) -> "ShardShuffle":
        return _with_hosts(self, num_hosts)


def block_shuffle_for(row_nbytes: int) -> BlockShuffle:
    """The measured defaults of ``shuffle="block"`` for rows of ``row_nbytes`` bytes.

    Blocks of about 4 MiB, 64 of them per window (256 MiB of page cache; each batch
    mixes rows from 64 places of the file): larger blocks read no faster cold, and
    the smallest block mixes best (figures: ``docs/performance.md``, "Readahead and
    buffers: measurements behind the design").
    """
    block_rows = max(1, _BLOCK_BYTES // max(1, int(row_nbytes)))
    return BlockShuffle(block_rows=block_rows, window_blocks=_WINDOW_BLOCKS)


_BLOCK_BYTES = 4 * 2**20
_WINDOW_BLOCKS = 64


def _index_dtype(num_rows: int) -> type:
    return np.int32 if num_rows < 2**31 else np.int64


def resolve_shuffle(shuffle: Any, row_nbytes: int = 0) -> EpochOrder:
    """Turns a ``shuffle=`` argument into an :class:`EpochOrder`.

    Args:
        shuffle: ``True`` (shuffle rows every epoch), ``False`` (stored order),
            ``"block"`` (a :class:`BlockShuffle` with defaults measured for rows of
            ``row_nbytes`` bytes), or an :class:`EpochOrder` instance.
        row_nbytes: Bytes per row (all selected fields), for ``"block"``.

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
    if isinstance(shuffle, str) and shuffle == "block":
        return block_shuffle_for(row_nbytes)
    raise SchemaError(
        "shuffle must be True (shuffle rows every epoch), False (stored order), \"block\" or "
        f"memseq.BlockShuffle(...) (block shuffle, for data larger than RAM). Received: {bounded_repr(shuffle)}"
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
    if num_replicas < 1 or num_pipelines < 1:
        raise SchemaError(
            f"input_context: needs at least 1 replica and 1 input pipeline. Received: num_replicas_in_sync="
            f"{num_replicas}, num_input_pipelines={num_pipelines}"
        )
    if not 0 <= pipeline_id < num_pipelines:
        raise SchemaError(
            f"input_context: input pipeline id {pipeline_id} is out of range for {num_pipelines} input pipelines "
            f"(ids 0 to {num_pipelines - 1})."
        )
    if num_replicas % num_pipelines:
        raise SchemaError(
            f"input_context: {num_replicas} replicas do not split evenly over {num_pipelines} input pipelines."
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
        row_nbytes: Bytes per row of the data read, for ``shuffle="block"``'s defaults.
        hosts: ``(num_hosts, host_index)``: this host serves the ``host_index``-th of
            ``num_hosts`` contiguous, near-equal slices of each epoch's order (hosts'
            row counts differ by at most one), so every row is served once per epoch
            over all hosts; with :class:`ShardShuffle` (or :class:`BlockShuffle`) no
            window is shared by two hosts, so a host reads its ``1/num_hosts`` of the
            shards plus at most the one it shares with each neighbour. Batches are this host's (``batch_size`` rows each).

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
        row_nbytes: int = 0,
        hosts: tuple[int, int] = (1, 0),
    ):
        self.batch_size = check_int(batch_size, "batch_size", 1)
        self.drop_remainder = check_bool(drop_remainder, "drop_remainder")
        self.order = resolve_shuffle(shuffle, row_nbytes)
        self.seed = check_int(seed, "seed", 0)
        self.num_source_rows = int(num_source_rows)
        self.indices = None
        if indices is not None:
            self.indices, _ = row_indices(
                indices, self.num_source_rows, what="indices", allow_negative=False, invalid=SchemaError
            )
        self.order = self.order.bind(self.num_source_rows, self.batch_size, self.indices)
        self.epoch_rows = self.num_source_rows if self.indices is None else len(self.indices)
        num_hosts = check_int(hosts[0], "num_hosts", 1)
        self.hosts = (num_hosts, check_int(hosts[1], "host_index", 0, maximum=num_hosts - 1))
        self.order = self.order.for_hosts(num_hosts)
        self._host_slice = slice(self.epoch_rows * self.hosts[1] // num_hosts, self.epoch_rows * (self.hosts[1] + 1) // num_hosts)
        self.num_rows = self._host_slice.stop - self._host_slice.start
        self.num_batches = num_batches(self.num_rows, self.batch_size, self.drop_remainder)
        if self.num_batches == 0:
            raise SchemaError(
                f"No batches: {self.num_rows} rows with batch_size={self.batch_size}"
                f"{' and drop_remainder=True' if self.drop_remainder else ''}."
            )
        self._lock = threading.Lock()
        self._permutations: dict[int, np.ndarray] = {}
        self._recent = 0
        _forksafe.register(self)

    def _after_fork_in_child(self) -> None:
        # Another thread may have held the lock at the fork. The cache stays: every
        # change to it is one atomic dict operation, so it is consistent.
        self._lock = threading.Lock()

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
                    perm = self.order.permutation(self.epoch_rows, self.seed, epoch)[self._host_slice]
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

        Raises:
            SchemaError: Unless ``num_replicas >= 1`` and ``0 <= replica < num_replicas``.
        """
        num_replicas = check_int(num_replicas, "num_replicas", 1)
        replica = check_int(replica, "replica", 0, maximum=num_replicas - 1)
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
        _forksafe.register(self)


class LengthBuckets(EpochOrder):
    """Batches of rows of similar length, in random order: less padding for variable-length fields.

    Epoch ``e``, with ``rng = np.random.default_rng([seed, e])``: the rows are
    permuted at random and cut into windows of ``window_batches * batch_size`` rows;
    each window is sorted by length (stably) and cut into batches; then the full
    batches of the epoch are put in a random order (a last partial batch stays last,
    where ``drop_remainder`` finds it). Every row is served once per epoch, and the
    order is a pure function of ``(seed, epoch)``. A batch then holds rows whose
    lengths are neighbours among ``window_batches * batch_size`` random rows:
    larger windows pad less and mix less. :func:`memseq.padding_fraction` measures
    what it saves.

    Args:
        lengths: Every row's length, in stored order: ``ds["tokens"].lengths``, or
            the ragged column itself (its lengths are read once, from the offsets).
            Lengths of all rows of the data, also when the sequence serves a subset
            (``indices``).
        window_batches: Batches per sorted window (>= 1).

    Example:
        >>> seq = memseq.MemmapSequence(ds, x="tokens", y="label", batch_size=32, seed=0,
        ...                             shuffle=memseq.LengthBuckets(ds["tokens"], window_batches=64))
    """

    sorts_batches = True

    def __init__(self, lengths: Any, window_batches: int = 64):
        source = lengths.lengths if getattr(lengths, "ragged", False) is True else lengths
        array = np.asarray(source)
        if array.ndim != 1 or (array.size and array.dtype.kind not in "iu"):
            raise SchemaError(f"LengthBuckets: lengths must be 1-D integers. Received: {array.dtype} {array.shape}")
        if array.size and (int(array.min()) < 0 or int(array.max()) > INT64_MAX):
            bad = int(array.min()) if int(array.min()) < 0 else int(array.max())
            raise SchemaError(
                f"LengthBuckets: lengths must be from 0 to 2**63 - 1. Received: {bad} "
                f"at row {int(np.flatnonzero(array == bad)[0])}"
            )
        self.lengths = array.astype(np.int64, copy=False)
        self.window_batches = check_int(window_batches, "window_batches", 1, where="LengthBuckets")
        self.batch_size = 0  # set by bind(): BatchPlan binds the order to its batch size
        self._served = self.lengths

    def bind(self, num_source_rows: int, batch_size: int, indices: np.ndarray | None) -> "LengthBuckets":
        """This order for a plan: its batch size, and the lengths of the rows it serves."""
        if len(self.lengths) != num_source_rows:
            raise SchemaError(
                f"LengthBuckets: needs one length per row of the data ({num_source_rows}). Received {len(self.lengths)}."
            )
        bound = LengthBuckets(self.lengths, self.window_batches)
        bound.batch_size = batch_size
        bound._served = self.lengths if indices is None else self.lengths[indices]
        return bound

    def permutation(self, num_rows: int, seed: int, epoch: int) -> np.ndarray:
        if self.batch_size < 1 or len(self._served) != num_rows:
            raise SchemaError("LengthBuckets: use it as a MemmapSequence's (or BatchPlan's) shuffle=.")
        rng = np.random.default_rng([seed, epoch])
        perm = rng.permutation(np.arange(num_rows, dtype=_index_dtype(num_rows)))
        # Windows longer than the epoch are the epoch (and the product must fit an int64).
        span = min(self.window_batches * self.batch_size, max(1, num_rows))
        window = np.arange(num_rows, dtype=np.int64) // span
        perm = perm[np.lexsort((self._served[perm], window))]
        full = num_rows // self.batch_size
        batches = perm[: full * self.batch_size].reshape(full, self.batch_size)[rng.permutation(full)]
        return np.concatenate([batches.reshape(-1), perm[full * self.batch_size :]])

    def __repr__(self) -> str:
        return f"LengthBuckets(<{len(self.lengths)} lengths>, window_batches={self.window_batches})"
