"""``memseq.open``: a local dataset directory, or a dataset at any fsspec URL."""

from __future__ import annotations

import os
from typing import Any

from memseq.errors import SchemaError
from memseq.read.dataset import Dataset
from memseq.read.dataset import open as open_local
from memseq.read.remote import RemoteDatasetFiles
from memseq.remote.cache import ShardCache
from memseq.remote.urls import is_url

__all__ = ["open"]


def open(  # noqa: A001 - mirrors io.open / np.load naming
    path: str | os.PathLike,
    *,
    cache_dir: str | os.PathLike | None = None,
    cache_limit: int | str | None = None,
    storage_options: dict[str, Any] | None = None,
) -> Dataset:
    """Opens a memseq dataset for reading: a local directory or a URL.

    A local dataset: validates the manifest, every ``.npy`` header (dtype, row shape,
    row count) and every file's size before returning; reads no data.

    A URL (``s3://``, ``gs://``, ``az://``, ``https://``, ``file://``, ``memory://``:
    anything fsspec reads; ``pip install 'memseq[remote]'``): reads and validates the
    manifest from the URL and returns at once. Each shard's files are downloaded into
    ``cache_dir`` the first time a read (or a prefetch) needs them, checked against the
    manifest's CRC-32 *before* they are mapped, then mapped and served exactly like a
    local dataset's. Processes on one host share the cache (one download per file).

    Args:
        path: The dataset directory, or its URL.
        cache_dir: URLs only: the local cache folder (default ``$MEMSEQ_CACHE_DIR``,
            else ``~/.cache/memseq``).
        cache_limit: URLs only: the most bytes of this dataset the cache keeps (an int
            or a size such as ``"200GB"``); files are evicted beyond it, those the
            epoch needs latest first. None: no limit.
        storage_options: URLs only: keyword arguments for the fsspec filesystem
            (credentials, ``endpoint_url``, ...).

    Returns:
        A read-only :class:`Dataset`.

    Raises:
        DatasetNotFoundError: If the directory, manifest or a data file is missing.
        NotRegularFileError: If the manifest or a data file is a FIFO, socket,
            device or directory.
        DatasetPermissionError, FileAccessError: If a file cannot be opened.
        FormatError: If the manifest or a header is invalid or disagrees with the other.
        UnsafePathError: If the manifest names a file outside the directory.
        CorruptFileError: If a file has the wrong size, or a variable-length field's
            offsets do not start at 0 and end at its number of values; for a URL, if
            a downloaded file does not match the manifest's checksum.
        RemoteError: If the server kept failing (retried with backoff).
        SchemaError: If a URL-only argument is given with a local path.

    Example:
        >>> ds = memseq.open("data/train")
        >>> ds["image"][0:4].shape
        (4, 64, 64, 3)
        >>> ds = memseq.open("s3://bucket/train", cache_dir="/nvme/memseq", cache_limit="200GB")
    """
    if is_url(path):
        cache = ShardCache(path, cache_dir, cache_limit, storage_options)
        return Dataset(path, _files=RemoteDatasetFiles(path, cache))
    given = [n for n, v in (("cache_dir", cache_dir), ("cache_limit", cache_limit), ("storage_options", storage_options)) if v is not None]
    if given:
        raise SchemaError(f"{', '.join(given)} apply to URLs only; {path!r} is a local path.")
    return open_local(path)
