"""Batch producers (memseq/_workers.py): order, bounds, failures, without Keras in the way."""

from __future__ import annotations

import os
import signal
import threading

import numpy as np
import pytest

from memseq._workers import InlineProducer, ProcessProducer, ThreadProducer, make_producer
from memseq.errors import WorkerError


def build(index, epoch):
    return {"x": np.full((4, 3), index * 100 + epoch, np.int64), "y": np.arange(index, index + 4)}


def failing_build(index, epoch):
    if index == 2:
        raise ValueError(f"boom at {index}")
    return build(index, epoch)


def dying_build(index, epoch):
    if index == 2:
        os.kill(os.getpid(), signal.SIGKILL)
    return build(index, epoch)


def exiting_build(index, epoch):
    if index == 2:
        raise SystemExit(7)
    return build(index, epoch)


PRODUCERS = {
    "inline": lambda fn: InlineProducer(fn),
    "threads": lambda fn: ThreadProducer(fn, workers=3, max_queue_size=2),
    "processes": lambda fn: ProcessProducer(fn, workers=2, max_queue_size=3, start_method="fork"),
}


@pytest.mark.parametrize("kind", list(PRODUCERS))
def test_batches_come_in_the_order_asked_and_bit_identical(kind):
    producer = PRODUCERS[kind](build)
    order = [4, 0, 3, 1, 2]
    got = list(producer.epoch(order, epoch=7))
    assert len(got) == len(order)
    for index, batch in zip(order, got):
        expected = build(index, 7)
        for name in expected:
            assert batch[name].dtype == expected[name].dtype
            np.testing.assert_array_equal(batch[name], expected[name])
    producer.close()


def test_threads_build_at_most_max_queue_size_ahead():
    started, lock = [], threading.Lock()
    release = threading.Event()

    def slow(index, epoch):
        with lock:
            started.append(index)
        release.wait(5)
        return build(index, epoch)

    producer = ThreadProducer(slow, workers=8, max_queue_size=3)
    batches = producer.epoch(list(range(20)), 0)
    release.set()
    next(batches)
    # Batch 0 was taken while at most 3 were submitted: nothing beyond index 3 had started.
    assert max(started) <= 3
    batches.close()


@pytest.mark.parametrize("kind", ["threads", "processes"])
def test_an_exception_keeps_its_type(kind):
    producer = PRODUCERS[kind](failing_build)
    with pytest.raises(ValueError, match="boom at 2"):
        list(producer.epoch(list(range(5)), 0))


@pytest.mark.parametrize("kind", ["threads", "processes"])
def test_system_exit_in_a_worker_becomes_a_worker_error(kind):
    producer = PRODUCERS[kind](exiting_build)
    with pytest.raises(WorkerError, match=r"SystemExit\(7\) while building batch 2 of epoch 0"):
        list(producer.epoch(list(range(5)), 0))


def test_inline_lets_errors_through_unchanged():
    with pytest.raises(SystemExit):
        list(InlineProducer(exiting_build).epoch(list(range(5)), 0))


def _producer_threads() -> list[threading.Thread]:
    # memseq-readahead-* threads are the process-wide readahead pool (memseq._readahead):
    # four idle daemon threads for the life of the process, by design; not a producer's.
    return [t for t in threading.enumerate() if t.name.startswith("memseq") and not t.name.startswith("memseq-readahead")]


def test_a_killed_worker_process_fails_the_epoch_and_leaves_nothing():
    import multiprocessing

    before = set(multiprocessing.active_children())  # other tests' leftovers are not ours to judge
    producer = ProcessProducer(dying_build, workers=2, max_queue_size=2, start_method="fork")
    with pytest.raises(WorkerError, match="died with signal SIGKILL while building batch 2 of epoch 0"):
        list(producer.epoch(list(range(6)), 0))
    assert set(multiprocessing.active_children()) - before == set()
    assert not _producer_threads()


def test_make_producer_follows_keras_options():
    assert isinstance(make_producer(build, workers=0, use_multiprocessing=False, max_queue_size=10, start_method="fork"), InlineProducer)
    assert isinstance(make_producer(build, workers=2, use_multiprocessing=False, max_queue_size=10, start_method="fork"), ThreadProducer)
    producer = make_producer(build, workers=2, use_multiprocessing=True, max_queue_size=10, start_method="fork")
    assert isinstance(producer, ProcessProducer)
    producer.close()


@pytest.mark.parametrize("kind", ["threads", "processes"])
def test_workers_stop_with_the_last_batch_even_if_the_consumer_never_asks_again(kind):
    import multiprocessing

    before = set(multiprocessing.active_children())
    producer = PRODUCERS[kind](build)
    batches = producer.epoch(list(range(4)), 0)
    got = [next(batches) for _ in range(4)]  # like tf.data: exactly the epoch's batches, no StopIteration
    assert len(got) == 4
    assert set(multiprocessing.active_children()) - before == set()
    for thread in _producer_threads():
        thread.join(10)  # idle pool threads exit once the pool is shut down
        assert not thread.is_alive(), thread.name
