"""TFRecord framing: records located by their headers and read in runs, every checksum checked,
with google-crc32c and with TensorFlow's reader (the fallback) alike."""

from __future__ import annotations

import os

import numpy as np
import pytest

tf = pytest.importorskip("tensorflow")

from memseq.convert import _tfrecord_frames as frames  # noqa: E402
from memseq.errors import CorruptFileError  # noqa: E402

needs_crc32c = pytest.mark.skipif(frames.crc32c_function() is None, reason="google-crc32c (C) is not installed")


@pytest.fixture(params=["crc32c", "tensorflow"])
def reader_kind(request, monkeypatch):
    """Runs a test with the google-crc32c reader and with TensorFlow's record reader."""
    if request.param == "crc32c":
        if frames.crc32c_function() is None:
            pytest.skip("google-crc32c (C) is not installed")
    else:
        monkeypatch.setattr(frames, "crc32c_function", lambda: None)
    return request.param


def _records(n, seed=0, max_len=40):
    rng = np.random.default_rng(seed)
    # Lengths 0..max_len, data ending in zero bytes too (nothing may strip them).
    return [bytes(rng.integers(0, 256, size=rng.integers(0, max_len + 1), dtype=np.uint8)) + b"\0" * (i % 3)
            for i in range(n)]


def _write(path, records):
    with tf.io.TFRecordWriter(str(path)) as w:
        for r in records:
            w.write(r)
    return str(path)


def _reader(path):
    return frames.RecordReader(path, frames.scan_records(path))


@pytest.mark.parametrize("block", [4096, frames._SCAN_BLOCK])
def test_scan_gives_every_offset_then_the_end_across_scan_blocks(tmp_path, monkeypatch, block):
    # With 4 KiB blocks: ~30 KiB of small records (headers straddle the scan blocks),
    # records of a block or more among them (their headers are read alone), and small
    # ones after; with the default block, every header comes from one block read.
    monkeypatch.setattr(frames, "_SCAN_BLOCK", block)
    records = [b"z" * 9000] + _records(700) + [b"x" * 5000, b"y" * 4096, b""] + _records(800, seed=5)
    path = _write(tmp_path / "a.tfrecord", records)
    offsets = frames.scan_records(path)
    expected = np.concatenate([[0], np.cumsum([16 + len(r) for r in records])])
    np.testing.assert_array_equal(offsets, expected)
    assert offsets[-1] == os.path.getsize(path)
    assert frames.scan_records(_write(tmp_path / "empty.tfrecord", [])).tolist() == [0]


def test_runs_of_records_equal_what_tensorflow_reads(tmp_path, reader_kind):
    records = _records(300, seed=1) + [b"x" * 20000]  # one record longer than a scan block
    path = _write(tmp_path / "a.tfrecord", records)
    assert [bytes(r) for r in tf.data.TFRecordDataset(path).as_numpy_iterator()] == records
    reader = _reader(path)
    try:
        for a, b in [(0, 301), (0, 1), (7, 8), (17, 250), (299, 301), (5, 5)]:
            assert reader.read(a, b) == records[a:b]
    finally:
        reader.close()
        reader.close()  # idempotent


def _frame_at(path, k):
    offsets = frames.scan_records(path)
    return int(offsets[k]), int(offsets[k + 1])


@pytest.mark.parametrize("where, what", [("data", "data"), ("length_crc", "length"), ("data_crc", "data")])
def test_a_corrupt_record_is_refused_by_number_and_its_neighbours_still_read(tmp_path, reader_kind, where, what):
    records = _records(50, seed=2, max_len=30)
    records[20] = b"payload of record twenty"
    path = _write(tmp_path / "a.tfrecord", records)
    start, end = _frame_at(path, 20)
    data = bytearray(open(path, "rb").read())
    data[{"data": start + 12 + 3, "length_crc": start + 9, "data_crc": end - 2}[where]] ^= 0x01
    open(path, "wb").write(bytes(data))
    reader = _reader(path)
    with pytest.raises(CorruptFileError, match=r"a\.tfrecord: record 20 cannot be read") as e:
        reader.read(10, 30)
    if reader_kind == "crc32c":
        assert f"corrupted record at byte {start}: the CRC-32C of its {what} does not match" in str(e.value)
    assert reader.read(0, 20) == records[:20]
    assert reader.read(21, 50) == records[21:]
    reader.close()


@needs_crc32c
def test_a_file_changed_or_truncated_since_the_scan_is_refused(tmp_path):
    records = [bytes([i]) * 10 for i in range(30)]
    path = _write(tmp_path / "a.tfrecord", records)
    reader = _reader(path)
    # Same size, other frames: record 4 now claims 12 bytes where 10 were scanned.
    _write(tmp_path / "a.tfrecord", records[:4] + [b"x" * 12, b"y" * 8] + records[6:])
    with pytest.raises(CorruptFileError, match=r"record 4 cannot be read \(corrupted record at byte 104: its length "
                                               r"field differs from the one scanned"):
        reader.read(0, 30)
    assert reader.read(0, 4) == records[:4]
    reader.close()
    _write(tmp_path / "a.tfrecord", records)
    reader = _reader(path)
    os.truncate(path, 25 * 26 + 5)
    with pytest.raises(CorruptFileError, match=r"record 25 cannot be read \(the file ends at byte 655, inside this "
                                               r"record at byte 650: truncated since it was scanned"):
        reader.read(20, 30)
    assert reader.read(0, 25) == records[:25]
    reader.close()


def test_crc32c_needs_the_c_implementation(monkeypatch):
    google_crc32c = pytest.importorskip("google_crc32c")
    if google_crc32c.implementation == "c":
        assert frames.crc32c_function()(b"123456789") == 0xE3069283  # the CRC-32C check value
    monkeypatch.setattr(google_crc32c, "implementation", "python")
    assert frames.crc32c_function() is None
