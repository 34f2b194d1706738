"""Writer and save: round-trips through memseq and plain numpy, validation, atomic commit."""

from __future__ import annotations

import gc
import json
import math
import os
import re
import tempfile
from pathlib import Path

import numpy as np
import pytest
from conftest import assert_same_array
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st
from hypothesis.extra import numpy as hnp

import memseq
from memseq.write import writer as writer_mod

DTYPES = [
    "bool", "int8", "int16", "int32", "int64", "uint8", "uint16", "uint32", "uint64",
    "float16", "float32", "float64",
]


def leftovers(parent: Path) -> list[str]:
    """Temporary directories a Writer left behind in ``parent``."""
    return sorted(p for p in os.listdir(parent) if ".memseq-tmp-" in p)


def tree(path: Path) -> dict[str, bytes]:
    """Every file under ``path`` with its contents, to show a directory was not touched."""
    return {
        str(p.relative_to(path)): p.read_bytes() for p in sorted(path.rglob("*")) if p.is_file()
    }


# --------------------------------------------------------------------------- hypothesis round-trips


@st.composite
def datasets(draw):
    """Field specs, the arrays of each append, and how to write them."""
    names = draw(
        st.lists(st.from_regex(r"[a-z][a-z0-9_]{0,6}", fullmatch=True), min_size=1, max_size=3, unique=True)
    )
    specs = {
        name: (
            np.dtype(draw(st.sampled_from(DTYPES))),
            tuple(draw(st.lists(st.integers(0, 3), max_size=3))),
        )
        for name in names
    }
    # Several appends (possibly none: an empty dataset; possibly of zero rows).
    chunk_rows = draw(st.lists(st.integers(0, 7), max_size=4))
    chunks = [
        {
            name: draw(hnp.arrays(dtype, (rows, *shape)))
            for name, (dtype, shape) in specs.items()
        }
        for rows in chunk_rows
    ]
    shard_rows = draw(st.none() | st.integers(1, 6))
    use_save = draw(st.booleans())
    return specs, chunks, shard_rows, use_save


def _concat(chunks, specs):
    return {
        name: np.concatenate([c[name] for c in chunks]) if chunks else np.empty((0, *shape), dtype)
        for name, (dtype, shape) in specs.items()
    }


def _write(path, specs, chunks, shard_rows, use_save):
    if use_save:
        memseq.save(path, _concat(chunks, specs), shard_rows=shard_rows)
        return
    with memseq.Writer(path, fields={n: (d.name, s) for n, (d, s) in specs.items()}, shard_rows=shard_rows) as w:
        for chunk in chunks:
            w.append(chunk)
        assert w.num_rows == sum(len(next(iter(c.values()))) for c in chunks)


@settings(max_examples=40, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture, HealthCheck.too_slow])
@given(case=datasets(), data=st.data())
def test_round_trip_through_memseq_and_plain_numpy(tmp_path, case, data):
    specs, chunks, shard_rows, use_save = case
    expected = _concat(chunks, specs)
    n = len(next(iter(expected.values())))
    with tempfile.TemporaryDirectory(dir=tmp_path) as parent:
        path = Path(parent) / "ds"
        _write(path, specs, chunks, shard_rows if (n or not use_save) else None, use_save)
        assert leftovers(Path(parent)) == []

        ds = memseq.open(path)
        ds.verify()
        assert len(ds) == ds.num_rows == n
        assert sorted(ds) == sorted(specs)
        expected_shards = 1 if shard_rows is None else max(1, math.ceil(n / shard_rows))
        assert ds.num_shards == expected_shards

        # Every field file is a plain .npy file: shards concatenated give the field.
        for name, arr in expected.items():
            parts = [np.load(path / s.files[name].path, mmap_mode="r") for s in ds.manifest.shards]
            if shard_rows is not None:
                assert [len(p) for p in parts[:-1]] == [shard_rows] * (len(parts) - 1)
            assert_same_array(np.concatenate(parts), arr)

        idx = np.array(data.draw(st.lists(st.integers(-n, n - 1), max_size=12) if n else st.just([])), dtype=np.int64)
        mask = np.array(data.draw(st.lists(st.booleans(), min_size=n, max_size=n)), dtype=bool)
        start = data.draw(st.integers(-n - 2, n + 2))
        stop = data.draw(st.integers(-n - 2, n + 2))
        step = data.draw(st.sampled_from([1, 1, 2, 3, -1, -2]))

        for name, arr in expected.items():
            col = ds[name]
            assert col.shape == arr.shape and col.dtype == arr.dtype and len(col) == n
            assert col.ndim == arr.ndim and col.nbytes == arr.nbytes
            assert_same_array(col[:], arr)
            assert_same_array(np.asarray(col), arr)
            for i in {0, n - 1, -1, -n} if n else ():
                assert_same_array(col[i], arr[i])
                assert_same_array(col[np.int64(i)], arr[i])
            assert_same_array(col[start:stop:step], arr[start:stop:step])
            assert_same_array(col[idx], arr[idx])
            assert_same_array(col[list(idx)], arr[idx] if len(idx) else arr[:0])
            assert_same_array(col.take(idx), arr[idx])
            assert_same_array(col[mask], arr[mask])
        taken = ds.take(idx)
        assert sorted(taken) == sorted(specs)
        for name, arr in expected.items():
            assert_same_array(taken[name], arr[idx])
            assert_same_array(ds.take(np.sort(idx), fields=[name])[name], arr[np.sort(idx)])
            assert_same_array(ds.take(mask)[name], arr[mask])


def test_take_unsorted_with_duplicates_across_shards(tmp_path):
    arr = np.arange(50 * 3, dtype=np.int32).reshape(50, 3)
    labels = np.arange(50) * 10
    memseq.save(tmp_path / "ds", {"x": arr, "y": labels}, shard_rows=7)
    ds = memseq.open(tmp_path / "ds")
    idx = np.array([49, 0, 7, 7, 6, 48, 13, 14, 0, -1, -50, 21])
    out = ds.take(idx)
    assert_same_array(out["x"], arr[idx])
    assert_same_array(out["y"], labels[idx])
    assert_same_array(ds["x"].take(idx), arr[idx])
    buf = np.full((len(idx), 3), -1, np.int32)
    assert ds["x"].take(idx, out=buf) is buf
    assert_same_array(buf, arr[idx])


def test_save_accepts_memmaps_lists_and_memseq_datasets(tmp_path):
    mm = np.lib.format.open_memmap(tmp_path / "src.npy", mode="w+", dtype=np.float32, shape=(20, 4))
    mm[:] = np.arange(80, dtype=np.float32).reshape(20, 4)
    mm.flush()
    memseq.save(tmp_path / "a", {"x": mm, "y": list(range(20))})
    a = memseq.open(tmp_path / "a")
    assert_same_array(a["x"][:], np.asarray(mm))
    assert_same_array(a["y"][:], np.arange(20))
    # A Dataset is a mapping of columns: saving it copies it (here re-sharded).
    memseq.save(tmp_path / "b", a, shard_rows=6)
    b = memseq.open(tmp_path / "b")
    b.verify()
    assert b.num_shards == 4
    for name in a:
        assert_same_array(b[name][:], a[name][:])


def test_appends_are_split_into_bounded_chunks_without_corrupting_data(tmp_path, monkeypatch):
    # Force many small write() pieces and shard boundaries inside one append.
    monkeypatch.setattr(writer_mod, "_WRITE_CHUNK_BYTES", 100)
    x = np.random.default_rng(0).integers(0, 2**16, size=(53, 3, 4), dtype=np.uint16)
    y = np.arange(53, dtype=np.float64)
    with memseq.Writer(tmp_path / "ds", {"x": ("uint16", (3, 4)), "y": ("float64", ())}, shard_rows=10) as w:
        w.append({"x": x[:25], "y": y[:25]})
        w.append({"x": x[25:], "y": y[25:]})
    ds = memseq.open(tmp_path / "ds")
    ds.verify()
    assert [s.num_rows for s in ds.manifest.shards] == [10, 10, 10, 10, 10, 3]
    assert_same_array(ds["x"][:], x)
    assert_same_array(ds["y"][:], y)


def test_exact_multiple_of_shard_rows_leaves_no_empty_shard(tmp_path):
    with memseq.Writer(tmp_path / "ds", {"x": ("int8", ())}, shard_rows=4) as w:
        w.append({"x": np.arange(8, dtype=np.int8)})
    doc = json.loads((tmp_path / "ds" / "memseq.json").read_text())
    assert [s["num_rows"] for s in doc["shards"]] == [4, 4]
    assert sorted(os.listdir(tmp_path / "ds")) == ["memseq.json", "shard-00000", "shard-00001"]


def test_empty_dataset_has_one_empty_shard_readable_by_numpy(tmp_path):
    with memseq.Writer(tmp_path / "ds", {"img": ("uint8", (2, 2)), "y": ("int64", ())}):
        pass
    ds = memseq.open(tmp_path / "ds")
    ds.verify()
    assert len(ds) == 0 and ds.num_shards == 1
    assert_same_array(ds["img"][:], np.empty((0, 2, 2), np.uint8))
    assert_same_array(ds.take([])["y"], np.empty(0, np.int64))
    assert_same_array(np.load(tmp_path / "ds" / "img.npy", mmap_mode="r"), np.empty((0, 2, 2), np.uint8))
    with pytest.raises(memseq.BatchIndexError, match=r"img: row index 0 is out of range for 0 rows"):
        ds["img"][0]


# --------------------------------------------------------------------------- append validation

FIELDS = {"image": ("uint8", (2, 3)), "label": ("int64", ()), "score": ("float32", (2,))}


def good_batch(n: int, start: int = 0) -> dict[str, np.ndarray]:
    rows = np.arange(start, start + n)
    return {
        "image": np.broadcast_to((rows % 256).astype(np.uint8)[:, None, None], (n, 2, 3)).copy(),
        "label": rows.astype(np.int64),
        "score": np.stack([rows, -rows], axis=1).astype(np.float32),
    }


def with_(batch, **changes):
    out = dict(batch)
    for key, value in changes.items():
        if value is None:
            del out[key]
        else:
            out[key] = value
    return out


BAD_APPENDS = [
    ("missing-field", lambda b: with_(b, score=None), r"needs exactly the fields \['image', 'label', 'score'\]\. Missing: \['score'\]; unknown: \[\]"),
    ("extra-field", lambda b: with_(b, extra=np.zeros(3)), r"Missing: \[\]; unknown: \['extra'\]"),
    ("float64-into-float32", lambda b: with_(b, score=b["score"].astype(np.float64)), r"field 'score' has dtype float32; float64 does not cast to it safely"),
    ("int64-into-uint8", lambda b: with_(b, image=b["image"].astype(np.int64)), r"field 'image' has dtype uint8; int64 does not cast to it safely"),
    ("int8-into-uint8", lambda b: with_(b, image=b["image"].astype(np.int8)), r"field 'image' has dtype uint8; int8 does not cast"),
    ("uint64-into-int64", lambda b: with_(b, label=b["label"].astype(np.uint64)), r"field 'label' has dtype int64; uint64 does not cast"),
    ("float-into-int", lambda b: with_(b, label=b["label"].astype(np.float64)), r"field 'label' has dtype int64; float64 does not cast"),
    ("complex-into-float", lambda b: with_(b, score=b["score"].astype(np.complex64)), r"field 'score' has dtype float32; complex64 does not cast"),
    ("str-into-int", lambda b: with_(b, label=b["label"].astype(str)), r"field 'label' has dtype int64; <U\d+ does not cast"),
    ("wrong-row-shape", lambda b: with_(b, image=np.zeros((3, 3, 2), np.uint8)), r"field 'image' takes rows of shape \(2, 3\).*Received shape: \(3, 3, 2\)"),
    ("missing-row-axis", lambda b: with_(b, score=np.zeros((3,), np.float32)), r"field 'score' takes rows of shape \(2,\).*Received shape: \(3,\)"),
    ("extra-axis-on-scalar", lambda b: with_(b, label=np.zeros((3, 1), np.int64)), r"field 'label' takes rows of shape \(\).*Received shape: \(3, 1\)"),
    ("zero-d", lambda b: with_(b, label=np.int64(3)), r"field 'label' takes rows of shape \(\).*Received shape: \(\)"),
    ("unequal-rows", lambda b: with_(b, label=np.arange(4)), r"same number of rows\. Received: \{'image': 3, 'label': 4, 'score': 3\}"),
]


@pytest.mark.parametrize("make_bad, pattern", [c[1:] for c in BAD_APPENDS], ids=[c[0] for c in BAD_APPENDS])
def test_rejected_append_raises_and_writes_nothing(tmp_path, make_bad, pattern):
    path = tmp_path / "ds"
    with memseq.Writer(path, FIELDS) as w:
        w.append(good_batch(3, 0))
        with pytest.raises(memseq.SchemaError, match=pattern) as info:
            w.append(make_bad(good_batch(3, 100)))
        assert isinstance(info.value, ValueError)
        assert str(path) in str(info.value)
        assert w.num_rows == 3
        w.append(good_batch(2, 3))
    ds = memseq.open(path)
    ds.verify()
    assert len(ds) == 5
    for name, arr in good_batch(5).items():
        assert_same_array(ds[name][:], arr)


def test_append_refuses_non_mappings(tmp_path):
    with memseq.Writer(tmp_path / "ds", {"x": ("int8", ())}) as w:
        with pytest.raises(memseq.SchemaError, match=r"append\(\) takes a mapping.*Received: list"):
            w.append([np.zeros(3, np.int8)])
        w.append({"x": np.zeros(1, np.int8)})


@pytest.mark.parametrize(
    "field_dtype, given_dtype",
    [("float32", "float64"), ("int32", "int64"), ("int32", "uint32"), ("float16", "float32"), ("bool", "uint8"),
     ("uint16", "int16"), ("float32", "int32"), ("int64", "float16")],
)
def test_unsafe_casts_are_refused(tmp_path, field_dtype, given_dtype):
    with memseq.Writer(tmp_path / "ds", {"x": (field_dtype, (2,))}) as w:
        pattern = rf"ds: field 'x' has dtype {field_dtype}; {given_dtype} does not cast to it safely\. Convert explicitly \(e\.g\. arr\.astype\('{field_dtype}'\)\)"
        with pytest.raises(memseq.SchemaError, match=pattern):
            w.append({"x": np.ones((4, 2), given_dtype)})
    assert len(memseq.open(tmp_path / "ds")) == 0


@pytest.mark.parametrize(
    "field_dtype, given, stored",
    [
        ("int64", np.array([0, 200, 255], np.uint8), np.array([0, 200, 255], np.int64)),
        ("float64", np.array([0.1, -2.5, np.inf], np.float32), np.array([0.1, -2.5, np.inf], np.float32).astype(np.float64)),
        ("float32", np.array([-32768, 7, 32767], np.int16), np.array([-32768, 7, 32767], np.float32)),
        ("uint8", np.array([True, False, True]), np.array([1, 0, 1], np.uint8)),
        ("int32", np.array([-(2**31), 2**31 - 1, 0], ">i4"), np.array([-(2**31), 2**31 - 1, 0], np.int32)),
        ("int64", [1, 2, 3], np.array([1, 2, 3], np.int64)),
    ],
    ids=["uint8->int64", "float32->float64", "int16->float32", "bool->uint8", "bigendian->int32", "list->int64"],
)
def test_safe_casts_are_accepted_and_stored_in_the_field_dtype(tmp_path, field_dtype, given, stored):
    with memseq.Writer(tmp_path / "ds", {"x": (field_dtype, ())}) as w:
        w.append({"x": given})
    ds = memseq.open(tmp_path / "ds")
    assert ds["x"].dtype == np.dtype(field_dtype)
    assert_same_array(ds["x"][:], stored)
    assert_same_array(np.load(tmp_path / "ds" / "x.npy"), stored)


# --------------------------------------------------------------------------- Writer arguments


@pytest.mark.parametrize(
    "fields, pattern",
    [
        ({}, r"fields must be a non-empty mapping"),
        ([("x", ("int8", ()))], r"fields must be a non-empty mapping"),
        ({"x": "int8"}, r"Field 'x': expected \(dtype, row_shape\).*Received: 'int8'"),
        ({"x": ("int8", (), "extra")}, r"Field 'x': expected \(dtype, row_shape\)"),
        ({"x": (object, ())}, r"Field 'x': memseq stores bool and numeric dtypes only.*dtype\('O'\)"),
        ({"x": ("U8", ())}, r"Field 'x': memseq stores bool and numeric dtypes only.*<U8"),
        ({"x": ("S8", ())}, r"Field 'x': memseq stores bool and numeric dtypes only"),
        ({"x": ([("a", "i4"), ("b", "f8")], ())}, r"Field 'x': memseq stores bool and numeric dtypes only"),
        ({"x": ("datetime64[s]", ())}, r"Field 'x': memseq stores bool and numeric dtypes only"),
        ({"x": ("nonsense", ())}, r"Field 'x': not a dtype"),
        ({"x": ("int8", (-1,))}, r"Field 'x': row shape must be a tuple of non-negative ints"),
        ({"x": ("int8", "3")}, r"Field 'x': row shape must be a tuple of non-negative ints"),
        ({"../x": ("int8", ())}, r"Field names must be.*Received: '\.\./x'"),
        ({"a/b": ("int8", ())}, r"Field names must be.*Received: 'a/b'"),
        ({"": ("int8", ())}, r"Field names must be"),
    ],
)
def test_writer_refuses_bad_fields_and_creates_nothing(tmp_path, fields, pattern):
    with pytest.raises(memseq.SchemaError, match=pattern):
        memseq.Writer(tmp_path / "ds", fields)
    assert os.listdir(tmp_path) == []


@pytest.mark.parametrize("shard_rows", [0, -1, True, 2.0, "10"])
def test_writer_refuses_bad_shard_rows(tmp_path, shard_rows):
    with pytest.raises(memseq.SchemaError, match=r"shard_rows must be a positive int or None\. Received: " + re.escape(repr(shard_rows))):
        memseq.Writer(tmp_path / "ds", {"x": ("int8", ())}, shard_rows=shard_rows)
    assert os.listdir(tmp_path) == []


@pytest.mark.parametrize(
    "data, pattern",
    [
        ({}, r"save\(\) takes a non-empty mapping"),
        ([np.zeros(3)], r"save\(\) takes a non-empty mapping.*Received: list"),
        ({"x": np.float64(1.0)}, r"Field 'x': needs at least one dimension \(rows\)"),
        ({"x": np.zeros(3), "y": np.zeros(4)}, r"same number of rows\. Received: \{'x': 3, 'y': 4\}"),
        ({"x": np.array(["a", "b"])}, r"Field 'x': memseq stores bool and numeric dtypes only"),
        ({"x": np.array([{}, []], dtype=object)}, r"Field 'x': memseq stores bool and numeric dtypes only"),
    ],
)
def test_save_refuses_bad_data_and_creates_nothing(tmp_path, data, pattern):
    with pytest.raises(memseq.SchemaError, match=pattern):
        memseq.save(tmp_path / "ds", data)
    assert os.listdir(tmp_path) == []


def test_append_after_close_is_refused(tmp_path):
    w = memseq.Writer(tmp_path / "ds", {"x": ("int8", ())})
    w.append({"x": np.ones(2, np.int8)})
    w.close()
    w.close()  # idempotent
    with pytest.raises(memseq.MemseqError, match=r"ds: this Writer is closed"):
        w.append({"x": np.ones(2, np.int8)})
    assert memseq.open(tmp_path / "ds")["x"][:].tolist() == [1, 1]


def test_writer_repr_and_progress_bar(tmp_path, capsys):
    with memseq.Writer(tmp_path / "ds", {"x": ("int8", ())}, progress=True, total_rows=5) as w:
        w.append({"x": np.ones(5, np.int8)})
        assert re.fullmatch(r"<memseq\.Writer '.*ds' rows=5 open>", repr(w))
    assert repr(w).endswith("rows=5 closed>")
    assert "writing ds" in capsys.readouterr().err


# --------------------------------------------------------------------------- existing targets


def test_save_onto_existing_dataset_without_overwrite_is_refused(tmp_path):
    path = tmp_path / "ds"
    memseq.save(path, {"x": np.arange(3)})
    before = tree(path)
    with pytest.raises(memseq.DatasetExistsError, match=re.escape(str(path)) + r" already exists; pass overwrite=True") as info:
        memseq.save(path, {"x": np.arange(5)})
    assert isinstance(info.value, FileExistsError)
    assert tree(path) == before
    assert leftovers(tmp_path) == []


@pytest.mark.parametrize("kind", ["directory", "file", "empty-directory", "symlink"])
def test_overwrite_refuses_targets_that_are_not_memseq_datasets(tmp_path, kind):
    path = tmp_path / "target"
    if kind == "directory":
        path.mkdir()
        (path / "precious.txt").write_text("do not delete")
        (path / "sub").mkdir()
        (path / "sub" / "data.bin").write_bytes(b"\x00\x01")
    elif kind == "empty-directory":
        path.mkdir()
    elif kind == "file":
        path.write_text("do not delete")
    else:
        (tmp_path / "real").mkdir()
        (tmp_path / "real" / "precious.txt").write_text("keep")
        path.symlink_to(tmp_path / "real")
    before = tree(tmp_path)
    with pytest.raises(memseq.DatasetExistsError, match=re.escape(str(path)) + r" exists and is not a memseq dataset"):
        memseq.save(path, {"x": np.arange(3)}, overwrite=True)
    assert tree(tmp_path) == before
    assert leftovers(tmp_path) == []


def test_overwrite_replaces_a_dataset_and_cleans_up(tmp_path):
    path = tmp_path / "ds"
    memseq.save(path, {"x": np.arange(10), "old_only": np.zeros(10)}, shard_rows=3)
    memseq.save(path, {"x": np.arange(4, dtype=np.int8) * 2}, overwrite=True)
    ds = memseq.open(path)
    ds.verify()
    assert list(ds) == ["x"] and ds["x"][:].tolist() == [0, 2, 4, 6]
    assert sorted(os.listdir(path)) == ["memseq.json", "x.npy"]  # nothing of the old one remains
    assert leftovers(tmp_path) == []


class Boom(RuntimeError):
    pass


def test_exception_in_with_block_commits_nothing_and_leaves_no_temp(tmp_path):
    path = tmp_path / "ds"
    with pytest.raises(Boom, match="user error"):
        with memseq.Writer(path, {"x": ("int64", ())}) as w:
            w.append({"x": np.arange(1000)})
            raise Boom("user error")
    assert not path.exists()
    assert os.listdir(tmp_path) == []
    with pytest.raises(memseq.DatasetNotFoundError):
        memseq.open(path)


def test_exception_in_with_block_keeps_the_old_dataset_on_overwrite(tmp_path):
    path = tmp_path / "ds"
    memseq.save(path, {"x": np.arange(3)})
    before = tree(path)
    with pytest.raises(Boom):
        with memseq.Writer(path, {"x": ("int64", ())}, overwrite=True) as w:
            w.append({"x": np.arange(1000)})
            raise Boom("halfway")
    assert tree(path) == before
    assert leftovers(tmp_path) == []
    assert memseq.open(path)["x"][:].tolist() == [0, 1, 2]


def test_keyboard_interrupt_in_with_block_commits_nothing(tmp_path):
    with pytest.raises(KeyboardInterrupt):
        with memseq.Writer(tmp_path / "ds", {"x": ("int64", ())}) as w:
            w.append({"x": np.arange(10)})
            raise KeyboardInterrupt
    assert os.listdir(tmp_path) == []


def test_abort_discards_and_a_later_close_commits_nothing(tmp_path):
    w = memseq.Writer(tmp_path / "ds", {"x": ("int64", ())})
    w.append({"x": np.arange(10)})
    w.abort()
    w.close()
    assert os.listdir(tmp_path) == []


def test_target_appearing_during_the_write_is_not_replaced(tmp_path):
    path = tmp_path / "ds"
    w = memseq.Writer(path, {"x": ("int64", ())})
    w.append({"x": np.arange(10)})
    path.mkdir()
    (path / "someone-elses.txt").write_text("mine")
    with pytest.raises(memseq.DatasetExistsError, match=re.escape(str(path))):
        w.close()
    assert tree(path) == {"someone-elses.txt": b"mine"}
    assert leftovers(tmp_path) == []


def test_writer_garbage_collected_without_close_commits_nothing(tmp_path):
    w = memseq.Writer(tmp_path / "ds", {"x": ("int64", ())})
    w.append({"x": np.arange(10)})
    with pytest.warns(ResourceWarning, match=r"garbage-collected without close\(\); nothing was committed"):
        del w
        gc.collect()
    assert os.listdir(tmp_path) == []


def test_temporary_directory_lives_beside_the_target(tmp_path):
    with memseq.Writer(tmp_path / "ds", {"x": ("int64", ())}) as w:
        w.append({"x": np.arange(3)})
        (tmp_dir,) = leftovers(tmp_path)
        assert tmp_dir.startswith(".ds.memseq-tmp-")
        assert not (tmp_path / "ds").exists()
    assert os.listdir(tmp_path) == ["ds"]


def test_garbage_collected_writer_cleans_up_even_when_warnings_are_errors(tmp_path):
    import warnings

    w = memseq.Writer(tmp_path / "ds", {"x": ("int64", ())})
    w.append({"x": np.arange(10)})
    with warnings.catch_warnings():
        warnings.simplefilter("error", ResourceWarning)
        # What the garbage collector calls; the warning is now an exception (which the
        # collector would print and drop), so cleanup must already have happened.
        with pytest.raises(ResourceWarning, match="nothing was committed"):
            w.__del__()
    assert os.listdir(tmp_path) == []


def test_overwrite_without_atomic_exchange_falls_back_to_renames(tmp_path, monkeypatch):
    # Filesystems without renameat2(RENAME_EXCHANGE): two renames, same end result.
    monkeypatch.setattr(memseq.storage.commit, "exchange", lambda a, b: False)
    path = tmp_path / "ds"
    memseq.save(path, {"x": np.arange(5)})
    memseq.save(path, {"x": np.arange(3) + 7}, overwrite=True)
    assert memseq.open(path)["x"][:].tolist() == [7, 8, 9]
    assert os.listdir(tmp_path) == ["ds"]


def test_atomic_exchange_swaps_two_directories(tmp_path):
    (tmp_path / "a").mkdir()
    (tmp_path / "a" / "from-a").write_text("a")
    (tmp_path / "b").mkdir()
    if not memseq.storage.commit.exchange(str(tmp_path / "a"), str(tmp_path / "b")):
        pytest.skip("renameat2(RENAME_EXCHANGE) is not supported on this filesystem")
    assert os.listdir(tmp_path / "b") == ["from-a"] and os.listdir(tmp_path / "a") == []


def test_fields_keep_the_order_they_were_written_in(tmp_path):
    memseq.save(tmp_path / "ds", {"x": np.zeros((3, 2)), "label": np.arange(3), "a": np.ones(3, bool)})
    ds = memseq.open(tmp_path / "ds")
    assert list(ds) == ["x", "label", "a"]
    assert list(ds.fields) == ["x", "label", "a"]


@pytest.mark.parametrize("argument", ["shard_rows", "total_rows"])
@pytest.mark.parametrize("value", [2**63, 2**70, -1])
def test_writer_size_arguments_are_bounded(tmp_path, argument, value):
    with pytest.raises(memseq.SchemaError, match=argument):
        memseq.Writer(tmp_path / "w", {"a": ("int64", ())}, **{argument: value})
    assert not (tmp_path / "w").exists()


def test_there_is_one_save_and_its_docstring_covers_ragged_fields():
    # memseq.save is defined once (memseq.write.save); the numpy and the Dask paths
    # are private helpers without a signature or docstring of their own to drift.
    import memseq.writer
    from memseq.write import dask as dask_write
    from memseq.write import save as save_mod

    assert memseq.save is save_mod.save is memseq.writer.save
    assert save_mod.save.__module__ == "memseq.write.save"
    assert not hasattr(writer_mod, "save") and not hasattr(dask_write, "save_dask")
    doc = " ".join(memseq.save.__doc__.split())
    assert "A list (or tuple) of ndarrays, or a ragged column, is a variable-length field" in doc
    assert "Dask array" in doc


def test_save_writes_ragged_lists_as_variable_length_fields(tmp_path):
    tokens = [np.arange(5, dtype=np.uint16), np.arange(0, dtype=np.uint16), np.arange(3, dtype=np.uint16)]
    memseq.save(tmp_path / "ds", {"tokens": tokens, "label": np.array([0, 1, 2])}, shard_rows=2)
    ds = memseq.open(tmp_path / "ds")
    ds.verify()
    assert ds.fields["tokens"].shape == (None,) and ds.fields["tokens"].dtype == np.uint16
    for i, row in enumerate(tokens):
        assert_same_array(ds["tokens"][i], row)
