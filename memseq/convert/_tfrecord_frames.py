"""TFRecord framing: locating a file's records, and reading runs of them with every checksum checked.

A TFRecord file is a sequence of frames, one per record, all little-endian::

    length (uint64) | masked CRC-32C of the 8 length bytes (uint32) | data (length bytes) | masked CRC-32C of data (uint32)

where ``masked(crc) = ((crc >> 15) | (crc << 17)) + 0xa282ead8`` (mod 2**32), as
TensorFlow's record writer frames them. :func:`scan_records` reads only the 12-byte
frame headers, once, to locate every record. :class:`RecordReader` reads a run of
records ``[a, b)`` in one ``pread`` of their bytes and checks, for every record, that
its length is the one scanned and that both CRC-32Cs match, before returning any
record: a corrupt record is refused, never returned.

The CRC-32C comes from ``google-crc32c`` (its C implementation). Without it, records
are read one at a time with TensorFlow's random-access record reader
(``tf_record_random_reader``), which checks the same checksums; the records and the
errors are the same, only slower.
"""

from __future__ import annotations

import os
import struct
from collections.abc import Callable
from typing import Any

import numpy as np

from memseq.errors import CorruptFileError, FormatError

__all__ = ["scan_records", "RecordReader", "crc32c_function"]

# A length field above this is no TFRecord frame (the file is something else or corrupt).
MAX_RECORD_BYTES = 2**40
_GZIP_MAGIC = b"\x1f\x8b"
_HEADER = 12  # length (8) + its masked CRC-32C (4)
_FOOTER = 4  # masked CRC-32C of the data
_MASK_DELTA = 0xA282EAD8
# Headers are scanned from blocks of this many bytes, so that records smaller than a
# block cost one read per block of records, not one system call each (records of a
# block or more are scanned one 12-byte header read each). With 4 KiB blocks, a file of
# 12 KiB records took one pread per record: 81k calls per GB, as long as tf.data's whole
# read of the file; 1 MiB blocks make it about a thousand.
_SCAN_BLOCK = 2**20


def crc32c_function() -> Callable[[bytes], int] | None:
    """The CRC-32C of a bytes object (``google_crc32c.value``), or None without its C implementation.

    (Its pure-Python fallback is too slow to check every byte of a conversion.)
    """
    try:
        import google_crc32c
    except ImportError:
        return None
    return google_crc32c.value if getattr(google_crc32c, "implementation", None) == "c" else None


def scan_records(path: str) -> np.ndarray:
    """The byte offsets of every record of a TFRecord file, then the end of the last one.

    Reads the frame headers only (length and its checksum are checked when the
    records are read). A file of ``n`` records gives ``n + 1`` offsets; an empty file ``[0]``.

    Raises:
        FormatError: For a compressed file or one that is not a TFRecord file.
        CorruptFileError: If the file ends inside a record (truncated).
    """
    size = os.path.getsize(path)
    offsets = []
    with open(path, "rb", buffering=0) as f:
        fd = f.fileno()
        block, block_at = os.pread(fd, _SCAN_BLOCK, 0), 0
        if block[:2] == _GZIP_MAGIC:
            raise FormatError(f"{path}: a compressed (GZIP) TFRecord file; decompress it first (gunzip), memseq reads "
                              "uncompressed TFRecord files by offset.")
        pos = length = 0
        while pos < size:
            at = pos - block_at
            if at + _HEADER > len(block):
                # After a small record, a block holds the next headers too; after a large one, read its header alone.
                block, block_at, at = os.pread(fd, _HEADER if length >= _SCAN_BLOCK else _SCAN_BLOCK, pos), pos, 0
            if len(block) - at < _HEADER:
                raise CorruptFileError(f"{path}: truncated: the file ends inside the frame header of record "
                                       f"{len(offsets)} (at byte {pos} of {size}).")
            (length,) = struct.unpack_from("<Q", block, at)
            if length > MAX_RECORD_BYTES:
                raise FormatError(f"{path}: not a TFRecord file (record {len(offsets)} at byte {pos} claims "
                                  f"{length} bytes).")
            end = pos + _HEADER + length + _FOOTER
            if end > size:
                raise CorruptFileError(f"{path}: truncated: record {len(offsets)} (at byte {pos}) needs {end - pos} "
                                       f"bytes but the file ends after {size - pos}.")
            offsets.append(pos)
            pos = end
    offsets.append(pos)
    return np.asarray(offsets, dtype=np.int64)


def _masked(crc: np.ndarray) -> np.ndarray:
    crc = crc.astype(np.uint32)
    return ((crc >> np.uint32(15)) | (crc << np.uint32(17))) + np.uint32(_MASK_DELTA)  # uint32 wraps: mod 2**32


def _le_uint(buf: np.ndarray, at: np.ndarray, nbytes: int) -> np.ndarray:
    """The little-endian unsigned integers of ``nbytes`` bytes at each position ``at`` of ``buf``."""
    dtype = "<u8" if nbytes == 8 else "<u4"
    return buf[at[:, None] + np.arange(nbytes)].view(dtype)[:, 0].astype(np.int64)


class RecordReader:
    """Reads runs of records of one TFRecord file, every length and CRC-32C checked.

    Not picklable (it holds an open file); a worker process makes its own.

    Args:
        path: The TFRecord file.
        offsets: Its record offsets from :func:`scan_records` (``n + 1`` of them).

    Raises:
        CorruptFileError: If the file cannot be opened.
    """

    def __init__(self, path: str, offsets: np.ndarray):
        self.path = path
        self.offsets = offsets
        self._crc32c = crc32c_function()
        try:
            if self._crc32c is None:
                from tensorflow.python.lib.io import tf_record

                self._file: Any = tf_record.tf_record_random_reader(path)
            else:
                self._file = open(path, "rb", buffering=0)
        except Exception as e:
            raise CorruptFileError(f"{path}: cannot open it ({type(e).__name__}: {e}).") from e

    def read(self, a: int, b: int) -> list[bytes]:
        """The data of records ``[a, b)``.

        Raises:
            CorruptFileError: ``"<path>: record <i> cannot be read (...)"`` for the first
                record whose checksum does not match, or that changed or was truncated
                since the file was scanned.
        """
        if b <= a:
            return []
        if self._crc32c is None:
            return self._read_with_tensorflow(a, b)
        offsets = self.offsets[a : b + 1]
        start, end = int(offsets[0]), int(offsets[-1])
        buf = self._pread(start, end - start)
        if len(buf) < end - start:
            i = int(np.searchsorted(offsets, start + len(buf), side="right")) - 1
            raise self._error(a + i, f"the file ends at byte {start + len(buf)}, inside this record at byte "
                                     f"{int(offsets[i])}: truncated since it was scanned")
        at = offsets[:-1] - start
        lengths = np.diff(offsets) - (_HEADER + _FOOTER)
        u8 = np.frombuffer(buf, np.uint8)
        records = [buf[s : s + n] for s, n in zip((at + _HEADER).tolist(), lengths.tolist())]
        # The length's checksum depends on the length alone: one CRC per distinct length.
        distinct, which = np.unique(lengths, return_inverse=True)
        length_crcs = np.fromiter((self._crc32c(n.to_bytes(8, "little")) for n in distinct.tolist()), np.uint32,
                                  len(distinct))
        data_crcs = np.fromiter(map(self._crc32c, records), np.uint32, len(records))
        checks = [
            (lengths != _le_uint(u8, at, 8), "its length field differs from the one scanned: the file changed since"),
            (_masked(length_crcs)[which.reshape(-1)] != _le_uint(u8, at + 8, 4), "the CRC-32C of its length does not match"),
            (_masked(data_crcs) != _le_uint(u8, at + _HEADER + lengths, 4), "the CRC-32C of its data does not match"),
        ]
        bad = np.logical_or.reduce([mask for mask, _ in checks])
        if bad.any():
            i = int(np.flatnonzero(bad)[0])
            what = next(why for mask, why in checks if mask[i])
            raise self._error(a + i, f"corrupted record at byte {int(offsets[i])}: {what}")
        return records

    def _pread(self, offset: int, n: int) -> bytes:
        """Up to ``n`` bytes at ``offset`` (fewer only at the end of the file)."""
        parts = []
        while n > 0:
            part = os.pread(self._file.fileno(), n, offset)
            if not part:
                break
            parts.append(part)
            offset, n = offset + len(part), n - len(part)
        return parts[0] if len(parts) == 1 else b"".join(parts)

    def _error(self, record: int, why: str) -> CorruptFileError:
        return CorruptFileError(f"{self.path}: record {record} cannot be read ({why}).")

    def _read_with_tensorflow(self, a: int, b: int) -> list[bytes]:
        # TensorFlow's random-access reader checks each record's length and CRC-32Cs.
        out = []
        read = self._file.read
        for i, offset in enumerate(self.offsets[a:b].tolist(), a):
            try:
                out.append(read(offset)[0])
            except Exception as e:  # DataLossError (checksum), IndexError (truncated since)
                raise self._error(i, f"{type(e).__name__}: {e}") from e
        return out

    def close(self) -> None:
        """Closes the file (idempotent)."""
        if hasattr(self._file, "close"):
            self._file.close()
