"""Atomic commits of dataset directories, shared by the Writer and the converter.

Both build a complete dataset in a temporary directory beside the target, then:
write the manifest last (fsynced), fsync the directory, and move it into place with
one rename, or with one atomic exchange when an old dataset is being replaced, so
that the old one stays readable until the new one is in place.

Temporary directories of killed writers are removed by the next write to the same
target. A live writer's temporary directory is never removed: each writer holds an
exclusive ``flock`` on its temporary directory for as long as it lives (the kernel
drops it when the process dies, however it dies), and only directories whose lock
can be taken are deleted. A directory is locked *before* it gets its
``.memseq-tmp-`` name (it is created under a ``.memseq-new-`` name, locked, then
renamed), so no sweep can see it unlocked.

Temporary names must fit in one directory entry (``NAME_MAX``, 255 bytes): a target
whose name is too long to leave room for the marker and the tag is represented in
them by a stem, its start and a hash of the whole name (:func:`temp_stem`), the same
for every writer, so the sweep still finds a dead writer's directory.
"""

from __future__ import annotations

import errno
import fcntl
import hashlib
import os
import shutil
import threading
import uuid

from memseq.errors import DatasetExistsError
from memseq.storage import format as fmt
from memseq.util import forksafe as _forksafe
from memseq.util import libc as _libc

__all__ = [
    "TMP_MARKER",
    "fsync_dir",
    "fsync_file",
    "exchange",
    "check_target",
    "make_temp_dir",
    "remove_temp_dir",
    "remove_stale_temp_dirs",
    "temp_stem",
    "write_manifest",
    "publish",
]

# Temporary directories are named ".<name>.memseq-tmp-<pid>-<id>" beside the target.
TMP_MARKER = ".memseq-tmp-"
# A temporary directory is created under this name, locked, then renamed.
_NEW_MARKER = ".memseq-new-"
# Every temporary name is "." + stem + marker + "<pid>-<12 hex>", plus "-old" for the
# old dataset of a two-rename overwrite; each must fit in NAME_MAX (255 bytes on
# Linux and macOS filesystems). A pid has at most 10 digits (a 32-bit int).
_NAME_MAX = 255
_STEM_MAX = _NAME_MAX - (1 + len(TMP_MARKER) + 10 + 1 + 12 + len("-old"))
_DIGEST_CHARS = 16
_DIR_FLAGS = os.O_RDONLY | os.O_DIRECTORY | getattr(os, "O_NOFOLLOW", 0) | getattr(os, "O_CLOEXEC", 0)

# Temporary directory -> the descriptor holding its flock, for the writer's lifetime.
_locks: dict[str, int] = {}
_locks_guard = threading.Lock()
_forksafe.renew_locks(globals(), "_locks_guard")  # another thread may hold it at a fork


def fsync_dir(path: str) -> None:
    """fsyncs a directory, so that the renames and creations inside it are durable."""
    _fsync(path, os.O_RDONLY | os.O_DIRECTORY)


def fsync_file(path: str) -> None:
    """fsyncs a file by path, so that what any process wrote into it is durable."""
    _fsync(path, os.O_RDONLY)


def _fsync(path: str, flags: int) -> None:
    fd = os.open(path, flags)
    try:
        os.fsync(fd)
    finally:
        os.close(fd)


def exchange(a: str, b: str) -> bool:
    """Atomically swaps two paths (Linux renameat2). Returns False where unsupported."""
    if not _libc.available("renameat2"):
        return False
    try:
        _libc.renameat2(a, b, _libc.RENAME_EXCHANGE)
    except OSError as error:
        if error.errno in (errno.EINVAL, errno.ENOSYS, errno.ENOTSUP):
            return False
        raise
    return True


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


def temp_stem(name: str) -> str:
    """What stands for the target ``name`` in its temporary names: ``name`` itself if it fits.

    A longer name becomes its start, ``~`` and 16 hex digits of its SHA-256, at most
    ``_STEM_MAX`` bytes: distinct names keep distinct stems, and every writer to the
    same target computes the same one.
    """
    raw = os.fsencode(name)
    if len(raw) <= _STEM_MAX:
        return name
    digest = hashlib.sha256(raw).hexdigest()[:_DIGEST_CHARS]
    keep = name[: _STEM_MAX - _DIGEST_CHARS - 1]
    while len(os.fsencode(keep)) > _STEM_MAX - _DIGEST_CHARS - 1:
        keep = keep[:-1]  # multi-byte characters: trim until the bytes fit
    return f"{keep}~{digest}"


def make_temp_dir(path: str) -> str:
    """Creates and returns a fresh temporary directory beside ``path`` (same filesystem).

    Removes the temporary directories of dead writers to the same target first. The
    new directory stays locked (``flock``) until :func:`remove_temp_dir` or
    :func:`publish`, so that other writers' sweeps leave it alone.
    """
    parent, name = os.path.split(path)
    _makedirs(parent)
    remove_stale_temp_dirs(path)
    name = temp_stem(name)
    while True:
        tag = f"{os.getpid()}-{uuid.uuid4().hex[:12]}"
        new = os.path.join(parent, f".{name}{_NEW_MARKER}{tag}")
        tmp = os.path.join(parent, f".{name}{TMP_MARKER}{tag}")
        os.mkdir(new)
        try:
            fd = os.open(new, _DIR_FLAGS)
        except FileNotFoundError:
            continue  # a sweep removed it before we locked it: an empty directory, try again
        try:
            fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
            os.rename(new, tmp)
        except FileNotFoundError:
            os.close(fd)
            continue
        except BaseException:
            os.close(fd)
            try:
                os.rmdir(new)
            except OSError:
                pass
            raise
        with _locks_guard:
            _locks[tmp] = fd
        return tmp


def _makedirs(directory: str) -> None:
    """``os.makedirs(directory, exist_ok=True)`` without recursion (it recurses once per missing level)."""
    missing = []
    while directory and not os.path.isdir(directory):
        missing.append(directory)
        head = os.path.dirname(directory)
        if head == directory:
            break
        directory = head
    for d in reversed(missing):
        try:
            os.mkdir(d)
        except FileExistsError:
            if not os.path.isdir(d):
                raise


def _release(tmp: str) -> None:
    with _locks_guard:
        fd = _locks.pop(tmp, None)
    if fd is not None:
        os.close(fd)


def remove_temp_dir(tmp: str) -> None:
    """Deletes a temporary directory made by :func:`make_temp_dir` and drops its lock."""
    try:
        shutil.rmtree(tmp, ignore_errors=True)
    finally:
        _release(tmp)


def remove_stale_temp_dirs(path: str) -> list[str]:
    """Deletes the temporary directories beside ``path`` that no live writer holds.

    Returns:
        The directories removed.
    """
    parent, name = os.path.split(path)
    name = temp_stem(name)
    try:
        entries = os.listdir(parent or ".")
    except OSError:
        return []
    removed = []
    for entry in entries:
        if entry.startswith(f".{name}{TMP_MARKER}"):
            empty_only = False
        elif entry.startswith(f".{name}{_NEW_MARKER}"):
            empty_only = True  # killed between mkdir and rename; never holds data
        else:
            continue
        full = os.path.join(parent, entry)
        with _locks_guard:
            if full in _locks or full.removesuffix("-old") in _locks:
                continue  # ours (another Writer in this process)
        try:
            fd = os.open(full, _DIR_FLAGS)
        except OSError:
            continue
        try:
            fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except OSError:
            os.close(fd)
            continue  # a live writer holds it
        try:
            st, now = os.fstat(fd), os.lstat(full)
            if (st.st_dev, st.st_ino) != (now.st_dev, now.st_ino):
                continue  # replaced since we opened it: leave it to the next sweep
            if empty_only:
                os.rmdir(full)
            else:
                shutil.rmtree(full, ignore_errors=True)
            removed.append(full)
        except OSError:
            pass
        finally:
            os.close(fd)
    return removed


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
            # Lock the old dataset before it gets a temporary name, so that no sweep
            # deletes it while it may still have to be put back.
            old_fd = os.open(path, _DIR_FLAGS)
            try:
                fcntl.flock(old_fd, fcntl.LOCK_EX)
                os.rename(path, old)
                try:
                    os.rename(tmp, path)
                except BaseException:
                    os.rename(old, path)
                    raise
                os.rename(old, tmp)
            finally:
                os.close(old_fd)
        _release(tmp)  # the lock now sits on the published dataset: drop it
        fsync_dir(parent)
        shutil.rmtree(tmp, ignore_errors=True)  # the old dataset, now at tmp
        return
    try:
        os.rename(tmp, path)
    except OSError as e:
        if e.errno in (errno.ENOTEMPTY, errno.EEXIST) or os.path.lexists(path):
            raise DatasetExistsError(f"{path} appeared while writing; nothing was committed.") from e
        raise
    _release(tmp)
    fsync_dir(parent)
