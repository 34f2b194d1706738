"""Parquet, Arrow IPC and Hugging Face save_to_disk data written by their own libraries, converted exactly."""

from __future__ import annotations

import os

import numpy as np
import pytest

pa = pytest.importorskip("pyarrow")
pq = pytest.importorskip("pyarrow.parquet")

from memseq import convert as cv  # noqa: E402
from memseq.errors import FormatError, SchemaError  # noqa: E402


def _table(n, start=0, seed=0):
    rng = np.random.default_rng(seed)
    lengths = [(i * 3) % 5 for i in range(start, start + n)]  # includes empty rows
    return pa.table({
        "label": pa.array(np.arange(start, start + n, dtype=np.int16)),
        "flag": pa.array((np.arange(n) % 3 == 0)),
        "half": pa.array(rng.random(n).astype(np.float16)),
        "vec": pa.FixedSizeListArray.from_arrays(pa.array(rng.random(n * 3).astype(np.float32)), 3),
        "img": pa.FixedSizeListArray.from_arrays(
            pa.FixedSizeListArray.from_arrays(pa.array(rng.integers(0, 256, n * 6).astype(np.uint8)), 3), 2),
        "tokens": pa.array([rng.integers(0, 2**31, k).astype(np.uint32) for k in lengths], pa.list_(pa.uint32())),
        "frames": pa.array([rng.random((k, 2)).astype(np.float64).tolist() for k in lengths],
                           pa.large_list(pa.list_(pa.float64(), 2))),
        "blob": pa.array([bytes(rng.integers(0, 256, k).astype(np.uint8)) for k in lengths], pa.binary()),
        "key": pa.array([bytes([i % 256, 7]) for i in range(n)], pa.binary(2)),
    })


def _check(ds, table):
    cols = table.to_pydict()
    assert ds.num_rows == table.num_rows
    assert ds.fields["label"].dtype == np.int16 and ds.fields["half"].dtype == np.float16
    np.testing.assert_array_equal(ds["label"][:], np.asarray(cols["label"], np.int16))
    np.testing.assert_array_equal(ds["flag"][:], cols["flag"])
    np.testing.assert_array_equal(ds["half"][:], np.asarray(cols["half"], np.float16))
    np.testing.assert_array_equal(ds["vec"][:], np.asarray(cols["vec"], np.float32))
    np.testing.assert_array_equal(ds["img"][:], np.asarray(cols["img"], np.uint8))
    np.testing.assert_array_equal(ds["key"][:], np.frombuffer(b"".join(cols["key"]), np.uint8).reshape(-1, 2))
    for i in range(table.num_rows):
        np.testing.assert_array_equal(ds["tokens"][i], np.asarray(cols["tokens"][i], np.uint32))
        assert ds["tokens"][i].dtype == np.uint32
        np.testing.assert_array_equal(ds["frames"][i], np.asarray(cols["frames"][i], np.float64).reshape(-1, 2))
        np.testing.assert_array_equal(ds["blob"][i], np.frombuffer(cols["blob"][i], np.uint8))


def test_parquet_files_with_row_groups_round_trip(tmp_path):
    parts = tmp_path / "parts"
    parts.mkdir()
    tables = [_table(23, 0, 0), _table(0, 23, 1), _table(41, 23, 2)]
    for k, t in zip((1, 2, 10), tables):
        pq.write_table(t, parts / f"part-{k}.parquet", row_group_size=10)
    src = cv.ArrowSource(parts)
    assert src.fields["img"].shape == (2, 3) and src.fields["frames"].shape == (None, 2)
    assert src.fields["blob"].shape == (None,) and src.fields["key"].shape == (2,)
    ds = cv.convert(tmp_path / "out", src, shard_rows=16)
    _check(ds, pa.concat_tables(tables))


def test_arrow_ipc_file_and_stream_round_trip(tmp_path):
    table = _table(50)
    with pa.OSFile(str(tmp_path / "t.arrow"), "wb") as sink, pa.ipc.new_file(sink, table.schema) as w:
        for batch in table.to_batches(max_chunksize=7):
            w.write_batch(batch)
    with pa.OSFile(str(tmp_path / "s.arrows"), "wb") as sink, pa.ipc.new_stream(sink, table.schema) as w:
        for batch in table.to_batches(max_chunksize=9):
            w.write_batch(batch)
    _check(cv.convert(tmp_path / "f", cv.ArrowSource(tmp_path / "t.arrow")), table)
    _check(cv.convert(tmp_path / "s", cv.ArrowSource(tmp_path / "s.arrows")), table)


@pytest.mark.slow
def test_fixed_columns_in_worker_processes_match_one_process(tmp_path):
    table = _table(300).select(["label", "vec", "img", "key"])
    pq.write_table(table, tmp_path / "t.parquet", row_group_size=64)
    one = cv.convert(tmp_path / "one", cv.ArrowSource(tmp_path / "t.parquet"), shard_rows=100)
    two = cv.convert(tmp_path / "two", cv.ArrowSource(tmp_path / "t.parquet"), shard_rows=100, jobs=2)
    for name in one.fields:
        np.testing.assert_array_equal(one[name][:], two[name][:])
    np.testing.assert_array_equal(one["vec"][:], np.asarray(table.column("vec").to_pylist(), np.float32))


def test_hugging_face_save_to_disk_round_trip(tmp_path):
    datasets = pytest.importorskip("datasets")
    from datasets import Array2D, ClassLabel, Features, Sequence, Value

    rng = np.random.default_rng(0)
    n = 30
    data = {
        "label": [i % 3 for i in range(n)],
        "ids": [rng.integers(0, 50000, i % 4).tolist() for i in range(n)],
        "emb": [rng.random(4).astype(np.float32).tolist() for _ in range(n)],
        "grid": [rng.integers(0, 255, (2, 3)).astype(np.uint8) for _ in range(n)],
        "audio": [bytes(rng.integers(0, 256, i % 5).astype(np.uint8)) for i in range(n)],
    }
    features = Features({
        "label": ClassLabel(names=["a", "b", "c"]), "ids": Sequence(Value("int32")),
        "emb": Sequence(Value("float32"), length=4), "grid": Array2D(shape=(2, 3), dtype="uint8"),
        "audio": Value("binary"),
    })
    hf = datasets.Dataset.from_dict(data, features=features)
    hf.save_to_disk(str(tmp_path / "hf"), max_shard_size="1KB")  # several .arrow files
    assert len([f for f in os.listdir(tmp_path / "hf") if f.endswith(".arrow")]) > 1
    ds = cv.convert(tmp_path / "out", cv.source_for_path(tmp_path / "hf"))
    assert {n: (str(s.dtype), s.shape) for n, s in ds.fields.items()} == {
        "label": ("int64", ()), "ids": ("int32", (None,)), "emb": ("float32", (4,)), "grid": ("uint8", (2, 3)),
        "audio": ("uint8", (None,)),
    }
    np.testing.assert_array_equal(ds["label"][:], data["label"])
    np.testing.assert_array_equal(ds["emb"][:], np.asarray(data["emb"], np.float32))
    np.testing.assert_array_equal(ds["grid"][:], np.stack(data["grid"]))
    for i in range(n):
        np.testing.assert_array_equal(ds["ids"][i], np.asarray(data["ids"][i], np.int32))
        np.testing.assert_array_equal(ds["audio"][i], np.frombuffer(data["audio"][i], np.uint8))
    datasets.DatasetDict({"train": hf}).save_to_disk(str(tmp_path / "dd"))
    with pytest.raises(FormatError, match="DatasetDict folder; convert one split at a time"):
        cv.ArrowSource(tmp_path / "dd")


def test_string_column_is_named_with_the_reason_and_nothing_committed(tmp_path):
    table = pa.table({"x": pa.array([1, 2, 3]), "text": pa.array(["a", "b", "c"])})
    pq.write_table(table, tmp_path / "t.parquet")
    with pytest.raises(SchemaError, match=r"t\.parquet: column 'text': a column of strings \(string\) cannot be held"):
        cv.convert(tmp_path / "out", cv.ArrowSource(tmp_path / "t.parquet"))
    assert not os.path.exists(tmp_path / "out")
    ds = cv.convert(tmp_path / "out", cv.ArrowSource(tmp_path / "t.parquet", columns={"value": "x"}))
    np.testing.assert_array_equal(ds["value"][:], [1, 2, 3])


@pytest.mark.parametrize("column, reason", [
    (pa.array([1, None, 3]), r"column 'c': row 1 holds a null"),
    (pa.array([[1], [2, None], []], pa.list_(pa.int64())), r"column 'c': row 1 holds a null"),
    (pa.array([[[1]], [[2, 3]], []], pa.list_(pa.list_(pa.int64()))), "nested variable-length lists"),
    (pa.array(["a", "b", "a"]).dictionary_encode(), "dictionary-encoded"),
    (pa.array([1, 2, 3], pa.timestamp("s")), "date/time column"),
    (pa.array([{"bytes": b"x", "path": "p"}] * 3), "a struct column"),
])
def test_columns_memseq_cannot_hold_are_refused(tmp_path, column, reason):
    pq.write_table(pa.table({"c": column}), tmp_path / "t.parquet")
    with pytest.raises(SchemaError, match=reason):
        cv.convert(tmp_path / "out", cv.ArrowSource(tmp_path / "t.parquet"))
    assert sorted(os.listdir(tmp_path)) == ["t.parquet"]


def test_truncated_parquet_and_mismatched_files(tmp_path):
    pq.write_table(_table(20), tmp_path / "a.parquet")
    data = (tmp_path / "a.parquet").read_bytes()
    (tmp_path / "b.parquet").write_bytes(data[: len(data) // 2])
    with pytest.raises(FormatError, match=r"b\.parquet: pyarrow cannot read it as parquet"):
        cv.ArrowSource(tmp_path / "b.parquet")
    pq.write_table(pa.table({"label": pa.array([1.5])}), tmp_path / "c.parquet")
    with pytest.raises(SchemaError, match=r"c\.parquet: column 'label' is double; in .*a\.parquet it is int16"):
        cv.ArrowSource([tmp_path / "a.parquet", tmp_path / "c.parquet"], columns=["label"])
    with pytest.raises(SchemaError, match=r"no column 'nope'"):
        cv.ArrowSource(tmp_path / "a.parquet", columns=["nope"])


def test_cli_converts_parquet_with_columns(tmp_path, capsys):
    import memseq
    from memseq.cli import main

    table = pa.table({"x": pa.array([1, 2, 3], pa.int8()), "text": pa.array(["a", "b", "c"])})
    pq.write_table(table, tmp_path / "t.parquet")
    assert main(["convert", str(tmp_path / "t.parquet"), str(tmp_path / "out"), "--no-progress", "--columns", "y=x"]) == 0
    ds = memseq.open(tmp_path / "out")
    assert list(ds.fields) == ["y"] and ds["y"].dtype == np.int8
    np.testing.assert_array_equal(ds["y"][:], [1, 2, 3])
    assert main(["convert", str(tmp_path / "t.parquet"), str(tmp_path / "all"), "--no-progress"]) != 0
    assert "t.parquet: column 'text': a column of strings" in capsys.readouterr().err
    assert not os.path.exists(tmp_path / "all")


def test_through_dask_is_byte_identical_to_the_engine(tmp_path):
    pytest.importorskip("dask")
    import memseq

    table = _table(120).select(["label", "vec", "img", "key"])
    pq.write_table(table, tmp_path / "a.parquet", row_group_size=25)
    pq.write_table(_table(30, 120).select(["label", "vec", "img", "key"]), tmp_path / "b.parquet")
    files = [tmp_path / "a.parquet", tmp_path / "b.parquet"]
    one = cv.convert(tmp_path / "one", cv.ArrowSource(files), shard_rows=64)
    two = cv.convert_sources_with_dask(tmp_path / "two", cv.ArrowSource(files), shard_rows=64, scheduler="threads", jobs=2)
    for name in one.fields:
        np.testing.assert_array_equal(one[name][:], two[name][:])
    assert memseq.open(tmp_path / "two").num_shards == 3
    manifest = [(tmp_path / d / "memseq.json").read_text() for d in ("one", "two")]
    assert manifest[0] == manifest[1]
    pq.write_table(_table(5).select(["tokens"]), tmp_path / "c.parquet")
    with pytest.raises(SchemaError, match="variable length; Dask writes fixed fields only"):
        cv.convert_sources_with_dask(tmp_path / "three", cv.ArrowSource(tmp_path / "c.parquet"))
    assert not os.path.exists(tmp_path / "three")


class _OneReaderSource(cv.Source):
    """A source that fails if two threads read through the same instance at once (shared open files)."""

    def __init__(self, n):
        from memseq.storage import format as fmt

        self.fields = {"x": fmt.field_spec("x", "int64", ())}
        self.num_rows, self.description = n, "one-reader source"
        self._busy = False

    def read(self, start, stop):
        import time

        assert not self._busy, "two tasks read through one source instance at once"
        self._busy = True
        time.sleep(0.02)
        self._busy = False
        return {"x": np.arange(start, stop, dtype=np.int64)}


def test_dask_tasks_on_threads_read_through_their_own_copies_of_the_source(tmp_path, monkeypatch):
    pytest.importorskip("dask")
    from memseq.convert import _sources_dask

    monkeypatch.setattr(_sources_dask, "_BLOCK_BYTES", 8 * 50)  # 50 rows per task: 20 tasks
    ds = cv.convert_sources_with_dask(tmp_path / "d", _OneReaderSource(1000), scheduler="threads", jobs=4)
    np.testing.assert_array_equal(ds["x"][:], np.arange(1000))
