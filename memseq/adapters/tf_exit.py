"""Python functions run by tf.data threads, and an interpreter exit that cannot hang on them.

The hang this prevents: a ``tf.data`` iterator still alive when the interpreter
finalizes (held by the traceback of an uncaught exception, by an exception kept in a
global, by a reference cycle) is destroyed during finalization, with the GIL held.
Its parallel map's destructor waits for the calls it has in flight, and each of those
(a ``tf.numpy_function`` calling memseq) waits for the GIL: the process never exits.
An exception in ``augment`` makes this likely, because the iteration stops while the
pipeline is still filling its buffers.

So every memseq function that tf.data threads call is wrapped by :func:`guarded`, and
an ``atexit`` handler (which runs before finalization, while the GIL can still be
released) makes further calls fail at once and waits, the GIL released, until no call
has been running for a moment. The pipelines' buffers then fill with those failures
and tf.data starts no further calls, so nothing is in flight when finalization
destroys the iterators. The wait is bounded by :data:`_EXIT_WAIT_S`.
"""

from __future__ import annotations

import atexit
import threading
import time
from collections.abc import Callable
from typing import Any

from memseq.util import forksafe as _forksafe

__all__ = ["guarded"]

# Longest wait at exit for tf.data's calls to stop: a pipeline some other thread still
# consumes never stops starting calls, and exit must not wait for it.
_EXIT_WAIT_S = 5.0
# Quiet time that counts as "stopped": longer than tf.data takes to start the next
# call of a pipeline whose buffers are not yet full.
_QUIET_S = 0.1

_running: set[int] = set()  # threads inside a guarded call (set.add/discard are atomic)
_last_start = 0.0
_exiting = False
_registered = False
_register_lock = threading.Lock()


@_forksafe.on_fork_in_child
def _after_fork_in_child() -> None:
    global _register_lock
    _register_lock = threading.Lock()
    _running.clear()  # the threads counted there do not exist in the child


class InterpreterExitingError(RuntimeError):
    """A tf.data pipeline asked memseq for a batch while the interpreter was exiting."""


def guarded(fn: Callable[..., Any]) -> Callable[..., Any]:
    """``fn`` for tf.data to call from its threads: counted, and refused once the interpreter exits."""
    _register_exit_handler()

    def call(*args: Any) -> Any:
        global _last_start
        if _exiting:
            raise InterpreterExitingError("memseq: the interpreter is exiting; no further batches are built.")
        me = threading.get_ident()
        _running.add(me)
        _last_start = time.monotonic()
        try:
            return fn(*args)
        finally:
            _running.discard(me)

    return call


def _register_exit_handler() -> None:
    global _registered
    if _registered:
        return
    with _register_lock:
        if not _registered:
            # Registered after TensorFlow was imported (the wrapped functions are made
            # for a pipeline), so it runs before TensorFlow's own exit handlers.
            atexit.register(_quiesce)
            _registered = True


def _quiesce() -> None:
    """At exit: refuse further calls and wait until tf.data has no call in flight."""
    global _exiting
    _exiting = True
    deadline = time.monotonic() + _EXIT_WAIT_S
    while time.monotonic() < deadline:
        if not _running and time.monotonic() - _last_start > _QUIET_S:
            return
        time.sleep(0.01)  # releases the GIL: calls waiting for it run, and fail at once
