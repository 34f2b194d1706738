"""Batch producers: build a sequence's batches ahead, in order, in threads or processes.

``model.fit(seq)`` needs batch ``i + 1 ... i + max_queue_size`` being built while the
model trains on batch ``i``. A producer does that for one epoch: given the batch
indices of the epoch in the order they will be consumed, it builds them with
``workers`` threads or processes, keeps at most ``max_queue_size`` finished or
in-flight batches ahead of the consumer, and yields them in order.

A batch is built by ``build(index, epoch) -> dict of field name -> ndarray`` (the
sequence's ``get_fields``), so what a worker returns is bit-identical to
``seq.get_batch(index, epoch)`` whatever the worker kind or count.

Why not Keras' own ``OrderedEnqueuer``: it waits on ``multiprocessing.Pool`` results
without a timeout, so a worker process that dies (OOM killer, SIGKILL,
``os._exit``) hangs training forever, and ``SystemExit`` or ``KeyboardInterrupt``
raised inside a worker hang it too. Here:

- **Threads** (:class:`ThreadProducer`) run ``build`` on a small
  ``concurrent.futures`` pool. numpy's gathers from a memory map release the GIL,
  so threads scale for reading; any exception, ``BaseException`` included, is
  caught and handed to the consumer.
- **Processes** (:class:`ProcessProducer`) each own a pipe. The parent sends
  ``(index, epoch)``; the worker sends back each array's dtype and shape, then its
  raw bytes, which the parent receives straight into a recycled 64-byte-aligned
  buffer (no pickling of array data, one copy through the kernel). A dispatcher
  thread in the parent waits on the pipes *and on every worker's sentinel*: a
  worker that dies fails the epoch at once with :class:`~memseq.WorkerError`
  naming its exit code or signal and the batch it was building. Workers are
  stopped (and, if need be, killed) when the epoch ends, fails, or is abandoned,
  and they exit on their own if the parent dies (their pipe reaches EOF).
"""

from __future__ import annotations

import concurrent.futures
import multiprocessing
import multiprocessing.connection
import pickle
import signal
import sys
import threading
import traceback
import weakref
from collections.abc import Callable, Iterator, Sequence
from typing import Any

import numpy as np

from memseq._buffers import BufferPool
from memseq.errors import WorkerError

__all__ = ["InlineProducer", "ProcessProducer", "ThreadProducer", "make_producer"]

Batch = dict[str, np.ndarray]
BuildFn = Callable[[int, int], Batch]

# How long the consumer waits between checks that the producer is still alive (the
# dispatcher reports failures at once; this only bounds a wait on a lost wake-up).
_POLL_SECONDS = 0.5
# How long stopping workers may take before they are killed.
_STOP_SECONDS = 2.0


def _describe_exit(exitcode: int | None) -> str:
    if exitcode is None:
        return "an unknown exit status"
    if exitcode < 0:
        try:
            return f"signal {signal.Signals(-exitcode).name}"
        except ValueError:
            return f"signal {-exitcode}"
    return f"exit code {exitcode}"


def _surface(error: BaseException, index: int, epoch: int) -> BaseException:
    """The exception to raise in the consumer for ``error`` raised while building a batch.

    Ordinary exceptions keep their type (``except ValueError`` in user code still
    works). ``SystemExit``, ``KeyboardInterrupt`` and other non-``Exception``
    errors raised *inside a worker* must not stop the training process as if it
    had been asked to exit: they become a :class:`WorkerError` naming them.
    """
    if isinstance(error, Exception):
        return error
    return WorkerError(
        f"A worker raised {type(error).__name__}({', '.join(map(repr, error.args))}) "
        f"while building batch {index} of epoch {epoch}."
    )


class InlineProducer:
    """Builds each batch when the consumer asks for it, in the consumer's thread (``workers=0``).

    Errors propagate unchanged, as from ``seq[i]``: this is the training loop's own
    thread, where a ``KeyboardInterrupt`` is the user's Ctrl-C.
    """

    def __init__(self, build: BuildFn):
        self._build = build

    def epoch(self, indices: Sequence[int], epoch: int) -> Iterator[Batch]:
        """Yields ``build(i, epoch)`` for ``i`` in ``indices``."""
        for index in indices:
            yield self._build(index, epoch)

    def close(self) -> None:
        """Nothing to release."""


class ThreadProducer:
    """Builds batches ahead on ``workers`` threads, at most ``max_queue_size`` ahead."""

    def __init__(self, build: BuildFn, workers: int, max_queue_size: int):
        self._build = build
        self._workers = max(1, workers)
        self._ahead = max(1, max_queue_size)
        self._pool: concurrent.futures.ThreadPoolExecutor | None = None

    def _run(self, index: int, epoch: int) -> tuple[Batch | None, BaseException | None]:
        # BaseException too: a SystemExit in a pool thread would otherwise be
        # re-raised in the consumer as if the main program had asked to exit.
        try:
            return self._build(index, epoch), None
        except BaseException as error:  # noqa: BLE001 - handed to the consumer
            return None, error

    def epoch(self, indices: Sequence[int], epoch: int) -> Iterator[Batch]:
        """Yields the batches ``indices`` of ``epoch`` in order, built ahead on the threads."""
        self.close()
        pool = self._pool = concurrent.futures.ThreadPoolExecutor(self._workers, thread_name_prefix="memseq-worker")
        pending: dict[int, concurrent.futures.Future] = {}
        try:
            for position, index in enumerate(indices):
                for ahead in range(position, min(position + self._ahead, len(indices))):
                    if ahead not in pending:
                        pending[ahead] = pool.submit(self._run, indices[ahead], epoch)
                batch, error = pending.pop(position).result()
                if error is not None:
                    surfaced = _surface(error, index, epoch)
                    raise surfaced from (None if surfaced is error else error)
                if position == len(indices) - 1:
                    self.close()  # as ProcessProducer: nothing left running after the last batch
                yield batch
        finally:
            self.close()

    def close(self) -> None:
        """Cancels what has not started and lets running builds finish in the background."""
        if self._pool is not None:
            self._pool.shutdown(wait=False, cancel_futures=True)
            self._pool = None


def _send_batch(conn: Any, index: int, batch: Batch) -> None:
    arrays = {name: np.ascontiguousarray(array) for name, array in batch.items()}
    conn.send(("batch", index, [(name, a.dtype.str, a.shape) for name, a in arrays.items()]))
    for array in arrays.values():
        conn.send_bytes(memoryview(array).cast("B") if array.nbytes else b"")


def _worker_main(conn: Any, build: BuildFn) -> None:
    """A worker process: builds the batches it is sent until told to stop or the parent goes away."""
    # The parent handles Ctrl-C and stops the workers; a worker interrupted in the
    # middle of sending would leave the pipe half-written.
    signal.signal(signal.SIGINT, signal.SIG_IGN)
    while True:
        try:
            task = conn.recv()
        except (EOFError, OSError):
            return  # the parent closed the pipe or died
        if task is None:
            return
        index, epoch = task
        try:
            batch = build(index, epoch)
        except BaseException as error:  # noqa: BLE001 - reported to the parent, then carry on
            text = "".join(traceback.format_exception(error))
            try:
                pickle.loads(pickle.dumps(error))  # the parent must be able to rebuild it
                conn.send(("error", index, error, text))
            except Exception:  # it does not pickle: send its text
                conn.send(("error", index, None, text))
            continue
        _send_batch(conn, index, batch)


class _Worker:
    """One worker process, its pipe and the batch it is building."""

    def __init__(self, context: Any, build: BuildFn, number: int):
        self.conn, child = context.Pipe(duplex=True)
        self.process = context.Process(
            target=_worker_main, args=(child, build), name=f"memseq-worker-{number}", daemon=True
        )
        self.process.start()
        child.close()
        self.task: tuple[int, int] | None = None  # (position in the epoch, batch index)


def _died(worker: _Worker, epoch: int) -> WorkerError:
    """The error for ``worker``, whose process died while building its batch."""
    # The sentinel (or EOF) comes as the process exits, a moment before the kernel
    # reports its status: wait for it, bounded.
    worker.process.join(_STOP_SECONDS)
    _, index = worker.task
    return WorkerError(
        f"A memseq worker process (pid {worker.process.pid}) died with "
        f"{_describe_exit(worker.process.exitcode)} while building batch {index} of epoch {epoch}. "
        "If it was killed for lack of memory, use fewer workers or a smaller max_queue_size or batch_size."
    )


class _EpochState:
    """Results of one epoch shared by the dispatcher thread and the consumer."""

    def __init__(self, num_batches: int):
        self.cond = threading.Condition()
        self.ready: dict[int, Batch] = {}
        self.error: BaseException | None = None
        self.consumed = 0  # positions handed to the consumer
        self.num_batches = num_batches
        self.stopped = False


class ProcessProducer:
    """Builds batches ahead in ``workers`` processes; a dead worker fails the epoch at once.

    Args:
        build: ``build(index, epoch)``; must pickle cheaply under spawn and
            forkserver (a :class:`~memseq.MemmapSequence`'s bound method does: the
            sequence pickles by reference).
        workers: Worker processes (>= 1).
        max_queue_size: Batches built or being built ahead of the consumer.
        start_method: ``"fork"``, ``"spawn"`` or ``"forkserver"``.
    """

    def __init__(self, build: BuildFn, workers: int, max_queue_size: int, start_method: str):
        self._build = build
        self._num_workers = max(1, workers)
        self._ahead = max(self._num_workers, max_queue_size)
        self._context = multiprocessing.get_context(start_method)
        self._buffers = BufferPool()
        self._workers: list[_Worker] = []
        self._dispatcher: threading.Thread | None = None
        self._state: _EpochState | None = None
        # Workers must not outlive the producer, even if nobody calls close().
        self._finalizer = weakref.finalize(self, ProcessProducer._stop_workers, self._workers)

    # -- the consumer side

    def epoch(self, indices: Sequence[int], epoch: int) -> Iterator[Batch]:
        """Yields the batches ``indices`` of ``epoch`` in order, built ahead in the processes.

        Raises:
            WorkerError: If a worker process dies, or raises a non-``Exception``.
            Exception: What ``build`` raised in a worker, same type where it pickles.
        """
        self.close()
        state = self._state = _EpochState(len(indices))
        self._workers[:] = [_Worker(self._context, self._build, n) for n in range(self._num_workers)]
        self._dispatcher = threading.Thread(
            target=self._dispatch, args=(state, list(indices), epoch), name="memseq-dispatcher", daemon=True
        )
        self._dispatcher.start()
        try:
            for position in range(len(indices)):
                batch = self._take(state, position)
                if position == len(indices) - 1:
                    # Stop the workers with the last batch, not when the consumer
                    # next asks: tf.data and Keras never ask past an epoch's last
                    # batch, and a suspended generator would keep them alive.
                    self.close()
                yield batch
        finally:
            self.close()

    def _take(self, state: _EpochState, position: int) -> Batch:
        with state.cond:
            while position not in state.ready and state.error is None and not state.stopped:
                state.cond.wait(_POLL_SECONDS)
            if state.error is not None and position not in state.ready:
                raise state.error
            if position not in state.ready:
                raise WorkerError(f"The workers were stopped before batch {position} of this epoch was built.")
            state.consumed = position + 1
            state.cond.notify_all()
            return state.ready.pop(position)

    # -- the dispatcher thread

    def _dispatch(self, state: _EpochState, indices: list[int], epoch: int) -> None:
        try:
            self._dispatch_loop(state, indices, epoch)
        except BaseException as error:  # noqa: BLE001 - the consumer raises it
            with state.cond:
                if state.error is None and not state.stopped:
                    state.error = error
                state.cond.notify_all()

    def _dispatch_loop(self, state: _EpochState, indices: list[int], epoch: int) -> None:
        next_position = 0
        in_flight = 0
        while not state.stopped:
            with state.cond:
                limit = min(len(indices), state.consumed + self._ahead)
            for worker in self._workers:
                if worker.task is None and next_position < limit:
                    worker.task = (next_position, indices[next_position])
                    worker.conn.send((indices[next_position], epoch))
                    next_position += 1
                    in_flight += 1
            if in_flight == 0:
                if next_position >= len(indices):
                    return
                with state.cond:  # wait for the consumer to make room
                    if not state.stopped and state.consumed + self._ahead <= next_position:
                        state.cond.wait(_POLL_SECONDS)
                continue
            busy = [w for w in self._workers if w.task is not None]
            waitables = [w.conn for w in busy] + [w.process.sentinel for w in busy]
            for ready in multiprocessing.connection.wait(waitables, timeout=_POLL_SECONDS):
                worker = next(w for w in busy if ready in (w.conn, w.process.sentinel))
                if worker.task is None:
                    continue
                if ready is worker.conn or worker.conn.poll():
                    self._receive(state, worker, epoch)
                else:
                    raise _died(worker, epoch)
                in_flight -= 1

    def _receive(self, state: _EpochState, worker: _Worker, epoch: int) -> None:
        position, index = worker.task
        try:
            message = worker.conn.recv()
            if message[0] == "error":
                _, _, error, text = message
                raise self._remote_error(error, text, index, epoch)
            batch = {}
            for name, dtype, shape in message[2]:
                out = self._buffers.empty(tuple(shape), np.dtype(dtype))
                if out.nbytes:
                    worker.conn.recv_bytes_into(memoryview(out).cast("B"))
                else:
                    worker.conn.recv_bytes()
                batch[name] = out
        except (EOFError, OSError) as error:
            raise _died(worker, epoch) from error
        worker.task = None
        with state.cond:
            state.ready[position] = batch
            state.cond.notify_all()

    @staticmethod
    def _remote_error(error: BaseException | None, text: str, index: int, epoch: int) -> BaseException:
        where = f"while building batch {index} of epoch {epoch} in a worker process"
        cause = WorkerError(f"Traceback in the worker {where}:\n{text}")
        if isinstance(error, Exception):
            error.__cause__ = cause
            return error
        if error is None:
            return WorkerError(f"A worker raised an exception that does not pickle {where}:\n{text}")
        surfaced = _surface(error, index, epoch)
        surfaced.__cause__ = cause
        return surfaced

    # -- stopping

    def close(self) -> None:
        """Stops the dispatcher and the workers (killing any that do not stop in time)."""
        state, self._state = self._state, None
        if state is not None:
            with state.cond:
                state.stopped = True
                state.cond.notify_all()
        if self._dispatcher is not None and self._dispatcher is not threading.current_thread():
            self._dispatcher.join(_STOP_SECONDS + _POLL_SECONDS)
            self._dispatcher = None
        ProcessProducer._stop_workers(self._workers)

    @staticmethod
    def _stop_workers(workers: list[_Worker]) -> None:
        for worker in workers:
            try:
                worker.conn.send(None)
            except (OSError, ValueError):
                pass
        for worker in workers:
            worker.process.join(_STOP_SECONDS if worker.task is None else 0.05)
            if worker.process.is_alive():
                worker.process.kill()
                worker.process.join(_STOP_SECONDS)
            worker.conn.close()
            worker.process.close()
        workers.clear()


def make_producer(
    build: BuildFn, *, workers: int, use_multiprocessing: bool, max_queue_size: int, start_method: str
) -> InlineProducer | ThreadProducer | ProcessProducer:
    """The producer for Keras' worker options.

    ``workers=0`` (without processes) builds batches inline; threads otherwise,
    or processes with ``use_multiprocessing=True``.
    """
    if use_multiprocessing and workers > 0:
        return ProcessProducer(build, workers, max_queue_size, start_method)
    if workers == 0:
        return InlineProducer(build)
    return ThreadProducer(build, workers, max_queue_size)


def default_start_method(backend: str) -> str:
    """The process start method for Keras' ``backend``.

    JAX and PyTorch run threads of their own from the start, and forking a
    multithreaded process can deadlock the child: they get ``forkserver`` (or
    ``spawn`` if the user chose it with ``multiprocessing.set_start_method``; a
    chosen ``fork`` is not honoured there, since multiprocessing itself fixes the
    default to ``fork`` the first time it starts a fork server). TensorFlow keeps the
    start method in effect (``fork`` before Python 3.14), as Keras' own workers do,
    so sequences defined in a notebook still work.
    """
    chosen = multiprocessing.get_start_method(allow_none=True)
    available = multiprocessing.get_all_start_methods()
    if backend in ("jax", "torch") and "forkserver" in available:
        if chosen == "spawn":
            return chosen
        # The fork server imports its preload modules and then forks every worker.
        # Its default preload, __main__, would import the backend into it, and a
        # fork after that is the very thing to avoid; workers import __main__
        # themselves after they start.
        multiprocessing.get_context("forkserver").set_forkserver_preload(["memseq._workers"])
        return "forkserver"
    if chosen is not None:
        return chosen
    # Python's own default, read without fixing it (get_start_method() would).
    if sys.version_info >= (3, 14) and "forkserver" in available:
        return "forkserver"
    return available[0]
