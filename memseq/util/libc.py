"""memseq's one binding of the C library: typed wrappers of the few calls Python lacks.

The process's C library is loaded once (``ctypes.CDLL(None, use_errno=True)``); each
call is bound once, with its argument and result types. Contract of every wrapper:

- On failure it raises :class:`OSError` with the call's ``errno`` (and
  ``os.strerror`` of it), as the ``os`` module's own calls do.
- Where the C library (or this platform) lacks the call, it raises
  ``OSError(errno.ENOSYS)``; :func:`available` tells beforehand, for callers whose
  fallback differs from their error path.

Addresses are Python ints. Nothing here checks that an address is mapped: the
kernel does (``EFAULT``, ``ENOMEM``), or, for reads through an address, the caller
must. The layouts of ``struct sigaction`` and ``siginfo_t`` written out here are
those of Linux on 64-bit x86 and ARM (glibc and musl); callers check the platform.
"""

from __future__ import annotations

import ctypes
import errno
import mmap as _mmap_module
import os
from collections.abc import Callable
from typing import Any

import numpy as np

__all__ = [
    "AT_FDCWD",
    "MADV_POPULATE_READ",
    "PR_SET_PDEATHSIG",
    "RENAME_EXCHANGE",
    "SIGACTION_HANDLER",
    "Sigaction",
    "available",
    "bind",
    "handler_address",
    "madvise",
    "mincore",
    "mincore_page",
    "mmap",
    "munmap",
    "prctl",
    "raise_signal",
    "renameat2",
    "sigaction",
    "siginfo_address",
    "siginfo_code",
]

MADV_POPULATE_READ = 22  # Linux 5.14; not in the mmap module
RENAME_EXCHANGE = 2  # renameat2 flag: swap the two paths atomically
AT_FDCWD = -100  # "relative to the current directory" for the *at calls
PR_SET_PDEATHSIG = 1  # prctl: the signal this process gets when its parent thread exits

_PAGE = _mmap_module.PAGESIZE
_MAP_FAILED = ctypes.c_void_p(-1).value

try:
    _LIBC: ctypes.CDLL | None = ctypes.CDLL(None, use_errno=True)
except (OSError, TypeError):  # TypeError: platforms where CDLL needs a name (Windows)
    _LIBC = None


def bind(name: str, restype: Any, argtypes: list[Any]) -> Any:
    """The C library's function ``name`` with these types, or None where it has none.

    For calls only a benchmark or a probe makes; memseq's own calls have wrappers here.
    """
    if _LIBC is None:
        return None
    try:
        function = getattr(_LIBC, name)
    except AttributeError:
        return None
    function.restype = restype
    function.argtypes = argtypes
    return function


class Sigaction(ctypes.Structure):
    """``struct sigaction`` of glibc and musl on x86-64 and aarch64."""

    _fields_ = [
        ("handler", ctypes.c_void_p),
        ("mask", ctypes.c_ulong * (128 // ctypes.sizeof(ctypes.c_ulong))),
        ("flags", ctypes.c_int),
        ("restorer", ctypes.c_void_p),
    ]


#: The C type of an ``SA_SIGINFO`` handler: ``void handler(int, siginfo_t *, void *)``.
SIGACTION_HANDLER = ctypes.CFUNCTYPE(None, ctypes.c_int, ctypes.c_void_p, ctypes.c_void_p)

_c_madvise = bind("madvise", ctypes.c_int, [ctypes.c_void_p, ctypes.c_size_t, ctypes.c_int])
_c_mincore = bind("mincore", ctypes.c_int, [ctypes.c_void_p, ctypes.c_size_t, ctypes.c_void_p])
_c_mmap = bind(
    "mmap", ctypes.c_void_p, [ctypes.c_void_p, ctypes.c_size_t, ctypes.c_int, ctypes.c_int, ctypes.c_int, ctypes.c_int64]
)
_c_munmap = bind("munmap", ctypes.c_int, [ctypes.c_void_p, ctypes.c_size_t])
_c_prctl = bind("prctl", ctypes.c_int, [ctypes.c_int, ctypes.c_ulong, ctypes.c_ulong, ctypes.c_ulong, ctypes.c_ulong])
_c_renameat2 = bind("renameat2", ctypes.c_int, [ctypes.c_int, ctypes.c_char_p, ctypes.c_int, ctypes.c_char_p, ctypes.c_uint])
_c_sigaction = bind("sigaction", ctypes.c_int, [ctypes.c_int, ctypes.POINTER(Sigaction), ctypes.POINTER(Sigaction)])
_c_raise = bind("raise", ctypes.c_int, [ctypes.c_int])  # raise: a Python keyword, so no attribute access

_BOUND: dict[str, Callable[..., Any] | None] = {
    "madvise": _c_madvise,
    "mincore": _c_mincore,
    "mmap": _c_mmap,
    "munmap": _c_munmap,
    "prctl": _c_prctl,
    "renameat2": _c_renameat2,
    "sigaction": _c_sigaction,
    "raise": _c_raise,
}


def available(*names: str) -> bool:
    """Whether the C library has every one of the calls ``names`` (C names: ``"raise"``, not ``raise_signal``)."""
    return all(_BOUND.get(name) is not None for name in names)


def _error(*filenames: Any) -> OSError:
    code = ctypes.get_errno()
    return OSError(code, os.strerror(code), *filenames)


def _missing(name: str) -> OSError:
    return OSError(errno.ENOSYS, f"{os.strerror(errno.ENOSYS)}: the C library has no {name}()")


def madvise(address: int, length: int, advice: int) -> None:
    """``madvise(address, length, advice)``: advice about the pages of ``[address, address + length)``.

    Raises:
        OSError: With the call's errno (``EINVAL`` for advice this kernel does not
            know, ``ENOMEM`` for an unmapped range, ``EFAULT`` past a file's end).
    """
    if _c_madvise is None:
        raise _missing("madvise")
    if _c_madvise(address, length, advice) != 0:
        raise _error()


def mincore(address: int, length: int) -> np.ndarray:
    """Residency of the pages of ``[address, address + length)`` (``address`` page-aligned, mapped).

    Returns:
        One uint8 per page; bit 0 set where the page is in memory.

    Raises:
        OSError: With the call's errno (``ENOMEM`` for an unmapped range, ``EINVAL``
            for an unaligned address).
    """
    if _c_mincore is None:
        raise _missing("mincore")
    vec = (ctypes.c_ubyte * -(-length // _PAGE))()
    if _c_mincore(address, length, vec) != 0:
        raise _error()
    return np.frombuffer(vec, np.uint8)


def mincore_page(address: int) -> bool:
    """Whether the page at ``address`` (page-aligned, mapped) is in memory: :func:`mincore` for one page.

    One byte on the stack instead of an array: cheap enough to probe every batch.

    Raises:
        OSError: With the call's errno.
    """
    if _c_mincore is None:
        raise _missing("mincore")
    vec = ctypes.c_ubyte(0)
    if _c_mincore(address, _PAGE, ctypes.byref(vec)) != 0:
        raise _error()
    return bool(vec.value & 1)


def mmap(address: int | None, length: int, prot: int, flags: int, fd: int, offset: int) -> int:
    """``mmap``: maps ``length`` bytes and returns the mapping's address.

    Unlike Python's ``mmap.mmap``, keeps no descriptor and can map at a fixed address.

    Raises:
        OSError: With the call's errno when it returns ``MAP_FAILED``.
    """
    if _c_mmap is None:
        raise _missing("mmap")
    got = _c_mmap(address, length, prot, flags, fd, offset)
    if got is None or got == _MAP_FAILED:
        raise _error()
    return got


def munmap(address: int, length: int) -> None:
    """``munmap(address, length)``.

    Raises:
        OSError: With the call's errno.
    """
    if _c_munmap is None:
        raise _missing("munmap")
    if _c_munmap(address, length) != 0:
        raise _error()


def prctl(option: int, arg2: int = 0, arg3: int = 0, arg4: int = 0, arg5: int = 0) -> int:
    """``prctl(option, arg2, arg3, arg4, arg5)`` (Linux); returns the call's result.

    Raises:
        OSError: With the call's errno when it returns -1.
    """
    if _c_prctl is None:
        raise _missing("prctl")
    result = _c_prctl(option, arg2, arg3, arg4, arg5)
    if result == -1:
        raise _error()
    return result


def renameat2(old: str, new: str, flags: int, *, old_dir_fd: int = AT_FDCWD, new_dir_fd: int = AT_FDCWD) -> None:
    """``renameat2`` (Linux 3.15): ``flags=RENAME_EXCHANGE`` swaps ``old`` and ``new`` atomically.

    Raises:
        OSError: With the call's errno and both paths, as ``os.rename`` reports them
            (``EINVAL`` or ``ENOTSUP`` where the file system cannot exchange).
    """
    if _c_renameat2 is None:
        raise _missing("renameat2")
    if _c_renameat2(old_dir_fd, os.fsencode(old), new_dir_fd, os.fsencode(new), flags) != 0:
        raise _error(old, None, new)


def sigaction(signum: int, action: Sigaction | None, old: Sigaction | None) -> None:
    """``sigaction``: installs ``action`` (if given) for ``signum``, storing the previous one in ``old`` (if given).

    Raises:
        OSError: With the call's errno.
    """
    if _c_sigaction is None:
        raise _missing("sigaction")
    new_ref = None if action is None else ctypes.byref(action)
    old_ref = None if old is None else ctypes.byref(old)
    if _c_sigaction(signum, new_ref, old_ref) != 0:
        raise _error()


def raise_signal(signum: int) -> None:
    """C ``raise(signum)``, without Python's signal machinery (safe inside a signal handler).

    Raises:
        OSError: With the call's errno.
    """
    if _c_raise is None:
        raise _missing("raise")
    if _c_raise(signum) != 0:
        raise _error()


def siginfo_code(info: int) -> int:
    """``si_code`` of the ``siginfo_t`` at address ``info``: > 0 for a fault, <= 0 for a sent signal."""
    return ctypes.c_int.from_address(info + 8).value


# siginfo_t on 64-bit: three ints and padding, then the union, whose first member is si_addr.
_SI_ADDR_OFFSET = 16


def siginfo_address(info: int) -> int:
    """``si_addr`` of the ``siginfo_t`` at address ``info`` (the faulting address; 0 if none)."""
    return ctypes.c_void_p.from_address(info + _SI_ADDR_OFFSET).value or 0


def handler_address(handler: Any) -> int:
    """The C address of a :data:`SIGACTION_HANDLER` callback (keep the callback alive while installed)."""
    return ctypes.cast(handler, ctypes.c_void_p).value
