"""Atomic commits of dataset directories, shared by the Writer and the converter.

Both build a complete dataset in a temporary directory beside the target, then:
write the manifest last (fsynced), fsync the directory, and move it into place with
one rename, or with one atomic exchange when an old dataset is being replaced, so
that the old one stays readable until the new one is in place.
"""

from __future__ import annotations

import ctypes
import errno
import os
import shutil
import uuid

from memseq import format as fmt
from memseq.errors import DatasetExistsError

__all__ = ["TMP_MARKER", "fsync_dir", "exchange", "check_target", "make_temp_dir", "write_manifest", "publish"]

# Temporary directories are named ".<name>.memseq-tmp-<pid>-<id>" beside the target.
TMP_MARKER = ".memseq-tmp-"

_RENAME_EXCHANGE = 2
_AT_FDCWD = -100


def fsync_dir(path: str) -> None:
    """fsyncs a directory, so that the renames and creations inside it are durable."""
    fd = os.open(path, os.O_RDONLY | os.O_DIRECTORY)
    try:
        os.fsync(fd)
    finally:
        os.close(fd)


def exchange(a: str, b: str) -> bool:
    """Atomically swaps two paths (Linux renameat2). Returns False where unsupported."""
    try:
        libc = ctypes.CDLL(None, use_errno=True)
        renameat2 = libc.renameat2
    except (OSError, AttributeError):
        return False
    renameat2.argtypes = [ctypes.c_int, ctypes.c_char_p, ctypes.c_int, ctypes.c_char_p, ctypes.c_uint]
    if renameat2(_AT_FDCWD, os.fsencode(a), _AT_FDCWD, os.fsencode(b), _RENAME_EXCHANGE) == 0:
        return True
    err = ctypes.get_errno()
    if err in (errno.EINVAL, errno.ENOSYS, errno.ENOTSUP):
        return False
    raise OSError(err, os.strerror(err), a, None, b)


def check_target(path: str, overwrite: bool) -> None:
    """Refuses to write to ``path`` unless it is free, or a memseq dataset and ``overwrite``.

    Raises:
        DatasetExistsError: If ``path`` exists and ``overwrite`` is False, or it
            exists and is not a memseq dataset (memseq never replaces other data).
    """
    if not os.path.lexists(path):
        return
    if not overwrite:
        raise DatasetExistsError(f"{path} already exists; pass overwrite=True to replace it.")
    if not os.path.isdir(path) or not os.path.isfile(os.path.join(path, fmt.MANIFEST_NAME)):
        raise DatasetExistsError(
            f"{path} exists and is not a memseq dataset (no {fmt.MANIFEST_NAME}); "
            "memseq only overwrites its own datasets. Remove it yourself if it should go."
        )


def make_temp_dir(path: str) -> str:
    """Creates and returns a fresh temporary directory beside ``path`` (same filesystem)."""
    parent, name = os.path.split(path)
    os.makedirs(parent, exist_ok=True)
    tmp = os.path.join(parent, f".{name}{TMP_MARKER}{os.getpid()}-{uuid.uuid4().hex[:12]}")
    os.mkdir(tmp)
    return tmp


def write_manifest(directory: str, manifest: fmt.Manifest) -> None:
    """Writes ``directory/memseq.json`` durably: temp file, fsync, rename, fsync directory."""
    manifest_tmp = os.path.join(directory, fmt.MANIFEST_NAME + ".tmp")
    with open(manifest_tmp, "x", encoding="utf-8") as f:
        f.write(fmt.manifest_to_json(manifest))
        f.flush()
        os.fsync(f.fileno())
    os.rename(manifest_tmp, os.path.join(directory, fmt.MANIFEST_NAME))
    fsync_dir(directory)


def publish(tmp: str, path: str, overwrite: bool) -> None:
    """Moves the finished dataset ``tmp`` to ``path``; the old dataset there is deleted after.

    With an old dataset at ``path`` the two directories are exchanged in one atomic
    step, so readers see the old or the new dataset, never neither. Filesystems
    without ``renameat2(RENAME_EXCHANGE)`` fall back to two renames, with a short
    window in which ``path`` is missing (the old data then sit at ``tmp + "-old"``).

    Raises:
        DatasetExistsError: If ``path`` is taken (see :func:`check_target`), or
            appeared meanwhile and ``overwrite`` is False.
    """
    parent = os.path.dirname(path)
    check_target(path, overwrite)
    if os.path.lexists(path):
        if not exchange(tmp, path):
            old = tmp + "-old"
            os.rename(path, old)
            try:
                os.rename(tmp, path)
            except BaseException:
                os.rename(old, path)
                raise
            os.rename(old, tmp)
        fsync_dir(parent)
        shutil.rmtree(tmp, ignore_errors=True)  # the old dataset, now at tmp
        return
    try:
        os.rename(tmp, path)
    except OSError as e:
        if e.errno in (errno.ENOTEMPTY, errno.EEXIST) or os.path.lexists(path):
            raise DatasetExistsError(f"{path} appeared while writing; nothing was committed.") from e
        raise
    fsync_dir(parent)
