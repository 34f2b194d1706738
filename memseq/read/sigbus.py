"""The guarded copy: a SIGBUS inside one of memseq's file mappings becomes CorruptFileError.

A copy out of a mapped file that was truncated after it was mapped faults at the first
page past the file's new end, and the kernel sends SIGBUS, whose default action kills
the process. A size check before the copy cannot close that window; this module does:

- When memseq maps a file it registers the mapping here (:func:`register`), and makes
  sure its SIGBUS handler is the process's (installed on the first mapping, installed
  again if something replaced it since).
- On a SIGBUS whose fault address lies inside a registered mapping, the handler marks
  the mapping *torn* (:attr:`Region.torn`) and replaces all of it, at the same address,
  with read-only anonymous zero pages. The faulting copy (and any other thread's copy
  of the same file) then finishes, reading zeros.
- Every reader checks after each copy, before handing anything out, that the file did
  not shrink and the mapping is not torn (``MappedFile.check_size``), and raises
  :class:`~memseq.CorruptFileError` otherwise: the zeros never leave memseq. A torn
  mapping stays torn; the dataset must be opened again.
- Any other SIGBUS goes to the handler that was in place before, called directly; then
  the default action ends the process, as it would have without memseq (a SIGBUS sent
  with ``kill`` to a process whose previous handler was a function goes to that
  function only; an ignored one stays ignored).

The handler is Python, called by ctypes in the faulting thread: it takes the GIL, looks
the address up, makes one ``mmap`` call. It runs only for faults in memory-mapped
files, which in a memseq process means a truncated file. A SIGBUS handler installed
after memseq mapped its files (``faulthandler.enable()``, ``signal.signal``) takes
precedence until memseq maps its next file. ``MEMSEQ_SIGBUS_GUARD=0`` in the
environment (read at import) leaves SIGBUS alone: a file truncated during a read then
kills the process. Linux on x86-64 and aarch64 only (the layout of ``struct
sigaction`` and ``siginfo_t`` is written out here); elsewhere :data:`ACTIVE` is False.
"""

from __future__ import annotations

import bisect
import mmap
import os
import platform
import signal
import sys

from memseq.util import libc as _libc

__all__ = ["ACTIVE", "Region", "register", "forget"]

_SIGBUS = int(signal.SIGBUS)
_SA_SIGINFO = 0x4
_SA_RESTART = 0x10000000
# No SA_ONSTACK: the handler runs Python, which needs the thread's stack, not a small
# alternate one (faulthandler's is a few pages).
_SIG_DFL, _SIG_IGN = 0, 1
_MAP_FIXED = 0x10
_MAP_NORESERVE = 0x4000

_Sigaction = _libc.Sigaction

# The layouts of struct sigaction and siginfo_t in memseq.util.libc are those of 64-bit
# Linux on x86 and ARM.
ACTIVE = (
    sys.platform.startswith("linux")
    and _libc.available("sigaction", "mmap", "raise")
    and platform.machine() in ("x86_64", "aarch64")
    and sys.maxsize > 2**32
    and os.environ.get("MEMSEQ_SIGBUS_GUARD", "1") != "0"
)


class Region:
    """One registered mapping: ``[start, stop)`` in memory, and whether a SIGBUS tore it."""

    __slots__ = ("start", "stop", "torn")

    def __init__(self, start: int, stop: int):
        self.start, self.stop = start, stop
        self.torn = False


# Registered mappings by start address, and the sorted starts (the handler bisects them).
# No lock (a lock held by another thread at a fork would hang the child): every change
# is one dict or list operation, which the GIL keeps whole, and two live mappings never
# share a start address. The handler reads them holding the GIL.
_regions: dict[int, Region] = {}
_starts: list[int] = []
_previous = _Sigaction()  # the action the handler passes other faults on to


def register(start: int, length: int) -> Region:
    """Guards the mapping ``[start, start + length)``; call :func:`forget` before unmapping it."""
    region = Region(start, start + length)
    if not ACTIVE or length <= 0:
        return region
    _regions[start] = region
    bisect.insort(_starts, start)
    _install()
    return region


def forget(region: Region) -> None:
    """Stops guarding ``region`` (its memory is about to be unmapped)."""
    if not ACTIVE or _regions.get(region.start) is not region:
        return
    _regions.pop(region.start, None)
    try:
        _starts.remove(region.start)
    except ValueError:
        pass  # forgotten by another thread meanwhile (close() and the unmapper racing)


def _install() -> None:
    """Makes the guard the process's SIGBUS action, keeping the one it replaces."""
    global _previous
    current = _Sigaction()
    try:
        _libc.sigaction(_SIGBUS, None, current)
    except OSError:
        return
    if current.handler == _handler_address:
        return
    action = _Sigaction()
    action.handler = _handler_address
    action.flags = _SA_SIGINFO | _SA_RESTART
    previous = _Sigaction()
    try:
        _libc.sigaction(_SIGBUS, action, previous)
    except OSError:
        return
    if previous.handler != _handler_address:
        _previous = previous  # (another thread may have installed the guard meanwhile: never chain to itself)


def _region_of(address: int) -> Region | None:
    i = bisect.bisect_right(_starts, address) - 1
    if i < 0:
        return None
    region = _regions.get(_starts[i])
    return region if region is not None and region.start <= address < region.stop else None


_failures = 0  # handler runs in a row that raised (a KeyboardInterrupt can land in one)


def _on_sigbus(signo: int, info: int, context: int) -> None:
    global _failures
    try:
        code = _libc.siginfo_code(info)
        if code > 0:  # a fault, not a signal someone sent
            region = _region_of(_libc.siginfo_address(info))
            if region is not None:
                region.torn = True  # before the zeros appear: a reader that sees them sees this
                try:
                    got = _libc.mmap(
                        region.start,
                        region.stop - region.start,
                        mmap.PROT_READ,
                        mmap.MAP_PRIVATE | mmap.MAP_ANONYMOUS | _MAP_FIXED | _MAP_NORESERVE,
                        -1,
                        0,
                    )
                except OSError:
                    got = None  # not replaced: the fault goes on as if memseq were not here
                if got == region.start:
                    _failures = 0
                    return  # the copy resumes, reading zeros
        _pass_on(signo, info, context, code > 0)
    except BaseException:  # noqa: BLE001 - nothing may escape a signal handler
        # Python code can raise anywhere (a KeyboardInterrupt delivered in here): a
        # fault comes back when the instruction re-executes, so try again, a few times.
        _failures += 1
        if _failures > 3:
            _die()


def _pass_on(signo: int, info: int, context: int, fault: bool) -> None:
    """Gives a SIGBUS that is not memseq's to the action that was in place before."""
    previous = _previous.handler or _SIG_DFL
    if previous not in (_SIG_DFL, _SIG_IGN):
        # Called directly, not restored as the action: a handler that chains to its own
        # predecessor by raising (faulthandler) could chain back here and loop.
        _libc.SIGACTION_HANDLER(previous)(signo, info, context)
    if fault:
        # Returning re-executes the faulting instruction: it must meet the default
        # action (the process ends with SIGBUS), never this handler again.
        _die_on_return()
    elif previous == _SIG_DFL:
        _die()


def _die_on_return() -> None:
    try:
        _libc.sigaction(_SIGBUS, _Sigaction(), None)  # SIG_DFL
    except OSError:
        pass  # nothing better to do inside the handler


def _die() -> None:
    """The default action for this SIGBUS: sent again, it ends the process once this handler returns."""
    _die_on_return()
    try:
        _libc.raise_signal(_SIGBUS)
    except OSError:
        pass  # nothing better to do inside the handler


_handler = _libc.SIGACTION_HANDLER(_on_sigbus) if ACTIVE else None
_handler_address = _libc.handler_address(_handler) if ACTIVE else None
