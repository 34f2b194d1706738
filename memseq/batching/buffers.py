"""Recycled, 64-byte-aligned batch buffers.

Every batch needs fresh arrays of a few MiB. Allocating them fresh is expensive:
once TensorFlow has tuned malloc (it sets ``M_TRIM_THRESHOLD`` process-wide when a
``from_generator`` dataset is created, which also freezes glibc's mmap threshold at
128 KiB), every such array is a new ``mmap`` whose pages fault in one by one and are
handed back on free. Recycling buffers takes those faults out of every batch (the
figures: ``docs/performance.md``, "Readahead and buffers: measurements behind the
design").

A :class:`BufferPool` hands out arrays whose data is 64-byte aligned (so TensorFlow
uses them as tensor memory without copying) and gives a buffer out again only when
nothing else references it: not the caller, not a view of it, not a TensorFlow
tensor wrapping it (TensorFlow keeps a reference to the array it wraps until the
tensor dies). The arrays are built directly on a ``bytearray``, so every view of one
(slices, reshapes) keeps a reference to the array itself and is counted: a buffer
still visible anywhere is never overwritten.
"""

from __future__ import annotations

import sys
import threading

import numpy as np

from memseq.util import forksafe as _forksafe

__all__ = ["ALIGN", "BufferPool", "aligned_empty"]

# EIGEN_MAX_ALIGN_BYTES on AVX-512 builds of TensorFlow: less and it copies.
ALIGN = 64


def aligned_empty(shape: tuple[int, ...], dtype: np.dtype) -> np.ndarray:
    """A new C-contiguous array on a ``bytearray``, its data on an ``ALIGN``-byte boundary."""
    dtype = np.dtype(dtype)
    nbytes = int(np.prod(shape, dtype=np.int64)) * dtype.itemsize
    raw = bytearray(nbytes + ALIGN)
    offset = -np.frombuffer(raw, np.uint8).ctypes.data % ALIGN
    return np.ndarray(shape, dtype, buffer=raw, offset=offset)


def _calibrate() -> int:
    # The reference count a pooled buffer has when nothing but the pool holds it,
    # measured with the very expression ``empty`` uses.
    buffers = [aligned_empty((1,), np.uint8)]
    return sys.getrefcount(buffers[0])


_FREE = _calibrate()

class BufferPool:
    """Arrays for batches, reused once unreferenced.

    Args:
        max_bytes: At most this many bytes are kept for reuse; beyond it arrays are
            allocated as usual and freed when dropped.

    Example:
        >>> pool = BufferPool()
        >>> out = pool.empty((256, 64, 64, 3), np.uint8)   # aligned, maybe recycled
    """

    def __init__(self, max_bytes: int = 128 * 2**20):
        self.max_bytes = max_bytes
        self._buffers: dict[tuple, list[np.ndarray]] = {}
        self._bytes = 0
        self._lock = threading.Lock()
        _forksafe.register(self)

    def _after_fork_in_child(self) -> None:
        # Start afresh: the lock may have been held by a thread that does not exist in
        # the child, and the buffer lists may have been mid-update under it.
        self.__init__(self.max_bytes)

    def empty(self, shape: tuple[int, ...], dtype: np.dtype) -> np.ndarray:
        """An aligned array of ``shape`` and ``dtype`` that nothing else references.

        Its contents are undefined (a recycled buffer keeps old data): fill it whole.
        """
        key = (shape, dtype)
        with self._lock:
            buffers = self._buffers.setdefault(key, [])
            for i in range(len(buffers)):
                if sys.getrefcount(buffers[i]) == _FREE:
                    return buffers[i]
            array = aligned_empty(shape, dtype)
            if self._bytes + array.nbytes <= self.max_bytes:
                buffers.append(array)
                self._bytes += array.nbytes
            return array

    def __getstate__(self) -> dict:
        # Buffers stay in their process; a pickled pool arrives empty.
        return {"max_bytes": self.max_bytes}

    def __setstate__(self, state: dict) -> None:
        self.__init__(state["max_bytes"])
