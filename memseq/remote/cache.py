"""The local shard cache: verified copies of a remote dataset's files, shared by processes.

Layout: ``<cache_dir>/<name>-<hash of the URL>/v-<manifest CRC-32>/`` holds a copy of
the manifest and the data files at their paths in the dataset. A new version of the
dataset (another manifest) gets another folder, so files of two versions never mix.

The promises:

- A file is served only after it was downloaded whole and its data matched the
  manifest's CRC-32 (the checksum covers the bytes after the ``.npy`` header, as
  :meth:`memseq.Dataset.verify` checks them). It is downloaded under a temporary name
  in the same folder and renamed into place (``os.replace``) only then, so a partial,
  corrupt or changed object is never served, by this process or another.
- One download per file per host: processes (and threads) take an exclusive
  ``flock`` on ``<file>.lock`` before downloading, and look again once they hold it.
- With ``cache_limit``, files are evicted before a download would exceed it: first
  files of other versions, then the files the caller ranks as needed latest (a
  clairvoyant, Belady-style order from the epoch's plan), never the file being fetched.
  A file evicted while another process maps it stays readable there (the mapping
  keeps it) and is downloaded again when needed.
- A full disk stops the download with :class:`~memseq.WriteError` naming the cache
  file; the temporary file is removed and nothing else changes.
"""

from __future__ import annotations

import collections
import errno
import fcntl
import os
import threading
from typing import Callable

from memseq.errors import CorruptFileError, MemseqError, SchemaError
import memseq.remote.transfer as transfer
from memseq.remote.urls import cache_key, default_cache_dir, join, parse_size
from memseq.storage import format as fmt
from memseq.storage.checksum import crc32, crc32_of_file
from memseq.storage.files import os_error
from memseq.storage.schema import MANIFEST_NAME
from memseq.util import forksafe as _forksafe

__all__ = ["ShardCache"]

# The manifest size limit of memseq.storage.manifest: anything larger is not one we wrote.
_MAX_MANIFEST_BYTES = 64 * 2**20
_LOCK_SUFFIX = ".lock"
_PART_MARK = ".part-"


class ShardCache:
    """Verified local copies of the files of the dataset at ``url``.

    Pickles as its arguments (URL, cache folder, limit, storage options): a worker
    process uses the same folder, and the copies its parent already made.

    Args:
        url: The dataset's URL (any fsspec URL).
        cache_dir: The cache folder (default: :func:`memseq.remote.urls.default_cache_dir`).
        cache_limit: The most bytes this dataset may keep in the cache (an int or a
            size such as ``"200GB"``); None for no limit.
        storage_options: Keyword arguments for the fsspec filesystem (credentials,
            ``endpoint_url``, ...).

    Attributes:
        downloads: Files this object downloaded (in this process).
        bytes_downloaded: Bytes this object downloaded (in this process).
        evictions: Files this object removed to stay under the limit.
    """

    def __init__(
        self,
        url: str,
        cache_dir: str | os.PathLike | None = None,
        cache_limit: int | str | None = None,
        storage_options: dict | None = None,
    ):
        self.url = url.rstrip("/")
        self.cache_dir = os.path.abspath(os.fspath(cache_dir) if cache_dir is not None else default_cache_dir())
        self.cache_limit = parse_size(cache_limit)
        if storage_options is not None and not isinstance(storage_options, dict):
            raise SchemaError(f"storage_options must be a dict or None. Received: {type(storage_options).__name__}")
        self.storage_options = dict(storage_options or {})
        self.root = os.path.join(self.cache_dir, cache_key(self.url))
        self.downloads = 0
        self.bytes_downloaded = 0
        self.evictions = 0
        self._stats_lock = threading.Lock()
        self._room_lock = threading.Lock()
        self._in_flight = 0  # bytes of this process's downloads running now (size estimates)
        self._pinned: collections.Counter = collections.Counter()  # local paths being mapped: never evicted
        _forksafe.register(self)

    def pin(self, paths: list[str]) -> None:
        """Keeps ``paths`` (local copies) from eviction by this process until :meth:`unpin`."""
        with self._stats_lock:
            self._pinned.update(paths)

    def unpin(self, paths: list[str]) -> None:
        with self._stats_lock:
            self._pinned.subtract(paths)
            self._pinned += collections.Counter()  # drops the zero counts

    def _after_fork_in_child(self) -> None:
        # Another thread may have held a lock, or been downloading, at the fork.
        self._stats_lock = threading.Lock()
        self._room_lock = threading.Lock()
        self._in_flight = 0
        self._pinned = collections.Counter()

    def __reduce__(self):
        return (ShardCache, (self.url, self.cache_dir, self.cache_limit, self.storage_options))

    def __repr__(self) -> str:
        return f"<memseq ShardCache {self.url!r} in {self.root!r} limit={self.cache_limit}>"

    def version_dir(self, fingerprint: int) -> str:
        """The folder of the dataset version whose manifest has CRC-32 ``fingerprint``."""
        return os.path.join(self.root, f"v-{fingerprint & 0xFFFFFFFF:08x}")

    # -- the manifest

    def manifest_bytes(self, fingerprint: int | None = None) -> bytes:
        """The manifest's bytes: the cached copy of version ``fingerprint`` if there is one, else from the URL.

        A copy is kept in the version's folder, so that worker processes (which know
        the fingerprint) do not ask the server again.
        """
        if fingerprint is not None:
            local = os.path.join(self.version_dir(fingerprint), MANIFEST_NAME)
            try:
                with open(local, "rb") as f:
                    raw = f.read(_MAX_MANIFEST_BYTES + 1)
                if crc32(raw) == fingerprint:
                    return raw
            except OSError:
                pass
        raw = self.remote_manifest_bytes()
        self._keep_manifest(raw)
        return raw

    def remote_manifest_bytes(self) -> bytes:
        """The manifest's bytes as the server has them now."""
        return transfer.read_bytes(join(self.url, MANIFEST_NAME), self.storage_options, "manifest", _MAX_MANIFEST_BYTES)

    def _keep_manifest(self, raw: bytes) -> None:
        folder = self.version_dir(crc32(raw))
        target = os.path.join(folder, MANIFEST_NAME)
        if os.path.exists(target):
            return
        try:
            os.makedirs(folder, exist_ok=True)
            tmp = f"{target}{_PART_MARK}{os.getpid()}-{threading.get_ident()}"
            with open(tmp, "wb") as f:
                f.write(raw)
            os.replace(tmp, target)
        except OSError as e:
            raise os_error(e, target, "cached manifest", writing=True) from e

    # -- data files

    def local_path(self, fingerprint: int, relative: str) -> str:
        """Where the verified copy of ``relative`` (a manifest path) lives, checked to stay in its folder."""
        folder = self.version_dir(fingerprint)
        return fmt.resolve_inside(folder, relative, manifest=join(self.url, MANIFEST_NAME))

    def fetch(
        self,
        fingerprint: int,
        relative: str,
        checksum: str,
        what: str,
        *,
        rank: Callable[[str], float] | None = None,
        size_hint: int = 0,
        on_evict: Callable[[list[str]], None] | None = None,
    ) -> str:
        """The local path of a verified copy of the dataset's file ``relative``, downloading it if needed.

        Args:
            fingerprint: The CRC-32 of the manifest that lists the file.
            relative: The file's path in the manifest.
            checksum: Its checksum in the manifest (``"crc32:..."``, over the data after the header).
            what: What the file is, for messages.
            rank: For eviction under ``cache_limit``: maps a cached file's path (relative
                to the version folder) to when it is needed next (larger: later,
                ``inf``: not again); files ranked latest are evicted first.
            size_hint: The file's expected size, to make room before downloading.
            on_evict: Called with the paths (relative to the version folder) of files
                evicted to make room, so the caller can drop its mappings of them.

        Raises:
            CorruptFileError: If the downloaded data do not match ``checksum`` (the
                object is corrupt, or changed after the manifest was read).
            RemoteError, DatasetNotFoundError, DatasetPermissionError: From the download.
            WriteError: If the cache's disk is full.
            SchemaError: If ``cache_limit`` cannot hold even this file.
        """
        local = self.local_path(fingerprint, relative)
        if os.path.exists(local):
            return local
        url = join(self.url, relative)
        os.makedirs(os.path.dirname(local), exist_ok=True)
        lock_fd = os.open(local + _LOCK_SUFFIX, os.O_RDWR | os.O_CREAT, 0o644)
        try:
            fcntl.flock(lock_fd, fcntl.LOCK_EX)
            if os.path.exists(local):  # another process or thread fetched it meanwhile
                return local
            self._reserve(size_hint, rank, local, fingerprint, on_evict)
            tmp = f"{local}{_PART_MARK}{os.getpid()}-{threading.get_ident()}"
            try:
                transfer.download(url, self.storage_options, what, tmp)
                nbytes = os.path.getsize(tmp)
                self._verify(tmp, url, checksum, what)
                os.chmod(tmp, 0o444)
                # The file stops counting as in flight as it starts counting as cached: one step
                # for make_room, which would otherwise count it twice and evict a needed file.
                with self._room_lock:
                    os.replace(tmp, local)
                    self._release(size_hint)
                    size_hint = 0
            except MemseqError:
                raise
            except OSError as e:
                raise os_error(e, local, f"cached copy of {what}", writing=True) from e
            finally:
                self._release(size_hint)
                try:
                    os.unlink(tmp)
                except FileNotFoundError:
                    pass
            with self._stats_lock:
                self.downloads += 1
                self.bytes_downloaded += nbytes
            if self.cache_limit is not None and self.cached_bytes() > self.cache_limit:  # the estimate was short
                self._reserve(0, rank, local, fingerprint, on_evict)
            return local
        finally:
            os.close(lock_fd)  # releases the flock

    def _release(self, nbytes: int) -> None:
        with self._stats_lock:
            self._in_flight -= nbytes

    def _reserve(self, nbytes: int, rank, local: str, fingerprint: int, on_evict) -> None:
        """Makes room for ``nbytes`` more (besides this process's downloads in flight) and counts them in flight."""
        if self.cache_limit is None:
            with self._stats_lock:
                self._in_flight += nbytes
            return
        with self._room_lock:  # threads of one process make room one at a time, counting each other's downloads
            with self._stats_lock:
                in_flight = self._in_flight
            evicted = self.make_room(
                nbytes, rank or (lambda _: 0.0), keep={local}, current=self.version_dir(fingerprint), in_flight=in_flight
            )
            with self._stats_lock:
                self._in_flight += nbytes
        if evicted and on_evict is not None:
            on_evict(evicted)

    def _verify(self, tmp: str, url: str, checksum: str, what: str) -> None:
        with open(tmp, "rb") as f:
            _, _, offset = fmt.read_npy_header(f, url)
        actual = fmt.format_checksum(crc32_of_file(tmp, offset))
        if actual != checksum:
            raise CorruptFileError(
                f"{url}: the downloaded {what} does not match the manifest's checksum (manifest says {checksum}, "
                f"the object has {actual}): the object is corrupt or was changed after the manifest was read. "
                "Nothing was cached; open the dataset again if it was rewritten."
            )

    # -- eviction

    def cached_files(self) -> list[tuple[str, str, int]]:
        """Every cached data file of this URL: (version folder, path relative to it, size)."""
        found = []
        try:
            versions = [e.path for e in os.scandir(self.root) if e.is_dir() and e.name.startswith("v-")]
        except FileNotFoundError:
            return found
        for folder in versions:
            for dirpath, _, names in os.walk(folder):
                for name in names:
                    if name == MANIFEST_NAME or name.endswith(_LOCK_SUFFIX) or _PART_MARK in name:
                        continue
                    path = os.path.join(dirpath, name)
                    try:
                        size = os.stat(path).st_size
                    except FileNotFoundError:
                        continue
                    found.append((folder, os.path.relpath(path, folder).replace(os.sep, "/"), size))
        return found

    def cached_bytes(self) -> int:
        """Bytes of data files of this URL in the cache (all versions)."""
        return sum(size for _, _, size in self.cached_files())

    def make_room(
        self,
        incoming: int,
        rank: Callable[[str], float],
        keep: set[str] = frozenset(),
        current: str | None = None,
        in_flight: int = 0,
    ) -> list[str]:
        """Evicts cached files until ``incoming`` more bytes fit under ``cache_limit``.

        Files of other versions than ``current`` (a version folder) go first, then
        those ``rank`` puts latest; files in ``keep`` (absolute paths) stay.
        ``in_flight`` bytes (downloads running) count as if they were cached.

        Returns:
            The paths (relative to ``current``) of the files of ``current`` evicted.

        Raises:
            SchemaError: If ``incoming`` alone exceeds the limit.
        """
        limit = self.cache_limit
        evicted: list[str] = []
        if limit is None:
            return evicted
        if incoming > limit:
            raise SchemaError(
                f"{self.url}: cache_limit is {limit} bytes, but one file of the dataset is {incoming} bytes: "
                "the cache must hold at least the files of the shards in use. Raise cache_limit."
            )
        files = self.cached_files()
        total = in_flight + sum(size for _, _, size in files)
        if total + incoming <= limit:
            return evicted

        def order(item: tuple[str, str, int]) -> tuple[int, float]:
            folder, rel, _ = item
            return (0, 0.0) if folder != current else (1, -rank(rel))

        with self._stats_lock:
            pinned = set(self._pinned)
        for folder, rel, size in sorted(files, key=order):
            path = os.path.join(folder, rel)
            if path in keep or path in pinned:
                continue
            try:
                os.unlink(path)
            except FileNotFoundError:
                continue
            except OSError as e:
                if e.errno not in (errno.EACCES, errno.EPERM, errno.EBUSY):
                    raise os_error(e, path, "cached file", writing=True) from e
                continue
            with self._stats_lock:
                self.evictions += 1
            if folder == current:
                evicted.append(rel)
            total -= size
            if total + incoming <= limit:
                return evicted
        return evicted
