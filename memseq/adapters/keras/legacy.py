"""Legacy ``tf_keras`` (Keras 2): :class:`LegacySequenceAdapter` for a :class:`~memseq.MemmapSequence`.

:func:`install_legacy` puts it first in tf_keras' list of adapters: the same batches,
epochs and workers as under Keras 3, instead of tf_keras' ``OrderedEnqueuer``, which
calls ``on_epoch_end`` once or twice per epoch depending on thread timing.
"""

from __future__ import annotations

from collections.abc import Iterator
from typing import Any

import memseq.adapters.keras.internals as internals
from memseq.adapters.keras.adapter import EpochFeed
from memseq.adapters.keras.callsite import warn_at_caller
from memseq.adapters.keras.clock import wrap_callback_list

__all__ = ["install_legacy"]


def install_legacy(sequence_type: type) -> bool:
    """Makes tf_keras' ``fit`` serve instances of ``sequence_type`` through ``LegacySequenceAdapter``.

    If this tf_keras lacks what is needed, warns once (:class:`~memseq.adapters.keras.
    internals.KerasFallbackWarning`) and leaves tf_keras' own adapter in place.

    Returns:
        Whether it is installed.
    """
    legacy = internals.legacy()
    lacking = internals.legacy_missing(legacy)
    if lacking:
        warn_at_caller(
            f"memseq: this tf_keras lacks {', '.join(lacking)}; tf_keras' fit(seq) runs through its own "
            f"Sequence adapter, without memseq's {internals.LOST_IN_FALLBACK}.",
            internals.KerasFallbackWarning,
        )
        return False
    adapters = legacy.data_adapter.ALL_ADAPTER_CLS
    base = legacy.data_adapter.KerasSequenceAdapter
    if any(getattr(cls, "_memseq_type", None) is sequence_type for cls in adapters):
        return True
    wrap_callback_list(legacy.callbacks.CallbackList, legacy=True)
    # tf_keras insists that exactly one adapter handles an input: the subclass takes
    # the place of KerasSequenceAdapter and defers to it for other sequences.
    adapter_type = _legacy_adapter_type(base, sequence_type)
    if base in adapters:
        adapters[adapters.index(base)] = adapter_type
    else:
        adapters.insert(0, adapter_type)
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
            feed = EpochFeed(
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
