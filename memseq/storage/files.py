"""Opening files from untrusted places, and turning OS failures into named errors.

One rule for every file memseq reads or writes: a filesystem failure becomes a
:class:`~memseq.MemseqError` subclass that names the path and keeps the builtin base
that fits (:func:`os_error`), and a file that is read must be a regular file, checked
*before* anything could block on it (:func:`open_regular`): opening a FIFO for
reading waits for a writer forever, reading a character device such as
``/dev/zero`` never ends.
"""

from __future__ import annotations

import contextlib
import errno
import os
import stat
from collections.abc import Iterator
from typing import Any

from memseq.errors import (
    DatasetNotFoundError,
    DatasetPermissionError,
    FileAccessError,
    MemseqError,
    NotRegularFileError,
    SchemaError,
    WriteError,
)
from memseq.util.checks import bounded_repr, bounded_text

__all__ = ["check_path", "describe_mode", "open_regular", "os_error", "read_at_most", "writing"]

# Failures of a write that mean "the disk (or a limit) has no room": WriteError.
_NO_ROOM = {errno.ENOSPC, errno.EFBIG, errno.EDQUOT}
_OPEN_FLAGS = os.O_RDONLY | getattr(os, "O_CLOEXEC", 0) | getattr(os, "O_NONBLOCK", 0) | getattr(os, "O_NOCTTY", 0)


def check_path(path: Any, what: str = "path") -> str:
    """``path`` as a ``str`` if the filesystem can take it.

    Raises:
        SchemaError: For anything that is not a ``str``/``bytes``/``os.PathLike``
            (``None`` included), a path with a NUL character, or one that cannot be
            encoded for the filesystem.
    """
    try:
        text = os.fspath(path)
    except TypeError:
        raise SchemaError(f"{what} must be a str or os.PathLike. Received: {bounded_repr(path)}") from None
    if isinstance(text, bytes):
        text = os.fsdecode(text)
    if "\x00" in text:
        raise SchemaError(f"{what} must not contain a NUL character. Received: {bounded_repr(text)}")
    try:
        os.fsencode(text)
    except UnicodeEncodeError as e:
        raise SchemaError(
            f"{what} cannot be encoded for the filesystem ({e.reason}). Received: {bounded_repr(text)}"
        ) from None
    return text


def describe_mode(mode: int) -> str:
    """What kind of file ``st_mode`` describes, for messages ("a FIFO", "a directory", ...)."""
    for test, name in (
        (stat.S_ISDIR, "a directory"),
        (stat.S_ISFIFO, "a FIFO (named pipe)"),
        (stat.S_ISSOCK, "a socket"),
        (stat.S_ISCHR, "a character device"),
        (stat.S_ISBLK, "a block device"),
        (stat.S_ISLNK, "a symbolic link"),
    ):
        if test(mode):
            return name
    return "not a regular file"


def os_error(e: BaseException, path: str, what: str, *, writing: bool = False) -> Exception:
    """The named memseq error for an OS-level failure ``e`` on ``path``.

    Args:
        e: The ``OSError`` (or ``UnicodeEncodeError``/``ValueError`` from a path).
        path: The path that failed, named in the message.
        what: What the path is ("manifest", "data file of field 'x'"), for the message.
        writing: Whether the failure happened while writing: then a full disk, a file
            size limit or a quota is a :class:`~memseq.WriteError`.

    Returns:
        The error to raise (``raise os_error(e, ...) from e``): ENOENT and ENOTDIR
        give :class:`DatasetNotFoundError`, EACCES and EPERM
        :class:`DatasetPermissionError`, a write failure :class:`WriteError`, and
        everything else :class:`FileAccessError`; each keeps ``errno`` and ``filename``.
    """
    shown = bounded_text(path)
    if not isinstance(e, OSError):
        return SchemaError(f"{shown}: {what} path cannot be used ({type(e).__name__}: {bounded_repr(str(e))}).")
    code = e.errno
    reason = os.strerror(code) if code else bounded_repr(str(e))
    if code in (errno.ENOENT, errno.ENOTDIR):
        detail = "does not exist" if code == errno.ENOENT else "does not exist (a component of the path is not a directory)"
        return DatasetNotFoundError(f"{shown}: {what} {detail}.", errno=code, filename=path)
    if code in (errno.EACCES, errno.EPERM):
        return DatasetPermissionError(
            f"{shown}: permission denied for {what}; check the file's owner and mode.", errno=code, filename=path
        )
    if writing:
        hint = {
            errno.ENOSPC: " The disk is full: free space and write again.",
            errno.EDQUOT: " The disk quota is exhausted.",
            errno.EFBIG: " The file exceeds the file size limit (ulimit -f) or the filesystem's maximum file size.",
        }.get(code, "")
        return WriteError(f"{shown}: writing {what} failed: {reason}.{hint} Nothing was committed.", errno=code, filename=path)
    return FileAccessError(f"{shown}: cannot access {what}: {reason}.", errno=code, filename=path)


@contextlib.contextmanager
def writing(path: str, what: str = "dataset") -> Iterator[None]:
    """Turns a bare ``OSError`` raised inside the block into :func:`os_error` ``(writing=True)``.

    For the steps of a write (creating, pre-sizing, ``pwrite``, fsync, publishing): a
    full disk, a file size limit or a read-only filesystem then raises a
    :class:`~memseq.WriteError` naming ``path``. Errors that are already memseq errors
    pass unchanged.
    """
    try:
        yield
    except OSError as e:
        if isinstance(e, MemseqError):
            raise
        raise os_error(e, path, what, writing=True) from e


def open_regular(path: str, what: str) -> tuple[int, os.stat_result]:
    """Opens ``path`` read-only if it is a regular file; returns ``(fd, fstat result)``.

    The file is checked with ``stat`` before it is opened, and opened with
    ``O_NONBLOCK`` (so that a FIFO swapped in between cannot block the ``open``) and
    checked again with ``fstat`` on the descriptor, which closes that race. The
    caller owns the descriptor.

    Raises:
        NotRegularFileError: For a FIFO, socket, device or directory.
        DatasetNotFoundError, DatasetPermissionError, FileAccessError: For OS failures.
    """
    try:
        before = os.stat(path)
    except (OSError, ValueError) as e:
        raise os_error(e, path, what) from e
    if not stat.S_ISREG(before.st_mode):
        raise _not_regular(path, what, before.st_mode)
    try:
        fd = os.open(path, _OPEN_FLAGS)
    except (OSError, ValueError) as e:
        raise os_error(e, path, what) from e
    try:
        st = os.fstat(fd)
        if not stat.S_ISREG(st.st_mode):
            raise _not_regular(path, what, st.st_mode)
        if _OPEN_FLAGS & getattr(os, "O_NONBLOCK", 0):
            os.set_blocking(fd, True)  # regular files never block; keep reads plain
    except OSError as e:
        os.close(fd)
        raise os_error(e, path, what) from e
    except BaseException:  # NotRegularFileError, KeyboardInterrupt
        os.close(fd)
        raise
    return fd, st


def _not_regular(path: str, what: str, mode: int) -> NotRegularFileError:
    return NotRegularFileError(f"{bounded_text(path)}: {what} is {describe_mode(mode)}, not a regular file.")


def read_at_most(fd: int, limit: int, path: str, what: str) -> bytes:
    """Reads from ``fd`` until EOF or ``limit + 1`` bytes, whichever comes first.

    The caller compares the length with ``limit``: memory use is bounded by the
    limit, never by the file.
    """
    chunks = []
    left = limit + 1
    try:
        while left > 0:
            chunk = os.read(fd, min(left, 1 << 20))
            if not chunk:
                break
            chunks.append(chunk)
            left -= len(chunk)
    except OSError as e:
        raise os_error(e, path, what) from e
    return b"".join(chunks)
