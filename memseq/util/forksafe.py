"""Fork safety: every lock and thread-owning object of memseq starts afresh in a forked child.

``os.fork()`` copies the memory of the calling thread's process but only the calling
thread. A lock another thread held at that instant stays held in the child, where no
thread will ever release it; a queue served by background threads has no server. A
child that then touches such a lock hangs (Keras' process workers, ``multiprocessing``
with the ``fork`` start method, a user's own ``os.fork``).

This module is memseq's one answer: objects and modules that own locks or threads
register here, and a single ``os.register_at_fork(after_in_child=...)`` hook renews
them in the child, before any code of the child runs:

- :func:`register` (objects, held weakly): the child calls the object's
  ``_after_fork_in_child()``, which replaces its locks and forgets its threads.
- :func:`renew_locks` (module globals): the child gets a fresh ``threading.Lock``
  under each name.
- :func:`on_fork_in_child` (module-level callbacks, held strongly): anything else,
  such as a thread pool to forget.

What each owner must do in its hook: replace every lock (never ``release`` one: the
child does not own it, and the data it guarded may be half-updated, so caches go
too), and drop references to threads and to queues that only those threads served.
"""

from __future__ import annotations

import os
import sys
import threading
import traceback
import weakref
from collections.abc import Callable
from typing import Any

__all__ = ["on_fork_in_child", "register", "renew_locks"]

# Objects to renew in a child, held weakly: registering never keeps an object alive.
# A WeakSet, not a list: a long run creates and drops sequences by the thousand.
_objects: "weakref.WeakSet[Any]" = weakref.WeakSet()
_callbacks: list[Callable[[], None]] = []


def register(obj: Any) -> Any:
    """Renews ``obj`` in a forked child by calling its ``_after_fork_in_child()``; returns ``obj``.

    Call it from ``__init__`` (and ``__setstate__``) of every object that owns a lock
    or a thread. The object is held weakly.
    """
    _objects.add(obj)
    return obj


def renew_locks(namespace: dict[str, Any], *names: str) -> None:
    """Gives ``namespace[name]`` (a module's ``globals()``) a fresh ``threading.Lock`` in a forked child."""

    def renew() -> None:
        for name in names:
            namespace[name] = threading.Lock()

    _callbacks.append(renew)


def on_fork_in_child(callback: Callable[[], None]) -> Callable[[], None]:
    """Calls ``callback()`` in every forked child (usable as a decorator); returns it."""
    _callbacks.append(callback)
    return callback


def _after_fork_in_child() -> None:
    global _objects
    # Module callbacks first: an object's hook may use a module's renewed state.
    for callback in list(_callbacks):
        _call(callback)
    # The set itself may have been mid-update in another thread at the fork: iterate a
    # copy of its underlying refs, then start a fresh set with the live objects.
    live = [ref() for ref in list(_objects.data)]
    _objects = weakref.WeakSet()
    for obj in live:
        if obj is None:
            continue
        _call(obj._after_fork_in_child)
        _objects.add(obj)


def _call(hook: Callable[[], None]) -> None:
    # One failing hook must not leave the others' locks held: report it and go on.
    try:
        hook()
    except Exception:  # noqa: BLE001
        print(f"memseq: a fork hook failed in the child ({hook!r}):", file=sys.stderr)
        traceback.print_exc()


if hasattr(os, "register_at_fork"):
    os.register_at_fork(after_in_child=_after_fork_in_child)
