"""``to_tf_dataset(ragged=True)``: variable-length fields as ``tf.RaggedTensor``.

The batch is built as usual (padded, see :mod:`memseq.batching.padding`); beside it, a second
``numpy_function`` gives each variable-length field's row lengths, computed from the
same rows (``seq.batch_rows``), the field's offsets and its ``Padding.max_length``, and
``tf.RaggedTensor.from_tensor(padded, lengths=...)`` drops the padding again. The
values are therefore exactly the rows (truncated to ``max_length``).
"""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any

import numpy as np

from memseq.batching.padding import Padding
from memseq.errors import SchemaError

__all__ = ["RowLengths"]


class RowLengths:
    """``(epoch, batch index) -> [int32 lengths of each variable-length field]``, run by tf.data threads.

    Args:
        seq: The :class:`~memseq.MemmapSequence`.
        names: The selected field names, in the loader's order.
        input_context: Must be None: distributed shares are not supported with ``ragged``.

    Attributes:
        names: The variable-length fields among ``names`` (stored ragged columns).
    """

    def __init__(self, seq: Any, names: list[str], input_context: Any):
        if input_context is not None:
            raise SchemaError("to_tf_dataset: ragged=True does not support input_context (distributed shares).")
        data = seq.data
        self.seq = seq
        self.names = [name for name in names if getattr(data.get(name) if isinstance(data, Mapping) else None, "ragged", False) is True]
        padding = getattr(seq, "padding", None)
        self.max_length = {}
        for name in self.names:
            spec = padding.get(name, Padding()) if isinstance(padding, Mapping) else (padding or Padding())
            self.max_length[name] = spec.max_length

    def __call__(self, epoch: np.int64, element: np.int64) -> list[np.ndarray]:
        rows = self.seq.batch_rows(int(element), int(epoch))
        out = []
        for name in self.names:
            _, _, starts, stops = self.seq.data[name].bounds(rows)
            lengths = stops - starts
            if self.max_length[name] is not None:
                lengths = np.minimum(lengths, self.max_length[name])
            out.append(lengths.astype(np.int32))
        return out

    def wrap(self, by_name: dict[str, Any], lengths: list[Any]) -> None:
        """Replaces each variable-length field's padded tensor in ``by_name`` by a RaggedTensor."""
        import tensorflow as tf

        for name, row_lengths in zip(self.names, lengths):
            row_lengths.set_shape((None,))
            by_name[name] = tf.RaggedTensor.from_tensor(by_name[name], lengths=row_lengths)
