"""Batch producers: build a sequence's batches ahead, in order, in threads or processes.

``model.fit(seq)`` needs batches ``i + 1 ... i + max_queue_size`` being built while the
model trains on batch ``i``. A producer does that, one epoch at a time: given the batch
indices of an epoch in the order they will be consumed (a finite sequence, or an
endless iterable for an endless dataset), it builds them with ``workers`` threads or
processes, keeps at most ``max_queue_size`` finished or in-flight batches ahead of the
consumer (``0``: no bound, as Keras' queue; an endless epoch then keeps two per
worker ahead), and yields them in order.

A batch is built by ``build(index, epoch)``, which returns what ``seq[index]`` returns
for that epoch (any nesting of tuples, lists and dicts of arrays), so what a worker
hands over is exactly what the sequence says, whatever the worker kind or count.

Contract, for every producer kind:

- Batches come out in the order of ``indices``. An error raised while building batch
  ``k`` is raised when the consumer reaches ``k``, after every earlier batch.
- Process workers are *persistent*, as PyTorch's ``persistent_workers``: they start
  with the first epoch and serve every later epoch until ``close()`` (or until the
  producer is garbage-collected); threads start with each epoch, which costs little.
  A sequence's state is sent to process workers when they start; with
  ``refresh=True`` it is sent again at the start of every epoch, so state a subclass
  changes in ``on_epoch_begin``/``on_epoch_end`` reaches them (as Keras' per-epoch
  pools do).
- A worker process that dies (OOM killer, SIGKILL, ``os._exit``) fails the epoch with
  :class:`~memseq.WorkerError` naming its exit status and batch, at once: its death is
  watched through a pidfd, which a process it forked cannot hold open (a pipe or the
  ``multiprocessing`` sentinel can be inherited and never close).
- No orphans: a worker exits when the trainer dies, however it dies. Each worker
  closes the trainer's ends of every memseq pipe it inherited under ``fork`` (so its
  own pipe reaches EOF), and asks Linux for ``SIGKILL`` when its parent goes
  (``PR_SET_PDEATHSIG``; the parent is the dispatcher thread that started it, which
  lives as long as the workers, or the fork server, which exits with the trainer).
- ``SystemExit``, ``KeyboardInterrupt`` and other non-``Exception`` errors raised
  while building a batch become a :class:`~memseq.WorkerError`: they must not stop
  the training process as if it had been asked to exit.

Why not Keras' own ``OrderedEnqueuer``: it waits on ``multiprocessing.Pool`` results
without a timeout (a dead worker hangs training forever), restarts its pool every
epoch (interpreter, Keras and backend start-up per worker per epoch under spawn and
forkserver), and pickles every batch through the pool's result pipe. Here a process
worker sends a batch's pickled structure with its arrays out of band (pickle protocol
5), and the parent receives each array's bytes straight into a recycled 64-byte-aligned
buffer: one copy through the kernel.
"""

from __future__ import annotations

import collections
import concurrent.futures
import multiprocessing
import sys
from collections.abc import Iterable, Iterator
from typing import Any

from memseq.batching.process_workers import ProcessProducer
from memseq.batching.producer_common import BuildFn, epoch_bound, queue_bound, surface
from memseq.util import forksafe as _forksafe

__all__ = ["InlineProducer", "ProcessProducer", "ThreadProducer", "default_start_method", "make_producer"]


class InlineProducer:
    """Builds each batch when the consumer asks for it, in the consumer's thread.

    Keras builds inline when ``workers <= 1`` without processes. Errors propagate
    unchanged, as from ``seq[i]``: this is the training loop's own thread, where a
    ``KeyboardInterrupt`` is the user's Ctrl-C.
    """

    def __init__(self, build: BuildFn):
        self._build = build

    def epoch(self, indices: Iterable[int], epoch: int) -> Iterator[Any]:
        """Yields ``build(i, epoch)`` for ``i`` in ``indices``."""
        for index in indices:
            yield self._build(index, epoch)

    def close(self) -> None:
        """Nothing to release."""


class ThreadProducer:
    """Builds batches ahead on ``workers`` threads, started with each epoch (they are cheap).

    Args:
        build: ``build(index, epoch)``; must be thread-safe.
        workers: Threads (>= 1).
        max_queue_size: Batches built or being built ahead of the consumer (0: no bound).
    """

    def __init__(self, build: BuildFn, workers: int, max_queue_size: int):
        self._build = build
        self._workers = max(1, workers)
        self._ahead = queue_bound(max_queue_size, 1)
        self._pool: concurrent.futures.ThreadPoolExecutor | None = None
        _forksafe.register(self)

    def _run(self, index: int, epoch: int) -> tuple[Any, BaseException | None]:
        # BaseException too: a SystemExit in a pool thread would otherwise be
        # re-raised in the consumer as if the main program had asked to exit.
        try:
            return self._build(index, epoch), None
        except BaseException as error:  # noqa: BLE001 - handed to the consumer
            return None, error

    def epoch(self, indices: Iterable[int], epoch: int) -> Iterator[Any]:
        """Yields the batches ``indices`` of ``epoch`` in order, built ahead on the threads."""
        if self._pool is None:
            self._pool = concurrent.futures.ThreadPoolExecutor(self._workers, thread_name_prefix="memseq-worker")
        pool = self._pool
        ahead = epoch_bound(self._ahead, indices, self._workers)
        todo = iter(indices)
        pending: collections.deque[tuple[int, concurrent.futures.Future]] = collections.deque()
        try:
            while True:
                while len(pending) < ahead:
                    index = next(todo, None)
                    if index is None:
                        break
                    pending.append((index, pool.submit(self._run, index, epoch)))
                if not pending:
                    return
                index, future = pending.popleft()
                batch, error = future.result()
                if error is not None:
                    raise surface(error, index, epoch)
                yield batch
        finally:
            # Idle threads would linger until the producer is collected: end them now.
            self.close()

    def close(self) -> None:
        """Cancels what has not started; running builds finish in the background."""
        pool, self._pool = self._pool, None
        if pool is not None:
            pool.shutdown(wait=False, cancel_futures=True)

    def _after_fork_in_child(self) -> None:
        self._pool = None  # its threads do not exist in the child

def make_producer(
    build: BuildFn,
    *,
    workers: int,
    use_multiprocessing: bool,
    max_queue_size: int,
    start_method: str,
    refresh: bool = False,
) -> InlineProducer | ThreadProducer | ProcessProducer:
    """The producer for Keras' worker options, chosen as Keras chooses.

    Processes with ``use_multiprocessing=True`` and ``workers >= 1``; threads with
    ``workers >= 2``; otherwise inline, in the consumer's thread.
    """
    if use_multiprocessing and workers > 0:
        return ProcessProducer(build, workers, max_queue_size, start_method, refresh=refresh)
    if workers > 1:
        return ThreadProducer(build, workers, max_queue_size)
    return InlineProducer(build)


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
        multiprocessing.get_context("forkserver").set_forkserver_preload(["memseq.batching.process_workers"])
        return "forkserver"
    if chosen is not None:
        return chosen
    # Python's own default, read without fixing it (get_start_method() would).
    if sys.version_info >= (3, 14) and "forkserver" in available:
        return "forkserver"
    return available[0]
