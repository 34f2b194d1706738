"""TFRecord files written by TensorFlow's own TFRecordWriter, converted and compared value for value."""

from __future__ import annotations

import os

import numpy as np
import pytest

tf = pytest.importorskip("tensorflow")

from memseq import convert as cv  # noqa: E402
from memseq.errors import CorruptFileError, FormatError, SchemaError  # noqa: E402


def _feature(value):
    if isinstance(value, bytes):
        return tf.train.Feature(bytes_list=tf.train.BytesList(value=[value]))
    value = np.asarray(value)
    if value.dtype.kind == "f":
        return tf.train.Feature(float_list=tf.train.FloatList(value=value.reshape(-1).tolist()))
    return tf.train.Feature(int64_list=tf.train.Int64List(value=value.reshape(-1).tolist()))


def _write(path, rows):
    with tf.io.TFRecordWriter(str(path)) as w:
        for row in rows:
            ex = tf.train.Example(features=tf.train.Features(feature={k: _feature(v) for k, v in row.items()}))
            w.write(ex.SerializeToString())


def _rows(n, seed=0, start=0):
    rng = np.random.default_rng(seed)
    rows = []
    for i in range(start, start + n):
        rows.append({
            "label": np.int64(i * 7 - 3),
            "x": rng.random(6, dtype=np.float32),
            "tokens": rng.integers(-(2**40), 2**40, size=i % 5),  # i % 5 == 0: an empty row
            "image/raw": rng.integers(0, 256, size=(4, 3), dtype=np.uint8).tobytes(),
            "blob": bytes(rng.integers(0, 256, size=i % 4, dtype=np.uint8)),
        })
    return rows


def _check(ds, rows, raw_field=False):
    assert ds.num_rows == len(rows)
    for i, row in enumerate(rows):
        assert ds["label"][i] == row["label"]
        np.testing.assert_array_equal(ds["x"][i], row["x"])
        got = ds["tokens"][i]
        assert got.dtype == np.int64 and got.shape == (len(row["tokens"]),)
        np.testing.assert_array_equal(got, row["tokens"])
        np.testing.assert_array_equal(ds["blob"][i], np.frombuffer(row["blob"], np.uint8))
        if raw_field:
            np.testing.assert_array_equal(ds["image.raw"][i], np.frombuffer(row["image/raw"], np.uint8).reshape(4, 3))


def test_inferred_features_round_trip(tmp_path):
    rows = _rows(40)
    _write(tmp_path / "a.tfrecord", rows)
    src = cv.TFRecordSource(tmp_path / "a.tfrecord")
    assert {n: (str(s.dtype), s.shape) for n, s in src.fields.items()} == {
        "label": ("int64", ()), "x": ("float32", (6,)), "tokens": ("int64", (None,)),
        "image.raw": ("uint8", (None,)), "blob": ("uint8", (None,)),
    }
    ds = cv.convert(tmp_path / "out", src)
    _check(ds, rows)
    np.testing.assert_array_equal(ds["image.raw"][3], np.frombuffer(rows[3]["image/raw"], np.uint8))


def test_declared_specs_several_files_in_natural_order(tmp_path):
    shards = tmp_path / "shards"
    shards.mkdir()
    rows = []
    for k in (0, 1, 2, 10):  # "-10" must come after "-2"
        part = _rows(7, seed=k, start=len(rows))
        _write(shards / f"train-{k}.tfrecord", part)
        rows += part
    _write(shards / "train-3.tfrecord", [])  # an empty shard holds no rows
    features = {"label": "int64", "x": "float32:2,3", "tokens": "int64:-1", "image/raw": "bytes:uint8:4,3", "blob": "bytes"}
    ds = cv.convert(tmp_path / "out", cv.TFRecordSource(shards, features), shard_rows=5)
    assert ds["x"].shape[1:] == (2, 3)
    for r in rows:
        r["x"] = r["x"].reshape(2, 3)
    _check(ds, rows, raw_field=True)


@pytest.mark.slow
def test_fixed_fields_in_worker_processes_match_one_process(tmp_path):
    rows = _rows(300)
    for r in rows:
        r.pop("tokens"), r.pop("blob")
    _write(tmp_path / "a.tfrecord", rows[:150])
    _write(tmp_path / "b.tfrecord", rows[150:])
    features = {"label": "int64", "x": "float32:6", "image/raw": "bytes:uint8:4,3"}
    files = [tmp_path / "a.tfrecord", tmp_path / "b.tfrecord"]
    one = cv.convert(tmp_path / "one", cv.TFRecordSource(files, features), shard_rows=100)
    two = cv.convert(tmp_path / "two", cv.TFRecordSource(files, features), shard_rows=100, jobs=2)
    for name in one.fields:
        np.testing.assert_array_equal(one[name][:], two[name][:])
    np.testing.assert_array_equal(one["label"][:], [r["label"] for r in rows])


def test_ragged_raw_bytes_with_trailing_dims(tmp_path):
    rows = [{"frames": np.arange(3 * n, dtype="<f4").tobytes()} for n in (2, 0, 5)]
    _write(tmp_path / "a.tfrecord", rows)
    ds = cv.convert(tmp_path / "out", cv.TFRecordSource(tmp_path / "a.tfrecord", {"frames": "bytes:float32:-1,3"}))
    assert ds.fields["frames"].shape == (None, 3)
    for row, n in zip(range(3), (2, 0, 5)):
        np.testing.assert_array_equal(ds["frames"][row], np.arange(3 * n, dtype=np.float32).reshape(n, 3))


@pytest.mark.skipif(not os.path.isdir("/proc/self/fd"), reason="counts open files in /proc/self/fd")
def test_many_files_read_with_few_open(tmp_path):
    from memseq.convert import _tfrecord

    rows = []
    for k in range(3 * _tfrecord._MAX_OPEN_FILES):
        part = [{"label": np.int64(len(rows) + i)} for i in range(3)]
        _write(tmp_path / f"part-{k}.tfrecord", part)
        rows += part
    src = cv.TFRecordSource(tmp_path, {"label": "int64"})
    before = len(os.listdir("/proc/self/fd"))
    np.testing.assert_array_equal(src.read(0, len(rows))["label"], np.arange(len(rows)))
    np.testing.assert_array_equal(src.read(5, 7)["label"], [5, 6])  # a file closed before is reopened
    assert len(os.listdir("/proc/self/fd")) - before <= _tfrecord._MAX_OPEN_FILES
    src.close()
    assert len(os.listdir("/proc/self/fd")) == before


def test_truncated_file_is_named_and_nothing_committed(tmp_path):
    _write(tmp_path / "a.tfrecord", _rows(10))
    data = (tmp_path / "a.tfrecord").read_bytes()
    (tmp_path / "a.tfrecord").write_bytes(data[:-7])
    with pytest.raises(CorruptFileError, match=r"a\.tfrecord: truncated: record 9"):
        cv.convert(tmp_path / "out", cv.TFRecordSource(tmp_path / "a.tfrecord"))
    assert not os.path.exists(tmp_path / "out")


def test_corrupt_record_checksum_is_named_and_nothing_committed(tmp_path):
    _write(tmp_path / "a.tfrecord", _rows(10))
    data = bytearray((tmp_path / "a.tfrecord").read_bytes())
    data[-30] ^= 0xFF  # inside the last record's data: its CRC-32C no longer matches
    (tmp_path / "a.tfrecord").write_bytes(bytes(data))
    src = cv.TFRecordSource(tmp_path / "a.tfrecord", {"label": "int64"})
    with pytest.raises(CorruptFileError, match=r"a\.tfrecord: record 9 cannot be read"):
        cv.convert(tmp_path / "out", src)
    assert not os.path.exists(tmp_path / "out")


def test_record_disagreeing_with_inferred_length_is_refused(tmp_path):
    rows = [{"x": np.arange(3)} for _ in range(120)] + [{"x": np.arange(4)}]  # beyond the 100 inferred from
    _write(tmp_path / "a.tfrecord", rows)
    src = cv.TFRecordSource(tmp_path / "a.tfrecord")
    assert src.fields["x"].shape == (3,)
    with pytest.raises(SchemaError, match=r"a\.tfrecord: record 120 does not match the features"):
        cv.convert(tmp_path / "out", src)
    assert not os.path.exists(tmp_path / "out")
    ds = cv.convert(tmp_path / "out", cv.TFRecordSource(tmp_path / "a.tfrecord", {"x": "int64:-1"}))
    np.testing.assert_array_equal(ds["x"][120], np.arange(4))


def test_missing_fixed_feature_and_wrong_raw_size_are_refused(tmp_path):
    _write(tmp_path / "a.tfrecord", [{"y": np.int64(1), "b": b"abcd"}, {"b": b"abc"}])
    with pytest.raises(SchemaError, match=r"record 1 does not match.*'y'"):
        cv.convert(tmp_path / "o1", cv.TFRecordSource(tmp_path / "a.tfrecord", {"y": "int64"}))
    with pytest.raises(SchemaError, match=r"feature 'b': record 1 holds 3 bytes; bytes:uint8:4 needs 4"):
        cv.convert(tmp_path / "o2", cv.TFRecordSource(tmp_path / "a.tfrecord", {"b": "bytes:uint8:4"}))
    assert sorted(os.listdir(tmp_path)) == ["a.tfrecord"]


def test_refusals_in_a_read_across_files_name_the_file_and_record(tmp_path):
    # Rows of several files are parsed together: a refusal still names the right file and record.
    (tmp_path / "in").mkdir()
    _write(tmp_path / "in" / "a-1.tfrecord", [{"y": np.int64(1), "b": b"abcd"}] * 3)
    _write(tmp_path / "in" / "a-2.tfrecord", [{"y": np.int64(1), "b": b"abcd"}, {"b": b"abcd"}, {"y": np.int64(1), "b": b"abc"}])
    with pytest.raises(SchemaError, match=r"a-2\.tfrecord: feature 'b': record 2 holds 3 bytes; bytes:uint8:4 needs 4"):
        cv.convert(tmp_path / "o1", cv.TFRecordSource(tmp_path / "in", {"b": "bytes:uint8:4"}))
    with pytest.raises(SchemaError, match=r"a-2\.tfrecord: record 1 does not match the features.*'y'"):
        cv.convert(tmp_path / "o2", cv.TFRecordSource(tmp_path / "in", {"y": "int64"}))
    assert sorted(os.listdir(tmp_path)) == ["in"]


def test_not_a_tfrecord_file_and_bad_specs(tmp_path):
    (tmp_path / "x.tfrecord").write_bytes(b"\xff" * 64)
    with pytest.raises(FormatError, match="x.tfrecord: not a TFRecord file"):
        cv.TFRecordSource(tmp_path / "x.tfrecord")
    _write(tmp_path / "a.tfrecord", [{"y": np.int64(1)}])
    with pytest.raises(SchemaError, match="feature 'y': a feature spec starts with int64, float32 or bytes"):
        cv.TFRecordSource(tmp_path / "a.tfrecord", {"y": "int32"})
    with pytest.raises(SchemaError, match="only the first dimension may be -1"):
        cv.TFRecordSource(tmp_path / "a.tfrecord", {"y": "int64:3,-1"})


def test_cli_converts_tfrecord_with_feature_options(tmp_path, capsys):
    from memseq.cli import main

    rows = _rows(12)
    _write(tmp_path / "a.tfrecord", rows)
    assert main(["convert", str(tmp_path / "a.tfrecord"), str(tmp_path / "out"), "--no-progress",
                 "--feature", "label=int64", "--feature", "image/raw=bytes:uint8:4,3"]) == 0
    import memseq

    ds = memseq.open(tmp_path / "out")
    assert sorted(ds.fields) == ["image.raw", "label"]
    np.testing.assert_array_equal(ds["label"][:], [r["label"] for r in rows])
    assert main(["convert", str(tmp_path / "a.tfrecord"), str(tmp_path / "all"), "--no-progress"]) == 0
    _check(memseq.open(tmp_path / "all"), rows)
