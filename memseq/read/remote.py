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
    DatasetNotFoundError,
    MemseqError,
)
from memseq.read.dataset import DatasetFiles
from memseq.remote.cache import ShardCache
from memseq.remote.urls import join
from memseq.storage import format as fmt
from memseq.storage.checksum import crc32

__all__ = ["RemoteDatasetFiles", "ShardParts", "remote_files_of"]

# The usual .npy header size (memseq's and numpy's version 1 headers): the estimate of a
# file's size before it is downloaded. The cache checks its limit again with the real size.
_NPY_HEADER_BYTES = 128


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

    def is_mapped(self, p: int) -> bool:
        """Whether part ``p`` is mapped already (asking for it would not download anything)."""
        return self._files.is_mapped(p)


class RemoteDatasetFiles(DatasetFiles):
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
        self._file_shards: dict[str, int] | None = None

    def _after_fork_in_child(self) -> None:
        super()._after_fork_in_child()
        self._shard_locks = [threading.Lock() for _ in self._shard_locks]

    def __reduce__(self):
        return (RemoteDatasetFiles, (self.path, self.cache, self.fingerprint, self._closed))

    @property
    def manifest_path(self) -> str:
        return join(self.path, fmt.MANIFEST_NAME)

    def _map_files(self) -> None:
        raw = self.cache.manifest_bytes(self.fingerprint)
        crc = crc32(raw)
        self.check_fingerprint(crc)
        manifest = fmt.parse_manifest(raw, self.path)
        self.fingerprint = crc
        self.data_dir = self.cache.version_dir(crc)
        n = len(manifest.shards)
        # Shards are fetched and mapped on first use (see shard()).
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
                        raise self.closed_error()
                    self._shards[s] = mapped
        return mapped

    def is_mapped(self, s: int) -> bool:
        """Whether shard ``s`` is mapped in this process (so its files are in the cache)."""
        shards = self._shards
        return s < len(shards) and shards[s] is not None

    def fetch_shard(self, s: int) -> None:
        """Downloads and verifies shard ``s``'s files into the cache, unless they are there; maps nothing."""
        for rel, checksum, what, size in self.shard_files(s):
            self.cache.fetch(
                self.fingerprint, rel, checksum, what, rank=self._file_rank, size_hint=size, on_evict=self._evicted
            )

    def shard_files(self, s: int) -> list[tuple[str, str, str, int]]:
        """Shard ``s``'s files: (path in the manifest, checksum, what it is, expected size in bytes)."""
        manifest = self.manifest
        shard = manifest.shards[s]
        files = []
        for name, entry in shard.files.items():
            spec = manifest.fields[name]
            rows = entry.num_values if spec.ragged else shard.num_rows
            files.append((entry.path, entry.checksum, f"data file of field {name!r}", _NPY_HEADER_BYTES + rows * spec.row_nbytes))
            if entry.offsets is not None:
                size = _NPY_HEADER_BYTES + 8 * (shard.num_rows + 1)
                files.append((entry.offsets.path, entry.offsets.checksum, f"offsets of field {name!r}", size))
        return files

    def shard_nbytes(self, s: int) -> int:
        """About how many bytes shard ``s``'s files take (their sizes from the manifest, headers estimated)."""
        return sum(size for *_, size in self.shard_files(s))

    def _evicted(self, relatives: list[str]) -> None:
        shard_of = self._shard_of_file()
        for rel in relatives:
            s = shard_of.get(rel)
            if s is not None:
                self.evict_mapping(s)

    def _shard_of_file(self) -> dict[str, int]:
        table = self._file_shards
        if table is None:
            table = self._file_shards = {
                rel: s for s in range(len(self.manifest.shards)) for rel, *_ in self.shard_files(s)
            }
        return table

    def _map_shard(self, s: int) -> dict[str, Any]:
        shard = self.manifest.shards[s]
        # This process evicts none of the shard's files until they are mapped; one that
        # another process evicts in between is fetched again.
        pinned = [self.cache.local_path(self.fingerprint, rel) for rel, *_ in self.shard_files(s)]
        self.cache.pin(pinned)
        try:
            for attempt in range(3):
                self.fetch_shard(s)
                try:
                    return {name: self._open_data_file(shard, spec) for name, spec in self.manifest.fields.items()}
                except DatasetNotFoundError:
                    if attempt == 2:
                        raise
            raise AssertionError("unreachable")
        finally:
            self.cache.unpin(pinned)

    def set_rank(self, rank: Callable[[int], float] | None) -> None:
        """Tells eviction when each shard is needed next: ``rank(s)`` (``inf``: not again this epoch)."""
        self._rank = rank

    def _file_rank(self, relative: str) -> float:
        rank = self._rank
        if rank is None:
            return 0.0
        s = self._shard_of_file().get(relative)
        return math.inf if s is None else rank(s)

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


def remote_files_of(data: Any) -> RemoteDatasetFiles | None:
    """The remote state of a :class:`~memseq.Dataset` opened from a URL; None for anything else."""
    state = getattr(data, "__dict__", {}).get("_state")
    return state if isinstance(state, RemoteDatasetFiles) else None


def _close_parts(mapped: dict[str, Any]) -> None:
    for part in mapped.values():
        part.close()
