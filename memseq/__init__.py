"""memseq: train Keras and tf.data models on arrays far larger than RAM, from memmap files."""

from __future__ import annotations

from memseq import augment
from memseq.batching.padding import Padding, padding_fraction
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
    RemoteError,
    SchemaError,
    UnsafePathError,
    WorkerError,
    WriteError,
)
from memseq.order import BlockShuffle, LengthBuckets, ShardShuffle
from memseq.read.columns import Column
from memseq.read.dataset import Dataset
from memseq.read.opener import open
from memseq.read.ragged import RaggedColumn
from memseq.read.raw import open_raw
from memseq.read.records import Records, records
# Through the module memseq.windows: loading it binds memseq.windows to the module,
# so it is loaded here, before the name is bound to the function.
from memseq.windows import TokenWindows, windows
from memseq.write.save import save
from memseq.write.writer import Writer

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
    "RemoteError",
    "SchemaError",
    "ShardShuffle",
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
        from memseq.sequence import MemmapSequence  # installs the Keras fit adapters

        return MemmapSequence
    if name == "BackupAndRestore":
        from memseq.adapters.keras.callbacks import BackupAndRestore

        return BackupAndRestore
    raise AttributeError(f"module 'memseq' has no attribute {name!r}")
