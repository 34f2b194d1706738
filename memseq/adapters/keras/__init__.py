"""``model.fit(seq)`` through memseq's data adapters (Keras 3 and legacy tf_keras), and the resume callback.

Importing this package installs the adapters for :class:`~memseq.MemmapSequence`,
once. The sequence layer never imports its adapters: this package is imported from
above, when ``memseq.MemmapSequence``, ``memseq.BackupAndRestore``,
``memseq.sequence`` or ``memseq.callbacks`` is first used.

The modules, by role (as Keras' ``trainers/data_adapters``):

- :mod:`~memseq.adapters.keras.internals`: every Keras internal used, each import guarded;
- :mod:`~memseq.adapters.keras.adapter`: :class:`SequenceAdapter` (Keras 3), the batches;
- :mod:`~memseq.adapters.keras.clock`: ``fit``'s epoch number, from its ``CallbackList``;
- :mod:`~memseq.adapters.keras.legacy`: the tf_keras adapter;
- :mod:`~memseq.adapters.keras.callsite`: warnings shown at the user's line;
- :mod:`~memseq.adapters.keras.callbacks`: :class:`memseq.BackupAndRestore`;
- here: :func:`install`, the dispatcher (Keras' ``get_data_adapter``, wrapped).

Keras 3 feeds any ``PyDataset`` through its ``PyDatasetAdapter``, whose
``OrderedEnqueuer`` waits forever on a worker process that died, restarts its worker
pool every epoch, and (under TensorFlow) switches tf.data's prefetching off whenever
workers are used. For a ``MemmapSequence`` Keras gets :class:`SequenceAdapter`
instead. If this Keras lacks an internal the adapter needs
(:func:`~memseq.adapters.keras.internals.missing`), nothing is wrapped, one
:class:`~memseq.adapters.keras.internals.KerasFallbackWarning` says what is missing,
and ``fit(seq)`` runs through Keras' own adapter: same batches, fewer guarantees.

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
  sequence's own epoch is served.
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
- Warnings that Keras raises while it picks an adapter name the user's line.
"""

from __future__ import annotations

import functools
import inspect
from typing import Any

from memseq.adapters.tf_import import tensorflow_quietly

with tensorflow_quietly():  # importing the sequence imports Keras, which may import TensorFlow
    from memseq.batching.sequence import LEGACY_BASES, MemmapSequence

import memseq.adapters.keras.adapter as adapter
import memseq.adapters.keras.internals as internals
from memseq.adapters.keras.adapter import BatchBuilder, SequenceAdapter, standardize
from memseq.adapters.keras.callsite import warn_at_caller, warnings_at_caller
from memseq.adapters.keras.clock import current_start, resume_at, wrap_callback_list
from memseq.adapters.keras.internals import KerasFallbackWarning
from memseq.adapters.keras.legacy import install_legacy

__all__ = [
    "BatchBuilder",
    "KerasFallbackWarning",
    "SequenceAdapter",
    "current_start",
    "install",
    "install_legacy",
    "resume_at",
    "standardize",
]


def install(sequence_type: type) -> bool:
    """Makes Keras 3 use :class:`SequenceAdapter` for instances of ``sequence_type``.

    Wraps ``keras.src.trainers.data_adapters.get_data_adapter`` and
    ``keras.callbacks.CallbackList``'s train and epoch hooks, once. If this Keras lacks
    any internal that needs, warns once (:class:`KerasFallbackWarning`) and wraps nothing.

    Returns:
        Whether memseq's adapter is installed (False: Keras' own serves the sequence).
    """
    lacking = internals.missing()
    if lacking:
        import keras

        warn_at_caller(
            f"memseq: this Keras ({getattr(keras, '__version__', 'unknown version')}) lacks "
            f"{', '.join(lacking)}; model.fit(seq) runs through Keras' own PyDataset adapter, "
            f"without memseq's {internals.LOST_IN_FALLBACK}.",
            KerasFallbackWarning,
        )
        return False
    module = internals.data_adapters
    original = module.get_data_adapter
    if getattr(original, "_memseq_wrapped", False):
        return True
    from keras.callbacks import CallbackList

    adapter.sequence_type = sequence_type
    wrap_callback_list(CallbackList)
    signature = inspect.signature(original)

    @functools.wraps(original)
    def get_data_adapter(x: Any, y: Any = None, sample_weight: Any = None, *args: Any, **kwargs: Any) -> Any:
        with warnings_at_caller():
            if not isinstance(x, sequence_type):
                return original(x, y, sample_weight, *args, **kwargs)
            bound = signature.bind(x, y, sample_weight, *args, **kwargs)
            bound.apply_defaults()
            if y is not None:
                module.raise_unsupported_arg("y", "the targets", "PyDataset")
            if sample_weight is not None:
                module.raise_unsupported_arg("sample_weights", "the sample weights", "PyDataset")
            return SequenceAdapter(x, class_weight=bound.arguments["class_weight"], shuffle=bound.arguments["shuffle"])

    get_data_adapter._memseq_wrapped = True  # type: ignore[attr-defined]
    module.get_data_adapter = get_data_adapter
    return True


install(MemmapSequence)
if LEGACY_BASES:
    install_legacy(MemmapSequence)
