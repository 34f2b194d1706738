"""Grain at memseq's speed: a ``grain.MapDataset`` of a sequence's batches.

Grain works record by record: ``MapDataset.source(records).shuffle(seed).batch(n)``
reads ``n`` rows one at a time and stacks them in Python, about 35x slower than
memseq's vectorised batch gather. :func:`to_grain` hands Grain whole batches
instead: item ``k`` is batch ``k % len(seq)`` of epoch ``epoch + k // len(seq)``,
exactly what ``seq.get_batch`` returns (the sequence's row shuffle, its gather and
its ``augment`` with the same rng keys). So

- every later epoch is a new shuffle (the index says which epoch);
- the item of an index never changes, so Grain's index-based checkpoints
  (``iterator.get_state()``/``set_state()``, ``DataLoader`` states) resume at an
  exact batch of an exact epoch;
- Grain's ``DataLoader`` can build batches in worker processes: the dataset
  pickles with the sequence, which pickles by reference (file paths, seed, a few
  KiB).

Only the sequence's public API is used (``len(seq)``, ``seq.epoch``,
``seq.get_batch``). Importing this module imports Grain.
"""

from __future__ import annotations

import sys
from typing import Any

import grain

from memseq.errors import BatchIndexError
from memseq.util.checks import INT64_MAX, check_int

__all__ = ["SequenceMapDataset", "to_grain"]


class SequenceMapDataset(grain.MapDataset):
    """A sequence's batches as a ``grain.MapDataset`` (see :func:`to_grain`).

    Args:
        seq: A :class:`memseq.MemmapSequence` (or subclass).
        epoch: The epoch of item 0.
        num_epochs: Epochs served; None for an endless dataset (``len`` is then
            ``sys.maxsize``, as for Grain's ``repeat()``).
    """

    def __init__(self, seq: Any, epoch: int, num_epochs: int | None):
        super().__init__()
        self._seq = seq
        self._epoch = epoch
        self._num_epochs = num_epochs
        self._batches = len(seq)
        self._length = sys.maxsize if num_epochs is None else num_epochs * self._batches

    @property
    def sequence(self) -> Any:
        """The sequence whose batches are served."""
        return self._seq

    def position(self, index: int) -> tuple[int, int]:
        """``(epoch, batch index)`` of item ``index``."""
        epoch, batch = divmod(int(index), self._batches)
        return self._epoch + epoch, batch

    def __len__(self) -> int:
        return self._length

    def __getitem__(self, index: Any) -> Any:
        if isinstance(index, slice):
            return self.slice(index)
        if isinstance(index, bool) or not hasattr(index, "__index__"):
            raise BatchIndexError(f"to_grain(): item index must be an integer. Received: {index!r}")
        index = index.__index__()
        if not 0 <= index < self._length:
            raise BatchIndexError(f"to_grain(): item {index} is out of range for {self._length} items.")
        epoch, batch = self.position(index)
        return self._seq.get_batch(batch, epoch)

    def __str__(self) -> str:
        epochs = "endless" if self._num_epochs is None else f"num_epochs={self._num_epochs}"
        return f"SequenceMapDataset(epoch={self._epoch}, {epochs}, batches_per_epoch={self._batches})"


def to_grain(seq: Any, *, epoch: int | None = None, num_epochs: int | None = None) -> SequenceMapDataset:
    """A ``grain.MapDataset`` whose item ``k`` is batch ``k % len(seq)`` of epoch ``epoch + k // len(seq)``.

    Args:
        seq: A :class:`memseq.MemmapSequence`.
        epoch: The epoch of item 0; the sequence's current epoch by default.
        num_epochs: Epochs to serve; None (default) for an endless dataset, as
            Grain's ``repeat()`` makes: pass ``steps_per_epoch=len(seq)`` to
            ``model.fit`` then, so each Keras epoch is one memseq epoch.

    Returns:
        The dataset. The sequence is not modified.

    Raises:
        SchemaError: If ``epoch`` or ``num_epochs`` is invalid: ``num_epochs`` is at
            most ``sys.maxsize // len(seq)`` (Grain's ``len``), and the last epoch at
            most ``2**63 - 1``.
    """
    epoch = seq.epoch if epoch is None else check_int(epoch, "epoch", 0, where="to_grain")
    if num_epochs is not None:
        # len() of the dataset (num_epochs * len(seq)) must be a Python size, and the
        # last epoch served an int64.
        most = min(sys.maxsize // len(seq), INT64_MAX - epoch + 1)
        num_epochs = check_int(num_epochs, "num_epochs", 1, maximum=most, where="to_grain")
    return SequenceMapDataset(seq, epoch, num_epochs)
