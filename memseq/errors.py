"""The exceptions memseq raises.

Every error memseq raises on purpose is a :class:`MemseqError`. Each subclass also
inherits the builtin exception that fits it, so code that already catches
``FileNotFoundError``, ``PermissionError``, ``OSError``, ``ValueError`` or
``IndexError`` keeps working::

    try:
        ds = memseq.open("data/train")
    except FileNotFoundError:
        ...  # catches memseq.DatasetNotFoundError too

Messages say what failed, where (file, field), what was expected and what was
received, and, where there is one, how to fix it. Values taken from the caller or
from a file are shown shortened, so a message stays a few hundred characters long
whatever the input.

The errors that are also ``OSError`` (:class:`DatasetNotFoundError`,
:class:`FileAccessError` and its subclasses) carry ``errno`` and ``filename`` like the
builtin ones; their ``str`` is memseq's message.
"""

from __future__ import annotations

__all__ = [
    "MemseqError",
    "DatasetNotFoundError",
    "DatasetExistsError",
    "DatasetReplacedError",
    "DatasetClosedError",
    "FileAccessError",
    "DatasetPermissionError",
    "WriteError",
    "RemoteError",
    "FormatError",
    "NotRegularFileError",
    "UnsafePathError",
    "CorruptFileError",
    "SchemaError",
    "BatchIndexError",
]


class MemseqError(Exception):
    """Root of every error memseq raises on purpose."""


class _PathOSError(OSError):
    """An ``OSError`` whose ``str`` is the message, with ``errno`` and ``filename`` kept."""

    def __init__(self, message: str = "", *, errno: int | None = None, filename: str | None = None):
        super().__init__(message)
        self.errno = errno
        self.filename = filename

    def __str__(self) -> str:
        return str(self.args[0]) if self.args else ""

    def __reduce__(self):
        return (type(self), self.args, {"errno": self.errno, "filename": self.filename})


class DatasetNotFoundError(MemseqError, _PathOSError, FileNotFoundError):
    """A dataset directory, manifest or data file does not exist."""


class DatasetExistsError(MemseqError, FileExistsError):
    """A write would replace an existing path and ``overwrite`` was not given."""


class DatasetReplacedError(MemseqError, RuntimeError):
    """The dataset on disk was replaced (overwritten) since this object opened it.

    The open object keeps serving the version it opened, intact; open the path again
    to read the new one. A pickled Dataset or column refuses to read a replaced
    dataset, so that workers never mix two versions.
    """


class DatasetClosedError(MemseqError, ValueError):
    """A read from a Dataset (or column) after ``close()``."""


class FileAccessError(MemseqError, _PathOSError):
    """A file or directory could not be opened, read or written.

    Raised for OS failures other than a missing file: a path too long, a symlink loop,
    an I/O error. ``errno`` and ``filename`` are set.
    """


class DatasetPermissionError(FileAccessError, PermissionError):
    """Permission denied for a dataset directory, manifest or data file."""


class WriteError(FileAccessError):
    """Writing a dataset failed: disk full (``ENOSPC``), file size limit (``EFBIG``),
    quota (``EDQUOT``) or another OS error. Nothing was committed and the temporary
    files were removed; a dataset that was being overwritten is intact.
    """


class RemoteError(FileAccessError):
    """Object storage (an fsspec URL: ``s3://``, ``gs://``, ``https://``, ...) did not answer.

    Raised after transient failures (timeouts, refused connections, server errors)
    were retried with backoff and the last attempt failed too; ``filename`` is the URL,
    and the message names it, the number of attempts and the last error. Nothing
    partial was cached.
    """


class FormatError(MemseqError, ValueError):
    """A manifest or data file is not in a format memseq can read.

    Raised for unknown format versions, malformed JSON, missing keys, wrong types,
    values out of range, and ``.npy`` headers that are malformed or disagree with the
    manifest.
    """


class NotRegularFileError(FormatError):
    """A manifest or data file is a FIFO, socket, device or directory, not a regular file.

    memseq refuses such files before opening them for reading, so it never blocks on
    a FIFO or reads a device without end.
    """


class UnsafePathError(FormatError):
    """A manifest names a file outside its dataset directory (absolute, ``..``, symlink)."""


class CorruptFileError(FormatError):
    """A data file has the wrong size or checksum, or was truncated after it was opened."""


class SchemaError(MemseqError, ValueError):
    """Arrays or arguments do not fit the fields they are meant for.

    Raised for unknown field names, wrong dtypes or row shapes, unequal row counts
    and invalid arguments (batch sizes, indices, selections, paths).
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
