"""Datasets at a URL: the manifest read remotely, each shard fetched, verified and mapped on first use.

:func:`memseq.open` gives a URL (``s3://``, ``gs://``, ``https://``, ``file://``,
``memory://``: anything fsspec reads) to :class:`RemoteDatasetFiles`, the opened state of
a :class:`~memseq.Dataset` whose files come from a
:class:`~memseq.remote.cache.ShardCache`. A shard's files are downloaded the first time
a read touches one of its rows (or a prefetch asks for them), checked against the
manifest's CRC-32 before they are mapped, then mapped and served exactly like a local
dataset's: the same columns, the same checks after every copy, the same page cache.

Pickling stores the URL, the cache's arguments and the manifest's fingerprint, never
data: a worker process reads the manifest copy in the cache and maps the copies its
parent (or any process on the host) already verified. A dataset rewritten at the URL
after it was opened is refused (:class:`~memseq.DatasetReplacedError` in a pickled copy,
:class:`~memseq.CorruptFileError` for a shard whose bytes no longer match).
"""

from __future__ import annotations

import math
import threading
from collections.abc import Sequence
from typing import Any, Callable

from memseq.errors import (
    DatasetClosedError,
    DatasetNotFoundError,
    DatasetReplacedError,
    MemseqError,
)
from memseq.read.dataset import _DatasetFiles
from memseq.remote.cache import ShardCache
from memseq.remote.urls import join
from memseq.storage import format as fmt
from memseq.storage.checksum import crc32

__all__ = ["RemoteDatasetFiles", "ShardParts"]


class ShardParts(Sequence):
    """One field's parts across the shards of a remote dataset; a shard is fetched when its part is first asked for."""

    __slots__ = ("_files", "_name", "_n")

    def __init__(self, files: "RemoteDatasetFiles", name: str, n: int):
        self._files, self._name, self._n = files, name, n

    def __len__(self) -> int:
        return self._n

    def __getitem__(self, p: Any) -> Any:
        if isinstance(p, slice):
            return [self[i] for i in range(*p.indices(self._n))]
        p = int(p)
        if p < 0:
            p += self._n
        if not 0 <= p < self._n:
            raise IndexError(p)
        return self._files.shard(p)[self._name]


class RemoteDatasetFiles(_DatasetFiles):
    """The opened state of a dataset at a URL: the manifest, and the shards mapped so far.

    Args:
        url: The dataset's URL.
        cache: Where verified copies of its files are kept.
        fingerprint: The CRC-32 of the manifest to open (a pickled copy's), or None
            for the one at the URL now.
        closed: Whether it pickled closed.
    """

    def __init__(self, url: str, cache: ShardCache, fingerprint: int | None = None, closed: bool = False):
        super().__init__(url.rstrip("/"), fingerprint, None, closed)
        self.cache = cache
        self._shards: list[dict[str, Any] | None] = []
        self._shard_locks: list[threading.Lock] = []
        # When each shard is needed next (see set_rank): guides eviction under cache_limit.
        self._rank: Callable[[int], float] | None = None

    def _after_fork_in_child(self) -> None:
        super()._after_fork_in_child()
        self._shard_locks = [threading.Lock() for _ in self._shard_locks]

    def __reduce__(self):
        return (RemoteDatasetFiles, (self.path, self.cache, self.fingerprint, self._closed))

    @property
    def manifest_path(self) -> str:
        return join(self.path, fmt.MANIFEST_NAME)

    def open(self) -> None:
        with self._lock:
            if self._closed:
                raise DatasetClosedError(f"{self.path}: the dataset was closed; open it again to read.")
            if self._mapped is not None:
                return
            raw = self.cache.manifest_bytes(self.fingerprint)
            crc = crc32(raw)
            if self.fingerprint is not None and crc != self.fingerprint:
                raise DatasetReplacedError(
                    f"{self.manifest_path}: the dataset changed since this Dataset object was pickled; "
                    "open it again in the parent process."
                )
            manifest = fmt.parse_manifest(raw, self.path)
            self.fingerprint = crc
            self.data_dir = self.cache.version_dir(crc)
            n = len(manifest.shards)
            self._shards = [None] * n
            self._shard_locks = [threading.Lock() for _ in range(n)]
            self._manifest = manifest
            self._mapped = {name: ShardParts(self, name, n) for name in manifest.fields}

    def shard(self, s: int) -> dict[str, Any]:
        """Field name -> mapped part of shard ``s``, fetching and verifying its files first if needed."""
        mapped = self._shards[s] if s < len(self._shards) else None
        if mapped is not None:
            return mapped
        self.mapped()  # opens, or raises if closed
        with self._shard_locks[s]:
            mapped = self._shards[s]
            if mapped is None:
                mapped = self._map_shard(s)
                with self._lock:
                    if self._closed:
                        _close_parts(mapped)
                        raise DatasetClosedError(f"{self.path}: the dataset was closed; open it again to read.")
                    self._shards[s] = mapped
        return mapped

    def fetch_shard(self, s: int) -> int:
        """Downloads and verifies shard ``s``'s files into the cache (without mapping them); returns bytes fetched."""
        before = self.cache.bytes_downloaded
        shard = self.manifest.shards[s]
        for name, entry in shard.files.items():
            for rel, checksum in _files_of(entry):
                self.cache.fetch(self.fingerprint, rel, checksum, f"data file of field {name!r}", rank=self._file_rank)
        return self.cache.bytes_downloaded - before

    def _map_shard(self, s: int) -> dict[str, Any]:
        shard = self.manifest.shards[s]
        # A file evicted by another process between its fetch and its mapping is fetched again.
        for attempt in range(3):
            self.fetch_shard(s)
            try:
                return {name: self._open_data_file(shard, spec) for name, spec in self.manifest.fields.items()}
            except DatasetNotFoundError:
                if attempt == 2:
                    raise
        raise AssertionError("unreachable")

    def set_rank(self, rank: Callable[[int], float] | None) -> None:
        """Tells eviction when each shard is needed next: ``rank(s)`` (``inf``: not again this epoch)."""
        self._rank = rank

    def _file_rank(self, relative: str) -> float:
        rank = self._rank
        if rank is None:
            return 0.0
        for s, shard in enumerate(self.manifest.shards):
            if any(rel == relative for entry in shard.files.values() for rel, _ in _files_of(entry)):
                return rank(s)
        return math.inf

    def evict_mapping(self, s: int) -> None:
        """Drops this process's mapping of shard ``s`` (unmapped once no read holds it)."""
        if s < len(self._shards):
            self._shards[s] = None

    def is_current(self) -> bool:
        """Whether the manifest at the URL is still the one opened."""
        try:
            return crc32(self.cache.remote_manifest_bytes()) == self.fingerprint
        except MemseqError:
            return False

    def close(self) -> None:
        with self._lock:
            self._closed = True
            self._mapped = None
            shards, self._shards = self._shards, [None] * len(self._shards)
        for mapped in shards:
            if mapped is not None:
                _close_parts(mapped)


def _files_of(entry: fmt.FileEntry) -> list[tuple[str, str]]:
    files = [(entry.path, entry.checksum)]
    if entry.offsets is not None:
        files.append((entry.offsets.path, entry.offsets.checksum))
    return files


def _close_parts(mapped: dict[str, Any]) -> None:
    for part in mapped.values():
        part.close()
