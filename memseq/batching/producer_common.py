"""What memseq's batch producers share: the build function's type, error surfacing, queue bounds."""

from __future__ import annotations

from collections.abc import Callable, Iterable, Sized
from typing import Any

from memseq.errors import WorkerError

__all__ = ["BuildFn", "epoch_bound", "queue_bound", "surface"]

BuildFn = Callable[[int, int], Any]


def surface(error: BaseException, index: int, epoch: int) -> BaseException:
    """The exception to raise in the consumer for ``error``, raised while building a batch.

    Ordinary exceptions keep their type (``except ValueError`` in user code still
    works); ``SystemExit``, ``KeyboardInterrupt`` and other non-``Exception`` errors
    become a :class:`WorkerError` naming them.
    """
    if isinstance(error, Exception):
        return error
    surfaced = WorkerError(
        f"A worker raised {type(error).__name__}({', '.join(map(repr, error.args))}) "
        f"while building batch {index} of epoch {epoch}."
    )
    surfaced.__cause__ = error
    return surfaced


def queue_bound(max_queue_size: int, floor: int) -> float:
    """Batches allowed ahead of the consumer: ``max_queue_size``, at least ``floor``; 0 = no bound."""
    return float("inf") if max_queue_size == 0 else max(floor, max_queue_size)


def epoch_bound(ahead: float, indices: Iterable[int], workers: int) -> float:
    """``ahead`` for this epoch: an endless epoch with no bound keeps two batches per worker ahead."""
    return 2 * workers if ahead == float("inf") and not isinstance(indices, Sized) else ahead
