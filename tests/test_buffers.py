"""Recycled batch buffers: aligned, reused only when nothing references them."""

from __future__ import annotations

import gc
import pickle

import numpy as np
import pytest

from memseq.batching.buffers import ALIGN, BufferPool, aligned_empty


def test_aligned_empty_is_aligned_and_writable():
    for shape in [(0,), (1,), (3, 5), (256, 64, 64, 3)]:
        a = aligned_empty(shape, np.float32)
        assert a.shape == shape and a.dtype == np.float32
        assert a.ctypes.data % ALIGN == 0 and a.flags.c_contiguous and a.flags.writeable


def test_unreferenced_buffers_are_recycled():
    pool = BufferPool()
    a = pool.empty((4, 3), np.float32)
    a_id = id(a)
    b = pool.empty((4, 3), np.float32)
    assert b is not a
    del a
    assert id(pool.empty((4, 3), np.float32)) == a_id
    assert pool.empty((5, 3), np.float32) is not b  # another shape, another buffer


def _bytes_of(held) -> bytes:
    return held[0].tobytes() if isinstance(held, list) else bytes(memoryview(held).cast("B"))


@pytest.mark.parametrize("keep", [lambda a: a[1:], lambda a: a.reshape(-1), lambda a: a.view(np.int32), memoryview, lambda a: [a]])
def test_a_buffer_still_referenced_anywhere_is_never_handed_out(keep):
    pool = BufferPool()
    a = pool.empty((4, 3), np.float32)
    a[:] = 7
    held = keep(a)
    expected = _bytes_of(held)
    a_id = id(a)
    del a
    gc.collect()
    for _ in range(3):
        fresh = pool.empty((4, 3), np.float32)
        assert id(fresh) != a_id
        fresh[:] = 0
    assert _bytes_of(held) == expected


def test_the_pool_is_bounded():
    pool = BufferPool(max_bytes=1000)
    kept = [pool.empty((100,), np.float32) for _ in range(5)]  # 400 bytes each: 2 pooled
    assert sum(len(v) for v in pool._buffers.values()) == 2
    assert len({id(k) for k in kept}) == 5


def test_pickles_empty():
    pool = BufferPool(max_bytes=123)
    pool.empty((1000,), np.float64)
    clone = pickle.loads(pickle.dumps(pool))
    assert clone.max_bytes == 123 and clone._buffers == {}
    assert len(pickle.dumps(pool)) < 200


def test_tensorflow_tensors_over_recycled_buffers_stay_correct():
    # tf.numpy_function outputs that are 64-byte aligned become tensors without a
    # copy; TensorFlow then holds a reference, so the pool must not reuse them
    # while the tensors live. Hold every element, then check every one.
    tf = pytest.importorskip("tensorflow")
    pool = BufferPool()

    def make(i):
        out = pool.empty((64, 1024), np.float32)
        out[:] = i
        return out

    ds = tf.data.Dataset.range(64).map(
        lambda i: tf.numpy_function(make, [i], tf.float32), num_parallel_calls=4
    ).prefetch(8)
    held = list(ds)
    for i, tensor in enumerate(held):
        values = tensor.numpy()
        assert values.min() == values.max() == i
    del held
    gc.collect()
    # Once the tensors are gone their buffers are free again: a second pass that
    # holds nothing needs only a handful of new ones.
    before = sum(len(v) for v in pool._buffers.values())
    assert before >= 64
    for _ in ds:
        pass
    assert sum(len(v) for v in pool._buffers.values()) - before < 16


def _use_pool(pool):
    pool.empty((4,), np.float32)[:] = 1


def test_a_forked_child_does_not_inherit_a_held_lock():
    import multiprocessing

    pool = BufferPool()
    pool.empty((4,), np.float32)
    with pool._lock:  # as if another thread were inside empty() at fork time
        child = multiprocessing.get_context("fork").Process(target=_use_pool, args=(pool,))
        child.start()
    child.join(timeout=30)
    if child.is_alive():
        child.kill()
    assert child.exitcode == 0
