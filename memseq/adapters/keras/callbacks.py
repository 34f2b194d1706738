"""Keras callbacks for training on a :class:`~memseq.MemmapSequence`.

Importing this module imports Keras.
"""

from __future__ import annotations

import json
import os
import warnings
from typing import Any

import keras

from memseq.adapters.keras.clock import current_start, resume_at

__all__ = ["BackupAndRestore"]

# Keras' warning when an epoch's iterator ends before num_batches steps: exactly what a
# resumed epoch does on purpose.
_RAN_OUT = "Your input ran out of data"


class BackupAndRestore(keras.callbacks.BackupAndRestore):
    """Keras' ``BackupAndRestore`` that resumes an interrupted epoch at the next batch.

    Keras' own callback restores the weights and the epoch number, and restarts that
    epoch at batch 0, for every dataset: with a step ``save_freq`` the batches trained
    between the epoch's start and the last backup are trained twice. This subclass
    also records, with every backup, the position of the next batch of
    :class:`~memseq.MemmapSequence`'s epoch (in the order ``fit`` serves it), and on
    restore ``fit`` serves the interrupted epoch from that batch on: the resumed run
    trains on exactly the ``(epoch, rows, augmentation)`` of the uninterrupted run,
    nothing twice, nothing skipped. The resumed epoch is shorter than the others
    (Keras' progress bar still shows the full count).

    The position is kept in ``memseq_position.json`` beside Keras' own files and used
    only if it was written with the weights being restored; otherwise the epoch
    restarts at batch 0, as with Keras' callback. It applies to the training
    sequence of a Keras 3 ``fit`` whose epochs are the whole sequence (no
    ``steps_per_epoch``).

    Args:
        backup_dir: A local directory for the backups (as Keras' callback).
        save_freq: ``"epoch"`` or a number of batches (as Keras' callback).
        double_checkpoint: Keep the previous backup too (as Keras' callback).
        delete_checkpoint: Delete the backups when training ends (as Keras' callback).

    Example:
        >>> seq = memseq.MemmapSequence("data/train", x="image", y="label", batch_size=64, seed=0)
        >>> model.fit(seq, epochs=10, callbacks=[memseq.BackupAndRestore("backup", save_freq=100)])
    """

    def __init__(
        self,
        backup_dir: str,
        save_freq: Any = "epoch",
        double_checkpoint: bool = False,
        delete_checkpoint: bool = True,
    ):
        super().__init__(
            backup_dir, save_freq=save_freq, double_checkpoint=double_checkpoint, delete_checkpoint=delete_checkpoint
        )
        self._position_path = os.path.join(os.fspath(backup_dir), "memseq_position.json")
        self._start = 0  # the first batch of the epoch under way
        self._position = (0, 0)  # (epoch, next batch to train)
        self._filter: tuple | None = None

    def on_train_begin(self, logs: Any = None) -> None:
        super().on_train_begin(logs)  # restores the weights and the epoch
        position = self._restored_position()
        if position is not None:
            resume_at(*position)

    def on_epoch_begin(self, epoch: int, logs: Any = None) -> None:
        self._start = current_start()
        self._position = (epoch, self._start)
        if self._start:
            warnings.filterwarnings("ignore", message=_RAN_OUT, category=UserWarning)
            self._filter = warnings.filters[0]
        super().on_epoch_begin(epoch, logs)

    def on_train_batch_end(self, batch: int, logs: Any = None) -> None:
        self._position = (self._position[0], self._start + batch + 1)
        super().on_train_batch_end(batch, logs)

    def on_epoch_end(self, epoch: int, logs: Any = None) -> None:
        self._position = (epoch + 1, 0)
        self._start = 0
        if self._filter is not None and self._filter in warnings.filters:
            warnings.filters.remove(self._filter)
        self._filter = None
        super().on_epoch_end(epoch, logs)

    def _save_model(self) -> None:
        super()._save_model()
        epoch, batch = self._position
        record = {"epoch": epoch, "batch": batch, "keras": [self._current_epoch, self._last_batch_seen]}
        temporary = f"{self._position_path}.tmp"
        with open(temporary, "w") as f:
            json.dump(record, f)
            f.flush()
            os.fsync(f.fileno())
        os.replace(temporary, self._position_path)

    def _restored_position(self) -> tuple[int, int] | None:
        """The recorded ``(epoch, batch)``, if it was written with the backup Keras restored."""
        try:
            with open(self._position_path) as f:
                record = json.load(f)
            with open(self._training_metadata_path) as f:
                metadata = json.load(f)
        except (OSError, ValueError):
            return None
        if record.get("keras") != [metadata.get("epoch"), metadata.get("batch")]:
            warnings.warn(
                f"{self._position_path} does not belong to the backup being restored: "
                "the interrupted epoch restarts at batch 0.",
                stacklevel=2,
            )
            return None
        return int(record["epoch"]), int(record["batch"])
