"""Keras' epoch number, as ``fit``'s ``CallbackList`` announces it, and a pending resume point.

The adapters serve the epoch ``fit`` is in (never a count of hook calls): the clock
learns it from ``CallbackList.on_epoch_begin``, which :func:`wrap_callback_list`
wraps once per ``CallbackList`` class (Keras 3's and tf_keras').
"""

from __future__ import annotations

import functools
import weakref
from typing import Any

import memseq.adapters.keras.internals as internals

__all__ = ["FitClock", "clock", "current_start", "resume_at", "wrap_callback_list"]


class FitClock:
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


clock = FitClock()


def resume_at(epoch: int, batch: int) -> None:
    """Makes the next ``fit`` epoch ``epoch`` start at batch ``batch`` (position in its order).

    Called by :class:`memseq.BackupAndRestore` from ``on_train_begin``; the first
    training adapter to begin that epoch honours it once.
    """
    clock.resume = (int(epoch), int(batch))


def current_start() -> int:
    """The batch at which the epoch under way started (0 unless it was resumed)."""
    return clock.start


def _legacy_resume_step(callbacks: Any, epoch: int) -> int:
    """The batch at which tf_keras' ``BackupAndRestore`` resumes ``epoch`` (0: none).

    tf_keras restores the epoch and step counters of its checkpoint and skips the
    steps already trained, but its data iterator starts at batch 0; memseq's adapter
    starts the epoch at that step instead, so the data match the steps.
    """
    state = getattr(getattr(callbacks, "model", None), "_training_state", None)
    steps = (getattr(callbacks, "params", None) or {}).get("steps")
    legacy = internals.legacy()
    if state is None or not steps or legacy is None or legacy.ModeKeys is None:
        return 0
    try:
        resumed, step = state.maybe_load_initial_counters_from_ckpt(steps, epoch, legacy.ModeKeys.TRAIN)
    except (AttributeError, TypeError):  # another tf_keras: restart at batch 0
        return 0
    return int(step) if int(resumed) == epoch else 0


def wrap_callback_list(callback_list_type: type, *, legacy: bool = False) -> None:
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
        if not clock.owned_by(callbacks):
            clock.reset()

    def epoch_begin(callbacks: Any, epoch: int, *_: Any) -> None:
        if legacy and clock.epoch is None:  # the first epoch of a tf_keras fit
            step = _legacy_resume_step(callbacks, epoch)
            if step:
                clock.resume = (epoch, step)
        clock.epoch_begin(epoch)

    # Reset before the callbacks run: BackupAndRestore sets a resume point in on_train_begin.
    wrap("on_train_begin", before=lambda callbacks, *_: clock.reset(callbacks))
    wrap("on_epoch_begin", before=epoch_begin)
    wrap("on_train_end", after=lambda callbacks: clock.reset())
    wrap("on_test_begin", before=outside_fit)
    wrap("on_predict_begin", before=outside_fit)
