"""The exceptions memseq raises.

Every error memseq raises on purpose is a :class:`MemseqError`. Each subclass also
inherits the builtin exception that fits it, so code that already catches
``FileNotFoundError``, ``ValueError`` or ``IndexError`` keeps working::

    try:
        ds = memseq.open("data/train")
    except FileNotFoundError:
        ...  # catches memseq.DatasetNotFoundError too

Messages say what failed, where (file, field), what was expected and what was
received, and, where there is one, how to fix it.
"""

from __future__ import annotations

__all__ = [
    "MemseqError",
    "DatasetNotFoundError",
    "DatasetExistsError",
    "FormatError",
    "UnsafePathError",
    "CorruptFileError",
    "SchemaError",
    "BatchIndexError",
]


class MemseqError(Exception):
    """Root of every error memseq raises on purpose."""


class DatasetNotFoundError(MemseqError, FileNotFoundError):
    """A dataset directory, manifest or data file does not exist."""


class DatasetExistsError(MemseqError, FileExistsError):
    """A write would replace an existing path and ``overwrite`` was not given."""


class FormatError(MemseqError, ValueError):
    """A manifest or data file is not in a format memseq can read.

    Raised for unknown format versions, malformed JSON, missing keys, wrong types,
    and ``.npy`` headers that disagree with the manifest.
    """


class UnsafePathError(FormatError):
    """A manifest names a file outside its dataset directory (absolute, ``..``, symlink)."""


class CorruptFileError(FormatError):
    """A data file has the wrong size or checksum, or was truncated after it was opened."""


class SchemaError(MemseqError, ValueError):
    """Arrays or arguments do not fit the fields they are meant for.

    Raised for unknown field names, wrong dtypes or row shapes, unequal row counts
    and invalid arguments (batch sizes, indices, selections).
    """


class BatchIndexError(MemseqError, IndexError):
    """A row or batch index is out of range."""


class WorkerError(MemseqError, RuntimeError):
    """A worker building batches failed in a way that is not an ordinary exception.

    Raised for a worker process that died (killed by the OOM killer, a signal,
    ``os._exit``), with its exit code or signal and the batch it was building, and
    for ``SystemExit``, ``KeyboardInterrupt`` or other non-``Exception`` errors raised
    inside ``augment``: those must not stop the training process as if it had been
    asked to exit.
    """
