"""Every Keras internal memseq's ``fit`` adapters use, imported here and nowhere else, each guarded.

Keras' data-adapter machinery (``keras.src.trainers.data_adapters``) and legacy
tf_keras' (``tf_keras.src.engine.data_adapter``) are private: a Keras release may move
or change them. Each name is looked up here; a missing one becomes ``None`` and is
listed by :func:`missing`, so ``import memseq.sequence`` keeps working on any Keras
and ``fit(seq)`` then runs through Keras' own ``PyDataset`` adapter, after one
:class:`KerasFallbackWarning` saying what is missing and what that costs.

Public Keras API (``keras.callbacks.CallbackList``, ``keras.backend.backend()``) is
imported where it is used; wrapping ``CallbackList``'s hooks is checked here too.
"""

from __future__ import annotations

import importlib
import inspect
import types
from typing import Any

__all__ = [
    "DataAdapter",
    "KerasFallbackWarning",
    "LOST_IN_FALLBACK",
    "data_adapter_utils",
    "data_adapters",
    "distribution_share",
    "legacy",
    "missing",
]


class KerasFallbackWarning(UserWarning):
    """This Keras lacks an internal memseq's ``fit`` adapter needs: ``fit(seq)`` uses Keras' own adapter."""


# What ``fit(seq)`` loses when Keras' own PyDataset adapter serves the sequence.
LOST_IN_FALLBACK = (
    "fit's epoch numbers (exact resume with initial_epoch and memseq.BackupAndRestore, "
    "mid-epoch resume), seeded fit(shuffle=True) batch order, persistent worker processes "
    "and the WorkerError for a dead worker (batches are still the sequence's own)"
)


def _module(name: str) -> types.ModuleType | None:
    try:
        return importlib.import_module(name)
    except ImportError:
        return None


def _attr(module: types.ModuleType | None, name: str) -> Any:
    return None if module is None else getattr(module, name, None)


data_adapters = _module("keras.src.trainers.data_adapters")
_data_adapter = _module("keras.src.trainers.data_adapters.data_adapter")
data_adapter_utils = _module("keras.src.trainers.data_adapters.data_adapter_utils")
DataAdapter: type | None = _attr(_data_adapter, "DataAdapter")

# The names used from data_adapter_utils, and the arguments of get_data_adapter that
# the wrapper reads.
_UTILS = ("class_weight_to_sample_weights", "get_tensor_spec", "NUM_BATCHES_FOR_TENSOR_SPEC",
          "get_jax_iterator", "get_torch_dataloader")
_ARGUMENTS = {"x", "y", "sample_weight", "shuffle", "class_weight"}
_HOOKS = ("on_train_begin", "on_epoch_begin", "on_train_end", "on_test_begin", "on_predict_begin")


def missing() -> list[str]:
    """The Keras internals memseq's Keras 3 adapter needs that this Keras lacks (empty: none)."""
    lacking = []
    get_data_adapter = _attr(data_adapters, "get_data_adapter")
    if get_data_adapter is None:
        lacking.append("keras.src.trainers.data_adapters.get_data_adapter")
    else:
        try:
            parameters = set(inspect.signature(get_data_adapter).parameters)
        except (TypeError, ValueError):
            parameters = set()
        if not _ARGUMENTS <= parameters:
            lacking.append(f"the arguments {sorted(_ARGUMENTS - parameters)} of get_data_adapter")
    if _attr(data_adapters, "raise_unsupported_arg") is None:
        lacking.append("keras.src.trainers.data_adapters.raise_unsupported_arg")
    if DataAdapter is None:
        lacking.append("keras.src.trainers.data_adapters.data_adapter.DataAdapter")
    lacking += [f"keras.src.trainers.data_adapters.data_adapter_utils.{name}"
                for name in _UTILS if _attr(data_adapter_utils, name) is None]
    callback_list = _attr(_module("keras.callbacks"), "CallbackList")
    if callback_list is None or not all(callable(getattr(callback_list, hook, None)) for hook in _HOOKS):
        lacking.append("keras.callbacks.CallbackList's train, epoch, test and predict hooks")
    return lacking


def distribution_share() -> tuple[int, int] | None:
    """``(process, num_processes)`` under a Keras distribution spanning several processes."""
    distribution_lib = _module("keras.src.distribution.distribution_lib")
    distribution = None if distribution_lib is None else distribution_lib.distribution()
    if distribution is None or not getattr(distribution, "_is_multi_process", False):
        return None
    return int(distribution._process_id), int(distribution._num_processes)


def legacy() -> types.SimpleNamespace | None:
    """tf_keras' internals (imported on first call: importing tf_keras imports TensorFlow).

    Returns:
        ``data_adapter``, ``callbacks`` and ``ModeKeys`` (``None`` if this tf_keras
        lacks it), or ``None`` if tf_keras' adapter machinery is not there.
    """
    data_adapter = _module("tf_keras.src.engine.data_adapter")
    callbacks = _module("tf_keras.src.callbacks")
    if data_adapter is None or callbacks is None:
        return None
    mode_keys = _module("tf_keras.src.utils.mode_keys")
    return types.SimpleNamespace(data_adapter=data_adapter, callbacks=callbacks, ModeKeys=_attr(mode_keys, "ModeKeys"))


def legacy_missing(internals: types.SimpleNamespace | None) -> list[str]:
    """The tf_keras internals memseq's legacy adapter needs that this tf_keras lacks."""
    if internals is None:
        return ["tf_keras.src.engine.data_adapter or tf_keras.src.callbacks"]
    lacking = []
    if not isinstance(getattr(internals.data_adapter, "ALL_ADAPTER_CLS", None), list):
        lacking.append("tf_keras.src.engine.data_adapter.ALL_ADAPTER_CLS")
    base = getattr(internals.data_adapter, "KerasSequenceAdapter", None)
    if base is None or not hasattr(base, "_handle_multiprocessing"):
        lacking.append("tf_keras.src.engine.data_adapter.KerasSequenceAdapter._handle_multiprocessing")
    if getattr(internals.callbacks, "CallbackList", None) is None:
        lacking.append("tf_keras.src.callbacks.CallbackList")
    return lacking
