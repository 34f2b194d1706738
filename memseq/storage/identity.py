"""What identifies a data file across pickling: so that a worker never reads another file.

A pickled column or dataset is opened again, by path, in the process that unpickles it
(a spawn or forkserver worker, a Grain worker). If the path now names another file
(replaced by a rename, truncated, rewritten), that process would read data its parent
never served. So a pickle carries the identity of the file its parent opened:

- ``machine``: the kernel's boot id (Linux), else the host name. Device and inode
  numbers mean something only on the same machine since the same boot; elsewhere (a
  pickle sent to another host that has its own copy of the data) only the size is
  compared.
- ``st_dev``, ``st_ino``: which file. A different one means the file was replaced.
- ``st_size``: a different size means truncated or rewritten.
- ``st_mtime_ns``: a different time means written to since.

A pickle carries the identity as of pickling (:func:`refreshed`): the same inode at
the same size keeps its identity with the current mtime, because the pickling
process reads that inode's current bytes itself (its mapping is shared); another
inode or another size keeps the identity the process opened, so the copy refuses it.

:func:`check` compares a freshly opened file with a pickled identity and raises
:class:`~memseq.DatasetReplacedError` (another file, or the same file modified) or
:class:`~memseq.CorruptFileError` (another size).
"""

from __future__ import annotations

import functools
import os
import socket
from typing import NamedTuple

from memseq.errors import CorruptFileError, DatasetReplacedError
from memseq.util.checks import bounded_text

__all__ = ["FileIdentity", "check", "identity_of", "refreshed"]


class FileIdentity(NamedTuple):
    """The identity of a file as one process saw it (see the module docstring)."""

    machine: str
    dev: int
    ino: int
    size: int
    mtime_ns: int


@functools.lru_cache(maxsize=1)
def _machine() -> str:
    try:
        with open("/proc/sys/kernel/random/boot_id", "rb") as f:
            return "boot:" + f.read(64).decode("ascii", "replace").strip()
    except OSError:
        return "host:" + socket.gethostname()


def identity_of(st: os.stat_result) -> FileIdentity:
    """The identity of the file ``st`` describes (an ``fstat`` of the descriptor that was mapped)."""
    return FileIdentity(_machine(), st.st_dev, st.st_ino, st.st_size, st.st_mtime_ns)


def refreshed(path: str, identity: FileIdentity | None) -> FileIdentity | None:
    """``identity`` with the current mtime if ``path`` still names that file at that size, else unchanged."""
    if identity is None:
        return None
    try:
        now = identity_of(os.stat(path))
    except OSError:
        return identity
    same = (now.machine, now.dev, now.ino, now.size) == (identity.machine, identity.dev, identity.ino, identity.size)
    return now if same else identity


def check(
    path: str, st: os.stat_result, expected: FileIdentity | None, what: str, *, modified: bool = True
) -> None:
    """Raises if the file opened at ``path`` (``st``, its fstat) is not the ``expected`` one.

    Args:
        path: The path opened, for the message.
        st: The fstat of the opened descriptor.
        expected: The identity the pickling process saw; None checks nothing.
        what: What was pickled ("raw column", "dataset"), for the message.
        modified: Whether to compare the mtime too (refuse a file written to since).

    Raises:
        CorruptFileError: If the size differs (truncated or rewritten).
        DatasetReplacedError: If, on the same machine, the path names another file
            (device or inode differ) or the file was modified (mtime differs).
    """
    if expected is None:
        return
    expected = FileIdentity(*expected)
    shown = bounded_text(path)
    advice = "open it again in the parent process and pickle that object anew."
    if expected.machine == _machine() and (st.st_dev, st.st_ino) != (expected.dev, expected.ino):
        raise DatasetReplacedError(
            f"{shown}: this path names another file than the {what} that was pickled (device/inode "
            f"{expected.dev}/{expected.ino} expected, found {st.st_dev}/{st.st_ino}): the file was replaced, and "
            f"the process that pickled it still reads the old one. To read the new file, {advice}"
        )
    if st.st_size != expected.size:
        raise CorruptFileError(
            f"{shown}: the file is {st.st_size} bytes but {expected.size} bytes are expected (its size when the "
            f"{what} was pickled: {'truncated' if st.st_size < expected.size else 'grown'} since). Restore the file, "
            f"or {advice}"
        )
    if modified and expected.machine == _machine() and st.st_mtime_ns != expected.mtime_ns:
        raise DatasetReplacedError(
            f"{shown}: the file was modified after the {what} was pickled (mtime {expected.mtime_ns} ns expected, "
            f"found {st.st_mtime_ns} ns): its bytes may differ from what the pickling process read. {advice[0].upper()}{advice[1:]}"
        )
