"""Streaming CRC-32 of files and of arrays, as stored in the manifest."""

from __future__ import annotations

import zlib

__all__ = ["crc32_of_file"]

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
