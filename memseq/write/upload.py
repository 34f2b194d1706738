"""Writing a dataset to a URL: staged locally, data files uploaded first, the manifest last.

A reader finds a dataset at a URL only through its manifest, and the manifest is
uploaded after every data file it names (one object PUT, atomic in object stores):
a reader never sees a half-written dataset. Replacing a dataset (``overwrite=True``)
uploads the new files under a fresh folder (``d-<random>/``), then the manifest, then
deletes the old version's files: a reader that opened the old version either has its
shards cached, verified, or gets a clear error for the ones deleted, never the new
version's bytes under the old manifest.
"""

from __future__ import annotations

import contextlib
import dataclasses
import os
import secrets
import shutil
import tempfile
from collections.abc import Iterator

from memseq.errors import DatasetExistsError, MemseqError
from memseq.remote import transfer
from memseq.remote.urls import join
from memseq.storage import format as fmt
from memseq.storage.manifest import manifest_to_json, parse_manifest

__all__ = ["check_remote_target", "remove_staging", "staged_upload", "staging_dir", "upload_dataset"]


def check_remote_target(url: str, storage_options: dict | None, overwrite: bool) -> None:
    """Raises DatasetExistsError if a dataset exists at ``url`` and ``overwrite`` is False."""
    if not overwrite and transfer.exists(join(url, fmt.MANIFEST_NAME), storage_options, "manifest"):
        raise DatasetExistsError(f"{url}: a memseq dataset exists there; pass overwrite=True to replace it.")


def staging_dir() -> str:
    """A fresh local folder to write a dataset in before it is uploaded (``$TMPDIR``); the dataset goes in ``<it>/ds``."""
    return tempfile.mkdtemp(prefix="memseq-upload-")


def remove_staging(folder: str) -> None:
    shutil.rmtree(folder, ignore_errors=True)


@contextlib.contextmanager
def staged_upload(url: str, storage_options: dict | None, overwrite: bool) -> Iterator[str]:
    """Yields a local path to write a dataset at; if the block succeeds, uploads it to ``url``.

    The target is checked first (an existing dataset needs ``overwrite``); the data
    files go up before the manifest (:func:`upload_dataset`); the staging folder is
    removed whether or not the block succeeded.

    Raises:
        DatasetExistsError: If a dataset exists at ``url`` and ``overwrite`` is False.
    """
    check_remote_target(url, storage_options, overwrite)
    staging = staging_dir()
    try:
        local = os.path.join(staging, "ds")
        yield local
        upload_dataset(local, url, storage_options, overwrite=overwrite)
    finally:
        remove_staging(staging)


def _prefixed(manifest: fmt.Manifest, prefix: str) -> fmt.Manifest:
    def entry(e: fmt.FileEntry) -> fmt.FileEntry:
        offsets = None if e.offsets is None else entry(e.offsets)
        return dataclasses.replace(e, path=prefix + e.path, offsets=offsets)

    shards = tuple(dataclasses.replace(s, files={n: entry(e) for n, e in s.files.items()}) for s in manifest.shards)
    return dataclasses.replace(manifest, shards=shards)


def _paths(manifest: fmt.Manifest) -> list[str]:
    paths = []
    for shard in manifest.shards:
        for e in shard.files.values():
            paths.append(e.path)
            if e.offsets is not None:
                paths.append(e.offsets.path)
    return paths


def upload_dataset(local: str, url: str, storage_options: dict | None, *, overwrite: bool) -> None:
    """Uploads the committed local dataset ``local`` to ``url``: data files, then the manifest.

    Raises:
        DatasetExistsError: If a dataset exists at ``url`` and ``overwrite`` is False.
        RemoteError, DatasetPermissionError: From the uploads (retried with backoff).
    """
    url = url.rstrip("/")
    manifest_url = join(url, fmt.MANIFEST_NAME)
    manifest = fmt.read_manifest(local)
    old: fmt.Manifest | None = None
    if transfer.exists(manifest_url, storage_options, "manifest"):
        if not overwrite:
            raise DatasetExistsError(f"{url}: a memseq dataset exists there; pass overwrite=True to replace it.")
        try:
            old = parse_manifest(transfer.read_bytes(manifest_url, storage_options, "manifest", 64 * 2**20), url)
        except MemseqError:
            old = None  # unreadable: nothing of it is deleted
        manifest = _prefixed(manifest, f"d-{secrets.token_hex(6)}/")
    for local_rel, remote_rel in zip(_paths(fmt.read_manifest(local)), _paths(manifest)):
        transfer.upload(os.path.join(local, local_rel), join(url, remote_rel), storage_options, f"data file {remote_rel!r}")
    manifest_file = os.path.join(local, fmt.MANIFEST_NAME + ".upload")
    with open(manifest_file, "w", encoding="utf-8") as f:
        f.write(manifest_to_json(manifest))
    transfer.upload(manifest_file, manifest_url, storage_options, "manifest")
    if old is not None:
        _delete_quietly(url, storage_options, set(_paths(old)) - set(_paths(manifest)))


def _delete_quietly(url: str, storage_options: dict | None, relatives: set[str]) -> None:
    """Deletes the old version's files; a failure leaves garbage, never a broken dataset."""
    fs, base = transfer.filesystem(url, storage_options)
    for rel in sorted(relatives):
        try:
            fs.rm_file(base.rstrip("/") + "/" + rel)
        except Exception:  # noqa: BLE001 - garbage left behind is harmless
            pass


