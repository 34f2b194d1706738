"""Which source kind a path holds, and a source for a whole input given as one path."""

from __future__ import annotations

import os
from collections.abc import Sequence

from memseq.convert._arrow import (
    ARROW_EXTENSIONS,
    PARQUET_EXTENSIONS,
    ArrowSource,
    is_hf_folder,
)
from memseq.convert._base import Source, missing_file
from memseq.convert._hdf5 import HDF5_EXTENSIONS, HDF5_MAGIC, HDF5Source
from memseq.convert._images import ImageFolderSource
from memseq.convert._memseq import MemseqSource
from memseq.convert._npy import NpySource
from memseq.convert._npz import ZIP_MAGIC, NpzSource
from memseq.convert._ragged import NpyRowsSource
from memseq.convert._tfrecord import TFRECORD_EXTENSIONS, TFRecordSource
from memseq.convert._webdataset import WEBDATASET_EXTENSIONS, WebDatasetSource
from memseq.errors import FormatError
from memseq.storage import format as fmt

__all__ = ["source_kind", "source_for_path", "migration_kind"]

# Inputs of other libraries' formats, by file name ending (also for directories and
# glob patterns of them): kind -> endings.
_MIGRATION_EXTENSIONS = {"tfrecord": TFRECORD_EXTENSIONS, "arrow": PARQUET_EXTENSIONS + ARROW_EXTENSIONS,
                         "webdataset": WEBDATASET_EXTENSIONS}
_GLOB_CHARS = ("*", "?", "[")


def migration_kind(path: str | os.PathLike | None) -> str | None:
    """The kind of another library's input at ``path`` (a file, a directory or a glob pattern), or None.

    ``"tfrecord"`` for ``.tfrecord``/``.tfrecords``/``.tfr`` files; ``"arrow"`` for Parquet
    (``.parquet``, ``.pq``) and Arrow IPC (``.arrow``, ``.feather``, ``.ipc``, ``.arrows``)
    files and Hugging Face ``save_to_disk`` folders; ``"webdataset"`` for ``.tar`` shards.
    """
    if path is None:
        return None
    path = os.fspath(path)
    if is_hf_folder(path):
        return "arrow"
    names = [path]
    if os.path.isdir(path):
        try:
            names = [e.name for e in os.scandir(path) if e.is_file() and not e.name.startswith(".")]
        except OSError:
            return None
    elif not os.path.isfile(path) and not any(c in path for c in _GLOB_CHARS):
        return None
    for kind, extensions in _MIGRATION_EXTENSIONS.items():
        if names and any(n.lower().endswith(extensions) for n in names):
            return kind
    return None


def _sniff(path: str) -> str:
    ext = os.path.splitext(path)[1].lower()
    if ext == ".npy":
        return "npy"
    if ext == ".npz":
        return "npz"
    if ext in HDF5_EXTENSIONS:
        return "hdf5"
    try:
        with open(path, "rb") as f:
            head = f.read(8)
    except OSError:
        return "raw"
    if fmt.has_npy_magic(head):
        return "npy"
    if head.startswith(ZIP_MAGIC):
        return "npz"
    if head == HDF5_MAGIC:
        return "hdf5"
    return "raw"


def source_kind(path: str, what: str) -> str:
    """The kind of the source file at ``path``: ``"npy"``, ``"npz"``, ``"hdf5"`` or ``"raw"``.

    The kind comes from the extension, else from the file's first bytes; anything
    else is a headerless raw file.

    Args:
        path: The file.
        what: What the file should be, for the message if it is missing
            (e.g. ``"the source of field 'image'"``).

    Raises:
        DatasetNotFoundError: If ``path`` is not a file.
    """
    if not os.path.isfile(path):
        raise missing_file(path, what)
    return _sniff(path)


def _is_npy_rows_directory(path: str) -> bool:
    """A directory of .npy files and no sub-directory: one-row files, not an image folder."""
    try:
        entries = list(os.scandir(path))
    except OSError:
        return False
    return any(e.name.endswith(".npy") for e in entries) and not any(e.is_dir() for e in entries)


def source_for_path(path: str | os.PathLike, *, image_size: Sequence[int] | int | None = None, color: str = "rgb") -> Source:
    """A source for a whole input given as one path (``memseq convert SRC DST``).

    - a memseq dataset directory: its fields (:class:`MemseqSource`; to re-shard it);
    - a directory of ``.npy`` files (no sub-directory): one row per file, a
      variable-length field named after the directory (:class:`NpyRowsSource`);
    - another directory: an image folder (:class:`ImageFolderSource`);
    - an ``.npz`` file: all its arrays, named by their keys;
    - an HDF5 file: all its datasets, named by their paths (``group/x`` -> ``group.x``);
    - a ``.npy`` file: one field named after the file's stem.

    Raises:
        DatasetNotFoundError: If the path does not exist.
        FormatError: If its kind cannot be read as a whole (raw files need --raw).
    """
    path = os.fspath(path)
    kind = None if os.path.isfile(os.path.join(path, fmt.MANIFEST_NAME)) else migration_kind(path)
    if kind == "tfrecord":
        return TFRecordSource(path)
    if kind == "arrow":
        return ArrowSource(path)
    if kind == "webdataset":
        return WebDatasetSource(path)
    if os.path.isdir(path):
        if os.path.isfile(os.path.join(path, fmt.MANIFEST_NAME)):
            return MemseqSource(path)
        if _is_npy_rows_directory(path):
            name = os.path.basename(os.path.normpath(path))
            return NpyRowsSource(path, fmt.check_field_name(name))
        return ImageFolderSource(path, image_size=image_size, color=color)
    if not os.path.exists(path):
        raise missing_file(path, "a source file or image folder")
    kind = _sniff(path)
    if kind == "npz":
        return NpzSource(path)
    if kind == "hdf5":
        return HDF5Source(path)
    if kind == "npy":
        return NpySource(path)
    raise FormatError(
        f"{path}: not an .npy, .npz or HDF5 file, nor an image folder. For a headerless raw file use "
        "--raw NAME=PATH:DTYPE:SHAPE (e.g. --raw image=images.mmap:uint8:-1,64,64,3)."
    )
