"""Batch producers (memseq/_workers.py): order, bounds, failures, without Keras in the way."""

from __future__ import annotations

import os
import signal
import threading

import numpy as np
import pytest

from memseq.batching.workers import (
    InlineProducer,
    ProcessProducer,
    ThreadProducer,
    make_producer,
)
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
    # memseq-readahead-* threads are the process-wide readahead pool (memseq.readahead.pagein):
    # four idle daemon threads for the life of the process, by design; not a producer's.
    return [t for t in threading.enumerate() if t.name.startswith("memseq") and not t.name.startswith("memseq-readahead")]


def test_a_killed_worker_process_fails_the_epoch_and_close_leaves_nothing():
    import multiprocessing

    before = set(multiprocessing.active_children())  # other tests' leftovers are not ours to judge
    threads = set(_producer_threads())
    producer = ProcessProducer(dying_build, workers=2, max_queue_size=2, start_method="fork")
    with pytest.raises(WorkerError, match="died with signal SIGKILL while building batch 2 of epoch 0"):
        list(producer.epoch(list(range(6)), 0))
    producer.close()
    assert set(multiprocessing.active_children()) - before == set()
    assert set(_producer_threads()) - threads == set()


def test_make_producer_follows_keras_options():
    assert isinstance(make_producer(build, workers=0, use_multiprocessing=False, max_queue_size=10, start_method="fork"), InlineProducer)
    assert isinstance(make_producer(build, workers=2, use_multiprocessing=False, max_queue_size=10, start_method="fork"), ThreadProducer)
    producer = make_producer(build, workers=2, use_multiprocessing=True, max_queue_size=10, start_method="fork")
    assert isinstance(producer, ProcessProducer)
    producer.close()


def test_process_workers_persist_across_epochs_and_close_stops_them():
    import multiprocessing

    before = set(multiprocessing.active_children())
    threads = set(_producer_threads())
    producer = ProcessProducer(build, workers=2, max_queue_size=3, start_method="fork")
    assert len(list(producer.epoch(range(5), 0))) == 5
    first = set(multiprocessing.active_children()) - before
    assert len(first) == 2
    got = list(producer.epoch(range(5), 1))
    np.testing.assert_array_equal(got[3]["x"], build(3, 1)["x"])
    assert set(multiprocessing.active_children()) - before == first  # the same processes
    producer.close()
    assert set(multiprocessing.active_children()) - before == set()
    assert set(_producer_threads()) - threads == set()


def test_an_abandoned_epoch_does_not_leak_into_the_next():
    producer = ProcessProducer(build, workers=2, max_queue_size=4, start_method="fork")
    batches = producer.epoch(range(50), 0)
    next(batches)
    batches.close()  # e.g. fit(steps_per_epoch=1) or an error in the training step
    got = list(producer.epoch(range(3), 9))
    assert [int(b["x"][0, 0]) for b in got] == [9, 109, 209]
    producer.close()


def test_dropping_the_producer_stops_its_workers():
    import gc
    import multiprocessing

    before = set(multiprocessing.active_children())
    producer = ProcessProducer(build, workers=2, max_queue_size=3, start_method="fork")
    list(producer.epoch(range(3), 0))
    del producer
    gc.collect()
    assert set(multiprocessing.active_children()) - before == set()


def slow_then_failing_build(index, epoch):
    import time

    if index in (0, 1):
        time.sleep(0.5)
    if index == 2:
        raise ValueError("boom at 2")
    return build(index, epoch)


@pytest.mark.parametrize("kind", list(PRODUCERS))
def test_an_error_surfaces_after_every_earlier_batch(kind):
    producer = PRODUCERS[kind](slow_then_failing_build)
    batches = producer.epoch(list(range(6)), 0)
    assert int(next(batches)["x"][0, 0]) == 0
    assert int(next(batches)["x"][0, 0]) == 100
    with pytest.raises(ValueError, match="boom at 2"):
        next(batches)
    producer.close()


@pytest.mark.parametrize("kind", list(PRODUCERS))
def test_endless_indices_and_unbounded_queue(kind):
    import itertools

    producer = {
        "inline": lambda: InlineProducer(build),
        "threads": lambda: ThreadProducer(build, workers=2, max_queue_size=0),
        "processes": lambda: ProcessProducer(build, workers=2, max_queue_size=0, start_method="fork"),
    }[kind]()
    batches = producer.epoch(itertools.count(), 3)
    got = [next(batches) for _ in range(7)]
    assert [int(b["x"][0, 0]) for b in got] == [i * 100 + 3 for i in range(7)]
    batches.close()
    producer.close()


def nested_build(index, epoch):
    return ({"a": np.full((2, 2), index, np.float32), "b": [np.arange(3) + epoch]}, np.zeros((2,), np.int8), None)


def test_process_workers_carry_any_batch_structure():
    producer = ProcessProducer(nested_build, workers=2, max_queue_size=2, start_method="fork")
    got = list(producer.epoch([0, 5], 2))
    assert got[1][0]["a"].dtype == np.float32 and float(got[1][0]["a"][0, 0]) == 5
    np.testing.assert_array_equal(got[1][0]["b"][0], np.arange(3) + 2)
    assert got[1][2] is None and got[1][1].dtype == np.int8
    assert got[1][0]["a"].ctypes.data % 64 == 0  # received into aligned buffers
    producer.close()


def forking_then_dying_build(index, epoch):
    import subprocess
    import sys

    if index == 1:
        # A grandchild that inherits every descriptor of the worker and outlives it.
        subprocess.Popen([sys.executable, "-c", "import time; time.sleep(30)"], close_fds=False)
        os._exit(3)
    return build(index, epoch)


def test_a_dead_worker_is_seen_even_when_its_child_holds_its_pipes():
    import time

    producer = ProcessProducer(forking_then_dying_build, workers=1, max_queue_size=2, start_method="fork")
    started = time.monotonic()
    with pytest.raises(WorkerError, match="exit code 3 while building batch 1"):
        list(producer.epoch(range(4), 0))
    assert time.monotonic() - started < 20  # was: blocked for good
    producer.close()


ORPHAN_SCRIPT = """
import os, sys, time
import numpy as np
from memseq.batching.workers import ProcessProducer

def build(index, epoch):
    time.sleep(0.2)
    return {"x": np.zeros(4)}

if __name__ == "__main__":
    producer = ProcessProducer(build, workers=3, max_queue_size=4, start_method=sys.argv[1])
    batches = producer.epoch(range(10**6), 0)
    next(batches)
    print(" ".join(str(p.pid) for p in __import__("multiprocessing").active_children()), flush=True)
    time.sleep(600)
"""


@pytest.mark.slow
@pytest.mark.parametrize("method", ["fork", "spawn", "forkserver"])
def test_no_worker_outlives_a_killed_trainer(tmp_path, method):
    import subprocess
    import sys

    from conftest import subprocess_env, wait_for_exit

    script = tmp_path / "trainer.py"
    script.write_text(ORPHAN_SCRIPT)
    trainer = subprocess.Popen(
        [sys.executable, str(script), method], stdout=subprocess.PIPE, stderr=subprocess.PIPE, env=subprocess_env(), text=True
    )
    pids = [int(p) for p in trainer.stdout.readline().split()]
    assert len(pids) >= 3, trainer.stderr.read()
    trainer.kill()
    trainer.wait()
    assert wait_for_exit(pids, 5) == []
    # Nobody holds the trainer's output open any more: reading it ends.
    assert trainer.stdout.read() == ""

