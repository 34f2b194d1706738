"""Streaming CRC-32 of files and of arrays, as stored in the manifest."""

from __future__ import annotations

import zlib

from typing import Callable

import numpy as np

__all__ = ["crc32_of_array", "crc32_of_file"]

# Large reads keep syscall overhead negligible; zlib releases the GIL on them.
_CHUNK = 8 * 2**20


def crc32_of_file(path: str, offset: int = 0) -> int:
    """CRC-32 of ``path``'s bytes from ``offset`` to the end, read in chunks."""
    crc = 0
    with open(path, "rb", buffering=0) as f:
        f.seek(offset)
        buf = bytearray(_CHUNK)
        view = memoryview(buf)
        while True:
            n = f.readinto(buf)
            if not n:
                return crc
            crc = zlib.crc32(view[:n], crc)


def crc32_of_array(array: np.ndarray, between: Callable[[], None] | None = None) -> int:
    """CRC-32 of a C-contiguous array's bytes, in chunks; ``between()`` runs before each chunk.

    Used on memory-mapped arrays: ``between`` can check that the file was not
    truncated, so that a truncation is reported instead of faulting (except during
    the chunk being read).
    """
    flat = array.reshape(-1).view(np.uint8)
    crc = 0
    for start in range(0, flat.size, _CHUNK):
        if between is not None:
            between()
        crc = zlib.crc32(flat[start : start + _CHUNK], crc)
    return crc
