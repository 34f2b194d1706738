"""Process workers for memseq's batch producers (see :mod:`memseq.batching.workers` for the contract).

A worker process receives ``(position, index, epoch)`` tasks through its own pipe and
sends back each batch's pickled structure with its arrays out of band (pickle protocol
5); the parent receives each array's bytes straight into a recycled 64-byte-aligned
buffer. A dispatcher thread in the parent starts the workers (so that their parent-death
signal is tied to a thread that lives as long as they do), hands out tasks in order, and
watches every worker's pidfd.
"""

from __future__ import annotations

import itertools
import multiprocessing
import multiprocessing.connection
import os
import pickle
import queue
import signal
import sys
import threading
import traceback
import weakref
from collections.abc import Callable, Iterable, Iterator
from typing import Any

import numpy as np

from memseq.batching.buffers import BufferPool
from memseq.batching.producer_common import BuildFn, epoch_bound, queue_bound, surface
from memseq.errors import WorkerError
from memseq.util import forksafe as _forksafe
from memseq.util import libc as _libc

__all__ = ["ProcessProducer"]


# How long stopping a worker may take before it is killed.
_STOP_SECONDS = 2.0
# Without pidfds (not Linux, or a kernel before 5.3), how often busy workers are polled.
_POLL_SECONDS = 0.5

# The trainer's ends of every worker pipe, so that a worker forked later closes its
# inherited copies (held weakly: a closed producer's connections drop out).
_parent_ends: "weakref.WeakSet[Any]" = weakref.WeakSet()


def _describe_exit(exitcode: int | None) -> str:
    if exitcode is None:
        return "an unknown exit status"
    if exitcode < 0:
        try:
            return f"signal {signal.Signals(-exitcode).name}"
        except ValueError:
            return f"signal {-exitcode}"
    return f"exit code {exitcode}"


def _die_with_parent() -> None:
    """Asks Linux to SIGKILL this process when its parent (thread) exits."""
    if not sys.platform.startswith("linux"):
        return
    try:
        _libc.prctl(_libc.PR_SET_PDEATHSIG, signal.SIGKILL)
    except OSError:  # no prctl: the pipe's EOF still ends the worker
        pass


def _send_batch(conn: Any, tag: int, batch: Any) -> None:
    buffers: list[pickle.PickleBuffer] = []
    header = pickle.dumps(batch, protocol=5, buffer_callback=buffers.append)
    raws = [buffer.raw() for buffer in buffers]
    conn.send(("batch", tag, header, [raw.nbytes for raw in raws]))
    for raw in raws:
        conn.send_bytes(raw)


def _worker_main(conn: Any, build: BuildFn, parent_pid: int | None) -> None:
    """A worker process: builds the batches it is sent until told to stop or the parent goes away."""
    _die_with_parent()
    # Under fork this process inherited the trainer's end of its own pipe and of every
    # other worker's: close them, or no pipe reaches EOF when the trainer dies.
    for end in list(_parent_ends):
        end.close()
    if parent_pid is not None and os.getppid() != parent_pid:
        return  # the parent died before the death signal was armed
    # The parent handles Ctrl-C and stops the workers; a worker interrupted in the
    # middle of sending would leave the pipe half-written.
    signal.signal(signal.SIGINT, signal.SIG_IGN)
    while True:
        try:
            message = conn.recv()
        except (EOFError, OSError):
            return  # the parent closed the pipe or died
        if message is None:
            return
        if message[0] == "build":
            build = message[1]
            continue
        _, tag, index, epoch = message
        try:
            batch = build(index, epoch)
        except BaseException as error:  # noqa: BLE001 - reported to the parent, then carry on
            text = "".join(traceback.format_exception(error))
            try:
                pickle.loads(pickle.dumps(error))  # the parent must be able to rebuild it
                conn.send(("error", tag, error, text))
            except Exception:  # it does not pickle: send its text
                conn.send(("error", tag, None, text))
            continue
        _send_batch(conn, tag, batch)


class _Worker:
    """One worker process, its pipe, its pidfd and the batch it is building."""

    def __init__(self, context: Any, build: BuildFn, number: int):
        self.start_method = context.get_start_method()
        self.conn, child = context.Pipe(duplex=True)
        _parent_ends.add(self.conn)
        # Under forkserver the parent is the fork server, not this process.
        parent_pid = None if self.start_method == "forkserver" else os.getpid()
        self.process = context.Process(
            target=_worker_main, args=(child, build, parent_pid), name=f"memseq-worker-{number}", daemon=True
        )
        self.process.start()
        child.close()
        self.pidfd: int | None = None
        if hasattr(os, "pidfd_open"):
            try:
                self.pidfd = os.pidfd_open(self.process.pid)
            except OSError:  # kernel without pidfds
                pass
        self.task: tuple[int, int] | None = None  # (position in the epoch, batch index)
        self.delivered = False  # whether it ever sent a batch

    @property
    def death_watch(self) -> Any:
        return self.pidfd if self.pidfd is not None else self.process.sentinel

    def died(self, epoch: int) -> WorkerError:
        """The error for this worker, whose process died."""
        # The pidfd is readable as the process exits, a moment before its status is
        # reported: wait for it, bounded.
        self.process.join(_STOP_SECONDS)
        exitcode = self.process.exitcode
        what = "while idle" if self.task is None else f"while building batch {self.task[1]} of epoch {epoch}"
        if exitcode == -signal.SIGKILL:
            hint = (
                "It was killed with SIGKILL, often by the kernel's OOM killer: use fewer workers "
                "or a smaller max_queue_size or batch_size."
            )
        elif exitcode is not None and exitcode >= 0 and not self.delivered and self.start_method != "fork":
            hint = (
                f"Under the {self.start_method!r} start method each worker imports your main module: "
                "a script that starts training at top level needs an `if __name__ == \"__main__\":` guard "
                "(the worker's own traceback above says more)."
            )
        else:
            hint = "Its own output (stderr) may say why."
        return WorkerError(
            f"A memseq worker process (pid {self.process.pid}) died with {_describe_exit(exitcode)} {what}. {hint}"
        )

    def stop(self) -> None:
        try:
            self.conn.send(None)
        except (OSError, ValueError):
            pass
        self.process.join(_STOP_SECONDS if self.task is None else 0.05)
        if self.process.is_alive():
            self.process.kill()
            self.process.join(_STOP_SECONDS)
        self.conn.close()
        if self.pidfd is not None:
            os.close(self.pidfd)
            self.pidfd = None
        self.process.close()


class _Run:
    """One epoch's exchange between the consumer and the dispatcher thread."""

    def __init__(self, indices: Iterable[int], epoch: int, ahead: float, wake: Callable[[], None]):
        self.indices = iter(indices)
        self.epoch = epoch
        self.ahead = ahead
        self.wake = wake
        self.cond = threading.Condition()
        # position -> (batch, None) or (None, error); ``end`` is the number of positions.
        self.results: dict[int, tuple[Any, BaseException | None]] = {}
        self.end: int | None = None
        self.consumed = 0
        self.cancelled = False

    def put(self, position: int, batch: Any, error: BaseException | None = None) -> None:
        with self.cond:
            self.results[position] = (batch, error)
            self.cond.notify_all()

    def close_at(self, end: int) -> None:
        with self.cond:
            self.end = end if self.end is None else min(self.end, end)
            self.cond.notify_all()

    def take(self, position: int) -> tuple[bool, Any]:
        """``(True, batch)``, or ``(False, None)`` past the end; raises the batch's error."""
        with self.cond:
            while position not in self.results and (self.end is None or position < self.end):
                self.cond.wait()
            if position not in self.results:
                return False, None
            batch, error = self.results.pop(position)
            self.consumed = position + 1
        self.wake()
        if error is not None:
            raise error
        return True, batch

    def room(self) -> float:
        with self.cond:
            return self.consumed + self.ahead


class _Pool:
    """The worker processes and the dispatcher thread that starts and serves them.

    Kept apart from :class:`ProcessProducer` so that the thread refers only to this
    object, and a producer that nobody references can be collected (which stops it).
    """

    def __init__(self, build: BuildFn, workers: int, start_method: str, refresh: bool):
        self.build = build
        self.num_workers = workers
        self.context = multiprocessing.get_context(start_method)
        self.refresh = refresh
        self.buffers = BufferPool()
        self.workers: list[_Worker] = []
        self.runs: queue.SimpleQueue[_Run | None] = queue.SimpleQueue()
        self.wake_r, self.wake_w = os.pipe()
        os.set_blocking(self.wake_w, False)
        self.thread = threading.Thread(target=self.serve, name="memseq-dispatcher", daemon=True)
        self.thread.start()

    def wake(self) -> None:
        try:
            os.write(self.wake_w, b"\0")
        except (BlockingIOError, OSError):
            pass  # the pipe is full: the dispatcher has wake-ups pending anyway

    def serve(self) -> None:
        try:
            while True:
                run = self.runs.get()
                if run is None:
                    return
                try:
                    self.start_workers()
                    self.run_epoch(run)
                except BaseException as error:  # noqa: BLE001 - the consumer raises it
                    self.fail(run, error)
                    self.stop_workers()  # their pipes may hold half an exchange: start afresh
        finally:
            self.stop_workers()
            os.close(self.wake_r)
            os.close(self.wake_w)

    def stop_workers(self) -> None:
        for worker in self.workers:
            worker.stop()
        self.workers.clear()

    def start_workers(self) -> None:
        if self.workers and self.refresh:
            for worker in self.workers:
                worker.conn.send(("build", self.build))
        while len(self.workers) < self.num_workers:
            self.workers.append(_Worker(self.context, self.build, len(self.workers)))

    def fail(self, run: _Run, error: BaseException) -> None:
        """Makes ``error`` the outcome of the first position not yet built."""
        with run.cond:
            position = min([w.task[0] for w in self.workers if w.task is not None], default=None)
            if position is None:
                position = max(run.results, default=run.consumed - 1) + 1
            run.results.setdefault(position, (None, error))
            run.end = position + 1 if run.end is None else min(run.end, position + 1)
            run.cond.notify_all()

    def run_epoch(self, run: _Run) -> None:
        next_position = 0
        exhausted = False
        failed = False
        while True:
            if run.cancelled:
                failed = True
            if not failed and not exhausted:
                room = run.room()
                for worker in self.workers:
                    if worker.task is None and next_position < room:
                        index = next(run.indices, None)
                        if index is None:
                            exhausted = True
                            run.close_at(next_position)
                            break
                        worker.task = (next_position, index)
                        worker.conn.send(("task", next_position, index, run.epoch))
                        next_position += 1
            busy = [w for w in self.workers if w.task is not None]
            if not busy and (failed or exhausted):
                return
            waitables = [self.wake_r] + [w.conn for w in busy] + [w.death_watch for w in self.workers]
            timeout = None if all(w.pidfd is not None for w in self.workers) else _POLL_SECONDS
            for ready in multiprocessing.connection.wait(waitables, timeout):
                if ready == self.wake_r:
                    os.read(self.wake_r, 4096)
                    continue
                for worker in list(self.workers):
                    if ready is worker.conn:
                        if worker.task is not None:
                            failed |= self.receive(run, worker)
                    elif ready == worker.death_watch:
                        if worker.task is not None and worker.conn.poll():
                            failed |= self.receive(run, worker)  # it sent its batch, then died
                        if worker in self.workers:
                            self.bury(run, worker, next_position)
                            failed = True
            if timeout is not None:
                for worker in list(self.workers):  # no pidfd: a forked grandchild may hold the sentinel
                    if worker.task is not None and not worker.process.is_alive() and not worker.conn.poll():
                        self.bury(run, worker, next_position)
                        failed = True

    def bury(self, run: _Run, worker: _Worker, next_position: int) -> None:
        """Fails ``run`` at the dead ``worker``'s batch (or the next one, if it was idle)."""
        position = worker.task[0] if worker.task is not None else next_position
        run.put(position, None, worker.died(run.epoch))
        run.close_at(position + 1)
        self.workers.remove(worker)
        worker.task = None
        worker.stop()

    def receive(self, run: _Run, worker: _Worker) -> bool:
        """Takes ``worker``'s finished batch (or error); returns whether the run failed."""
        position, index = worker.task
        try:
            message = worker.conn.recv()
            if message[0] == "error":
                _, _, error, text = message
                worker.task = None
                run.put(position, None, _remote_error(error, text, index, run.epoch))
                run.close_at(position + 1)
                return True
            _, _, header, sizes = message
            buffers = []
            for size in sizes:
                out = self.buffers.empty((size,), np.dtype(np.uint8))
                if size:
                    worker.conn.recv_bytes_into(out)
                else:
                    worker.conn.recv_bytes()
                buffers.append(out)
            batch = pickle.loads(header, buffers=buffers)
        except (EOFError, OSError):
            self.bury(run, worker, position)
            return True
        worker.task = None
        worker.delivered = True
        run.put(position, batch)
        return False

    def submit(self, run: _Run) -> None:
        self.runs.put(run)

    def shutdown(self) -> None:
        """Stops the workers and the thread (waits for both, bounded)."""
        if self.thread.is_alive():
            self.runs.put(None)
            self.wake()
            if self.thread is not threading.current_thread():
                self.thread.join(_STOP_SECONDS * 2 + 1)


def _remote_error(error: BaseException | None, text: str, index: int, epoch: int) -> BaseException:
    where = f"while building batch {index} of epoch {epoch} in a worker process"
    cause = WorkerError(f"Traceback in the worker {where}:\n{text}")
    if isinstance(error, Exception):
        error.__cause__ = cause
        return error
    if error is None:
        return WorkerError(f"A worker raised an exception that does not pickle {where}:\n{text}")
    surfaced = surface(error, index, epoch)
    surfaced.__cause__ = cause
    return surfaced


class ProcessProducer:
    """Builds batches ahead in ``workers`` persistent processes; a dead worker fails the epoch at once.

    Args:
        build: ``build(index, epoch)``; must pickle cheaply under spawn and
            forkserver (a :class:`~memseq.MemmapSequence` pickles by reference).
        workers: Worker processes (>= 1).
        max_queue_size: Batches built or being built ahead of the consumer (0: no bound).
        start_method: ``"fork"``, ``"spawn"`` or ``"forkserver"``.
        refresh: Send ``build`` to the workers again at the start of every epoch.
    """

    def __init__(self, build: BuildFn, workers: int, max_queue_size: int, start_method: str, *, refresh: bool = False):
        self._build = build
        self._num_workers = max(1, workers)
        self._ahead = queue_bound(max_queue_size, self._num_workers)
        self._start_method = start_method
        self._refresh = refresh
        self._pool: _Pool | None = None
        self._run: _Run | None = None
        self._finalizer: weakref.finalize | None = None
        _forksafe.register(self)

    def epoch(self, indices: Iterable[int], epoch: int) -> Iterator[Any]:
        """Yields the batches ``indices`` of ``epoch`` in order, built ahead in the processes.

        Raises:
            WorkerError: If a worker process dies, or raises a non-``Exception``.
            Exception: What ``build`` raised in a worker, same type where it pickles.
        """
        self._end_run()
        if self._pool is None or not self._pool.thread.is_alive():
            self._pool = _Pool(self._build, self._num_workers, self._start_method, self._refresh)
            self._finalizer = weakref.finalize(self, _Pool.shutdown, self._pool)
        pool = self._pool
        run = self._run = _Run(indices, epoch, epoch_bound(self._ahead, indices, self._num_workers), pool.wake)
        pool.submit(run)
        try:
            for position in itertools.count():
                more, batch = run.take(position)
                if not more:
                    return
                yield batch
        finally:
            if self._run is run:
                self._end_run()

    def _end_run(self) -> None:
        """Stops the current epoch (if any): nothing more is sent, what is in flight is dropped."""
        run, self._run = self._run, None
        if run is None:
            return
        with run.cond:
            run.cancelled = True
        run.wake()

    def close(self) -> None:
        """Stops the dispatcher and the workers (killing any that do not stop in time)."""
        self._end_run()
        if self._finalizer is not None:
            self._finalizer()
        self._pool = None

    def _after_fork_in_child(self) -> None:
        # The workers are the parent's, and the dispatcher thread does not exist here.
        if self._finalizer is not None:
            self._finalizer.detach()
        self._pool = self._run = self._finalizer = None
