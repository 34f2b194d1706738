"""memseq: train Keras and tf.data models on arrays far larger than RAM, from memmap files."""

from __future__ import annotations

from memseq import augment
from memseq.columns import Column
from memseq.dataset import Dataset, open
from memseq.errors import (
    BatchIndexError,
    CorruptFileError,
    DatasetClosedError,
    DatasetExistsError,
    DatasetNotFoundError,
    DatasetPermissionError,
    DatasetReplacedError,
    FileAccessError,
    FormatError,
    MemseqError,
    NotRegularFileError,
    SchemaError,
    UnsafePathError,
    WorkerError,
    WriteError,
)
from memseq._padding import Padding, padding_fraction
from memseq._records import Records, records
from memseq._save import save
from memseq.order import BlockShuffle, LengthBuckets
from memseq.ragged import RaggedColumn
from memseq.raw import open_raw
from memseq.windows import TokenWindows, windows
from memseq.writer import Writer

__version__ = "0.1.0"

__all__ = [
    "BackupAndRestore",
    "BatchIndexError",
    "BlockShuffle",
    "Column",
    "CorruptFileError",
    "Dataset",
    "DatasetClosedError",
    "DatasetExistsError",
    "DatasetNotFoundError",
    "DatasetPermissionError",
    "DatasetReplacedError",
    "FileAccessError",
    "FormatError",
    "LengthBuckets",
    "MemmapSequence",
    "MemseqError",
    "NotRegularFileError",
    "Padding",
    "RaggedColumn",
    "Records",
    "SchemaError",
    "TokenWindows",
    "UnsafePathError",
    "WorkerError",
    "WriteError",
    "Writer",
    "augment",
    "open",
    "open_raw",
    "padding_fraction",
    "records",
    "save",
    "windows",
]


def __getattr__(name: str):
    # MemmapSequence and BackupAndRestore import Keras: load them on first use so
    # `import memseq` stays light.
    if name == "MemmapSequence":
        from memseq.sequence import MemmapSequence

        return MemmapSequence
    if name == "BackupAndRestore":
        from memseq.callbacks import BackupAndRestore

        return BackupAndRestore
    raise AttributeError(f"module 'memseq' has no attribute {name!r}")
