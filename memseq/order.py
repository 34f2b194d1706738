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
"""

from __future__ import annotations

import dataclasses
from typing import Any

import numpy as np

from memseq.errors import SchemaError

__all__ = ["EpochOrder", "FullShuffle", "Sequential", "resolve_shuffle", "num_batches"]


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
