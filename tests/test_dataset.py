"""Reading: Dataset and Column indexing, bad data files, open_raw, read-only views, pickling."""

from __future__ import annotations

import multiprocessing
import operator
import os
import pickle
import re
from pathlib import Path

import numpy as np
import pytest
from conftest import assert_same_array

import memseq
from memseq.read import columns as columns_mod
from memseq.read import dataset as dataset_mod

N = 40


def image_rows(rows) -> np.ndarray:
    rows = np.asarray(rows)
    return (rows[:, None, None] * 7 + np.arange(4)[:, None] * 3 + np.arange(5)).astype(np.uint8)


def make_dataset(path: Path, n: int = N, shard_rows: int | None = None) -> dict[str, np.ndarray]:
    data = {"image": image_rows(np.arange(n)), "label": np.arange(n, dtype=np.int64) * 3 - 5}
    memseq.save(path, data, shard_rows=shard_rows)
    return data


@pytest.fixture(params=[None, 7], ids=["one-shard", "shards-of-7"])
def ds_and_data(request, tmp_path):
    data = make_dataset(tmp_path / "ds", shard_rows=request.param)
    return memseq.open(tmp_path / "ds"), data


# --------------------------------------------------------------------------- the table


def test_dataset_is_a_read_only_table_of_columns(ds_and_data):
    ds, data = ds_and_data
    assert len(ds) == ds.num_rows == N
    assert list(ds) == ["image", "label"] and list(ds.keys()) == ["image", "label"]
    assert "image" in ds and "nope" not in ds and 3 not in ds
    assert isinstance(ds["image"], memseq.Column)
    assert [c.name for c in ds.values()] == ["image", "label"]
    assert {k: v.shape for k, v in ds.items()} == {"image": (N, 4, 5), "label": (N,)}
    assert ds.get("label") is ds["label"] and ds.get("nope") is None and ds.get("nope", 1) == 1
    assert ds.fields["image"].dtype == np.uint8 and ds.fields["image"].shape == (4, 5)
    assert re.fullmatch(
        r"<memseq\.Dataset '.*ds' rows=40 shards=\d \{image: uint8\[4, 5\], label: int64\[\]\}>", repr(ds)
    )
    assert "'image'" in repr(ds["image"]) and "shape=(40, 4, 5)" in repr(ds["image"])


def test_column_indexing_matches_numpy(ds_and_data):
    ds, data = ds_and_data
    col, arr = ds["image"], data["image"]
    keys = [
        5, -1, -N, np.int32(3), np.uint64(39),
        slice(None), slice(3, 17), slice(-5, None), slice(None, None, -1), slice(30, 2, -3),
        slice(N + 5, None), slice(10, 5), slice(0, N, 7),
        [39, 0, 0, 12, 7], np.array([], np.int64), np.array([3, 3, 3]), np.arange(N)[::-1],
        # ascending as given, no longer ascending once negative indices count from the end:
        np.array([-1, 0]), np.array([-3, -2, 5]), np.array([-N, -1]), np.array([0, 5], np.uint8),
        np.arange(N) % 3 == 0, np.zeros(N, bool),
        (slice(2, 9), 1), (4, 2, 3), (Ellipsis, 0), ([6, 1], slice(None), 2), (),
    ]
    for key in keys:
        assert_same_array(col[key], arr[key if not isinstance(key, list) else np.array(key)])
    assert [r.tolist() for r in col][:2] == arr[:2].tolist()
    for idx in ([-1, 0], [-3, -2, 5], [-N, 3, -1]):
        for name, values in ds.take(idx).items():
            assert_same_array(values, data[name][idx])


def test_take_with_out_buffer_and_bad_out(ds_and_data):
    ds, data = ds_and_data
    col = ds["label"]
    out = np.empty(3, np.int64)
    assert col.take([9, 2, 30], out=out) is out
    assert out.tolist() == data["label"][[9, 2, 30]].tolist()
    for bad in (np.empty(4, np.int64), np.empty(3, np.int32), np.empty((3, 2), np.int64)[:, 0]):
        with pytest.raises(memseq.SchemaError, match=r"label: out must be a C-contiguous int64 array of shape \(3,\)"):
            col.take([9, 2, 30], out=bad)


@pytest.mark.parametrize(
    "key, pattern",
    [
        (N, r"image: row index 40 is out of range for 40 rows"),
        (-N - 1, r"image: row index -41 is out of range for 40 rows"),
        ([0, N], r"image: row index 40 is out of range for 40 rows"),
        (np.array([-N - 1, 0]), r"image: row index -41 is out of range"),
        (np.array([2**62]), r"image: row index 4611686018427387904 is out of range"),
        (np.ones(N - 1, bool), r"image: a boolean mask must have shape \(40,\)\. Received shape: \(39,\)"),
        (np.ones(N + 1, bool), r"a boolean mask must have shape \(40,\)"),
        (np.ones((N, 1), bool), r"a boolean mask must have shape \(40,\)"),
        (True, r"a boolean mask must have shape \(40,\)\. Received shape: \(\)"),
        (np.array([1.0, 2.0]), r"image: row indices must be integers or a boolean mask\. Received dtype: float64"),
        (["a"], r"row indices must be integers or a boolean mask"),
        (np.array([[1, 2], [3, 4]]), r"image: row indices must be one-dimensional\. Received shape: \(2, 2\)"),
    ],
)
def test_bad_row_indices_raise_batch_index_error(ds_and_data, key, pattern):
    ds, _ = ds_and_data
    with pytest.raises(memseq.BatchIndexError, match=pattern) as info:
        ds["image"][key]
    assert isinstance(info.value, IndexError)
    with pytest.raises(memseq.BatchIndexError):
        ds["image"].take(key if not isinstance(key, (int, bool)) else [key])


def test_dataset_take_checks_indices_and_fields(ds_and_data, tmp_path):
    ds, data = ds_and_data
    with pytest.raises(IndexError, match=r"ds: row index 40 is out of range for 40 rows") as info:
        ds.take([3, N])
    assert isinstance(info.value, memseq.BatchIndexError)
    with pytest.raises(memseq.BatchIndexError, match=r"boolean mask must have shape \(40,\)"):
        ds.take(np.ones(3, bool))
    with pytest.raises(memseq.SchemaError, match=r"no field 'nope'; fields are \['image', 'label'\]"):
        ds.take([1], fields=["label", "nope"])
    with pytest.raises(memseq.SchemaError, match=r"ds: no field 'nope'") as info:
        ds["nope"]
    assert isinstance(info.value, ValueError)
    with pytest.raises(memseq.SchemaError, match=r"no field \['x'\]"):
        ds[["x"]]
    out = ds.take([5, 1, 5], fields=["label"])
    assert list(out) == ["label"] and out["label"].tolist() == data["label"][[5, 1, 5]].tolist()


def test_nothing_can_be_written_through_a_dataset_or_column(ds_and_data, tmp_path):
    ds, data = ds_and_data
    files_before = {p: p.read_bytes() for p in (tmp_path / "ds").rglob("*.npy")}
    col = ds["image"]
    assert not hasattr(memseq.Column, "__setitem__") and not hasattr(memseq.Dataset, "__setitem__")
    with pytest.raises(TypeError):
        col[0] = 1
    with pytest.raises(TypeError):
        col[:] = np.zeros((N, 4, 5), np.uint8)
    with pytest.raises(TypeError):
        ds["image"] = np.zeros((N, 4, 5), np.uint8)
    with pytest.raises(TypeError):
        del ds["label"]
    # Everything handed out is a private, writable copy: changing it changes nothing else.
    handed_out = [col[:], col[3], col[2:9], col[[1, 0, 1]], col[np.arange(N) > 5], np.asarray(col),
                  col.take([4, 2]), ds.take([4, 2])["image"], ds.take([2, 4])["image"], col[(slice(1, 3), 0)]]
    for arr in handed_out:
        assert arr.flags.writeable and (arr.flags.owndata or (arr.base is not None and arr.base.flags.owndata))
        arr[...] = 255
    assert_same_array(col[:], data["image"])
    assert_same_array(memseq.open(tmp_path / "ds")["image"][:], data["image"])
    assert {p: p.read_bytes() for p in (tmp_path / "ds").rglob("*.npy")} == files_before


# --------------------------------------------------------------------------- bad data files


def _npy(ds_dir: Path, field: str) -> Path:
    return ds_dir / f"{field}.npy"


def _data_offset(path: Path) -> int:
    with open(path, "rb") as f:
        np.lib.format.read_magic(f)
        np.lib.format.read_array_header_1_0(f)
        return f.tell()


BAD_FILES = [
    # id, damage(path), exception, pattern
    ("dtype", lambda p: np.save(p, np.arange(N, dtype=np.int32)), memseq.FormatError,
     r"label\.npy: field 'label' should have dtype int64 \(manifest\) but the file has int32"),
    ("row-shape", lambda p: np.save(p, np.zeros((N, 2), np.int64)), memseq.FormatError,
     r"label\.npy: field 'label' should have shape \(40,\) \(manifest\) but the file has \(40, 2\)"),
    ("row-count", lambda p: np.save(p, np.zeros(N - 1, np.int64)), memseq.FormatError,
     r"label\.npy: field 'label' should have shape \(40,\) \(manifest\) but the file has \(39,\)"),
    ("fortran", lambda p: np.save(p, np.asfortranarray(np.zeros((N, 2), np.int64))), memseq.FormatError,
     r"label\.npy: Fortran-order"),
    ("truncated", lambda p: os.truncate(p, p.stat().st_size - 1), memseq.CorruptFileError,
     r"label\.npy: expected \d+ bytes for \(40,\) of int64, but the file is \d+ bytes \(truncated\)"),
    ("truncated-to-header", lambda p: os.truncate(p, _data_offset(p)), memseq.CorruptFileError,
     r"label\.npy: expected \d+ bytes .* \(truncated\)"),
    ("truncated-into-header", lambda p: os.truncate(p, 20), memseq.FormatError,
     r"label\.npy: not a readable \.npy file"),
    ("trailing-bytes", lambda p: p.write_bytes(p.read_bytes() + b"\0"), memseq.CorruptFileError,
     r"label\.npy: expected \d+ bytes .* but the file is \d+ bytes \(has trailing bytes\)"),
    ("not-npy", lambda p: p.write_bytes(b"this is not an npy file at all" * 10), memseq.FormatError,
     r"label\.npy: not a readable \.npy file"),
    ("empty", lambda p: p.write_bytes(b""), memseq.FormatError, r"label\.npy: not a readable \.npy file"),
    ("missing", lambda p: p.unlink(), memseq.DatasetNotFoundError,
     r"label\.npy: data file of field 'label' does not exist"),
    ("directory", lambda p: (p.unlink(), p.mkdir()), memseq.FormatError,
     r"label\.npy: data file of field 'label' is a directory"),
]


@pytest.mark.parametrize("damage, exc, pattern", [c[1:] for c in BAD_FILES], ids=[c[0] for c in BAD_FILES])
def test_damaged_data_file_is_refused_on_open(tmp_path, damage, exc, pattern):
    make_dataset(tmp_path / "ds")
    path = _npy(tmp_path / "ds", "label")
    damage(path)
    with pytest.raises(exc, match=pattern) as info:
        memseq.open(tmp_path / "ds")
    assert str(path) in str(info.value)
    builtin = FileNotFoundError if exc is memseq.DatasetNotFoundError else ValueError
    assert isinstance(info.value, builtin)


@pytest.mark.parametrize("shard_rows", [None, 7])
def test_verify_names_the_file_whose_checksum_is_wrong(tmp_path, shard_rows):
    make_dataset(tmp_path / "ds", shard_rows=shard_rows)
    memseq.open(tmp_path / "ds").verify()
    rel = "image.npy" if shard_rows is None else "shard-00003/image.npy"
    path = tmp_path / "ds" / rel
    with open(path, "r+b") as f:
        f.seek(_data_offset(path) + 11)
        byte = f.read(1)
        f.seek(-1, os.SEEK_CUR)
        f.write(bytes([byte[0] ^ 0x01]))
    ds = memseq.open(tmp_path / "ds")  # sizes and headers are fine: open does not read data
    with pytest.raises(memseq.CorruptFileError, match=re.escape(str(path)) + r": checksum mismatch for field 'image': "
                       r"manifest says crc32:[0-9a-f]{8}, the file has crc32:[0-9a-f]{8}"):
        ds.verify()


def test_verify_detects_a_changed_header_free_byte_in_every_position_class(tmp_path):
    # First and last data byte: the checksum covers the data from the header's end to EOF.
    make_dataset(tmp_path / "ds")
    path = _npy(tmp_path / "ds", "label")
    size = path.stat().st_size
    for pos in (_data_offset(path), size - 1):
        original = path.read_bytes()
        damaged = bytearray(original)
        damaged[pos] ^= 0x80
        path.write_bytes(bytes(damaged))
        with pytest.raises(memseq.CorruptFileError, match="checksum mismatch for field 'label'"):
            memseq.open(tmp_path / "ds").verify()
        path.write_bytes(original)
    memseq.open(tmp_path / "ds").verify()


def test_verify_detects_truncation_after_open(tmp_path):
    make_dataset(tmp_path / "ds")
    ds = memseq.open(tmp_path / "ds")
    path = _npy(tmp_path / "ds", "image")
    os.truncate(path, path.stat().st_size - 20)
    with pytest.raises(memseq.CorruptFileError, match=re.escape(str(path)) + r": the file is \d+ bytes but \d+ bytes are expected"):
        ds.verify()


def test_dataset_replaced_while_opening_is_opened_consistently(tmp_path, monkeypatch):
    # Simulate an overwrite that lands between reading the manifest and opening the files:
    # the reader must not pair the old manifest with the new files.
    path = tmp_path / "ds"
    memseq.save(path, {"a": np.zeros(5, np.int64), "b": np.zeros(5, np.int64)})
    real_open_data_file = memseq.read.dataset.DatasetFiles._open_data_file
    calls = []

    def open_data_file(self, shard, spec):
        calls.append(spec.name)
        if len(calls) == 2:  # after the first file was opened
            memseq.save(path, {"a": np.ones(5, np.int64), "b": np.ones(5, np.int64)}, overwrite=True)
        return real_open_data_file(self, shard, spec)

    monkeypatch.setattr(memseq.read.dataset.DatasetFiles, "_open_data_file", open_data_file)
    ds = memseq.open(path)
    assert len(calls) == 4  # opened twice
    assert ds["a"][:].tolist() == ds["b"][:].tolist() == [1] * 5
    ds.verify()


# --------------------------------------------------------------------------- open_raw


@pytest.fixture
def raw_file(tmp_path):
    data = np.arange(10 * 4 * 3, dtype=np.float32).reshape(10, 4, 3) / 8
    mm = np.memmap(tmp_path / "images.mmap", dtype=np.float32, mode="w+", shape=data.shape)
    mm[:] = data
    mm.flush()
    del mm
    return tmp_path / "images.mmap", data


@pytest.mark.parametrize("shape", [(-1, 4, 3), (10, 4, 3), (10, -1, 3), (10, 4, -1), [-1, 4, 3], (np.int64(10), 4, 3)])
def test_open_raw_reads_like_the_array(raw_file, shape):
    path, data = raw_file
    col = memseq.open_raw(path, dtype="float32", shape=shape)
    assert col.shape == (10, 4, 3) and col.dtype == np.float32 and len(col) == 10
    assert_same_array(col[:], data)
    assert_same_array(np.asarray(col), data)
    assert_same_array(col[[9, 0, 0, 3]], data[[9, 0, 0, 3]])
    assert_same_array(col[-1], data[-1])
    assert_same_array(col[np.arange(10) % 2 == 1], data[1::2])
    assert "images.mmap" in repr(col)


def test_open_raw_flat_and_other_dtype_views(raw_file):
    path, data = raw_file
    assert_same_array(memseq.open_raw(path, "float32", -1)[:], data.reshape(-1))
    assert_same_array(memseq.open_raw(str(path), np.uint8, (-1, 16))[:], data.view(np.uint8).reshape(-1, 16))


def test_open_raw_offset(tmp_path):
    data = np.arange(12, dtype=np.int16).reshape(6, 2)
    (tmp_path / "x.raw").write_bytes(b"HEADER!!" + data.tobytes())
    assert_same_array(memseq.open_raw(tmp_path / "x.raw", "int16", (-1, 2), offset=8)[:], data)
    assert_same_array(memseq.open_raw(tmp_path / "x.raw", "int16", (6, 2), offset=np.int64(8))[:], data)
    with pytest.raises(memseq.CorruptFileError, match=r"x\.raw: 32 bytes \(file size 32 - offset 0\) is not a multiple of 12 bytes"):
        memseq.open_raw(tmp_path / "x.raw", "int16", (-1, 6))
    with pytest.raises(memseq.CorruptFileError, match=r"x\.raw: the file is 32 bytes, smaller than offset=40"):
        memseq.open_raw(tmp_path / "x.raw", "int16", (-1, 2), offset=40)
    with pytest.raises(memseq.CorruptFileError, match=r"expected 30 bytes for shape \(5, 2\) of int16 at offset 10, but the file is 32 bytes \(too large\)"):
        memseq.open_raw(tmp_path / "x.raw", "int16", (5, 2), offset=10)


@pytest.mark.parametrize(
    "dtype, shape, pattern",
    [
        ("float32", (-1, 7, 3), r"images\.mmap: 480 bytes \(file size 480 - offset 0\) is not a multiple of 84 bytes"
                                r" per \(7, 3\) x float32 unit; expected a size of 0 \+ k \* 84 bytes"),
        ("float32", (11, 4, 3), r"images\.mmap: expected 528 bytes for shape \(11, 4, 3\) of float32 at offset 0, "
                                r"but the file is 480 bytes \(too small: truncated\?\)"),
        ("float32", (9, 4, 3), r"expected 432 bytes for shape \(9, 4, 3\) of float32 at offset 0, but the file is 480 bytes \(too large\)"),
        ("float64", (10, 4, 3), r"expected 960 bytes .* but the file is 480 bytes \(too small"),
        ("float32", (10, 4, 4), r"expected 640 bytes .* but the file is 480 bytes"),
    ],
    ids=["not-divisible", "too-small", "too-large", "wrong-dtype", "wrong-shape"],
)
def test_open_raw_size_mismatch_is_corrupt_file_error(raw_file, dtype, shape, pattern):
    path, _ = raw_file
    with pytest.raises(memseq.CorruptFileError, match=pattern) as info:
        memseq.open_raw(path, dtype=dtype, shape=shape)
    assert str(path) in str(info.value) and isinstance(info.value, ValueError)


@pytest.mark.parametrize(
    "kwargs, pattern",
    [
        ({"shape": (-1, -1, 3)}, r"at most one dimension of shape may be -1"),
        ({"shape": ()}, r"shape must be a non-empty tuple of ints"),
        ({"shape": (-2, 4, 3)}, r"shape must be a non-empty tuple of ints >= 0 \(one may be -1\)"),
        ({"shape": (10.0, 4, 3)}, r"shape must be a non-empty tuple of ints"),
        ({"shape": (True, 4, 3)}, r"shape must be a non-empty tuple of ints"),
        ({"shape": (-1, 0)}, r"cannot infer -1 in shape \(-1, 0\) when the other dimensions are 0"),
        ({"offset": -1}, r"offset must be an int >= 0\. Received: -1"),
        ({"offset": 1.5}, r"offset must be an int >= 0\. Received: 1\.5"),
        ({"dtype": object}, r"'images\.mmap': memseq stores bool and numeric dtypes only"),
        ({"dtype": "U3"}, r"memseq stores bool and numeric dtypes only"),
        ({"dtype": "float33"}, r"not a dtype"),
    ],
)
def test_open_raw_bad_arguments_are_schema_errors(raw_file, kwargs, pattern):
    path, _ = raw_file
    args = {"dtype": "float32", "shape": (-1, 4, 3), **kwargs}
    with pytest.raises(memseq.SchemaError, match=pattern):
        memseq.open_raw(path, **args)


def test_open_raw_missing_file(tmp_path):
    missing = tmp_path / "nope.mmap"
    with pytest.raises(memseq.DatasetNotFoundError, match=re.escape(str(missing)) + ": raw file does not exist") as info:
        memseq.open_raw(missing, "uint8", (-1,))
    assert isinstance(info.value, FileNotFoundError)


def test_open_raw_empty_file(tmp_path):
    (tmp_path / "empty.raw").write_bytes(b"")
    col = memseq.open_raw(tmp_path / "empty.raw", "float64", (-1, 3))
    assert col.shape == (0, 3)
    assert_same_array(col[:], np.empty((0, 3)))
    with pytest.raises(memseq.BatchIndexError, match="out of range for 0 rows"):
        col[0]


def test_open_raw_is_read_only_and_hands_out_copies(raw_file):
    path, data = raw_file
    before = path.read_bytes()
    col = memseq.open_raw(path, dtype="float32", shape=(-1, 4, 3))
    with pytest.raises(TypeError):
        col[0] = 0
    arr = np.asarray(col)
    arr[:] = -1
    row = col[3]
    row[:] = -1
    assert_same_array(col[:], data)
    assert path.read_bytes() == before


def test_save_accepts_open_raw_columns(raw_file, tmp_path):
    path, data = raw_file
    memseq.save(tmp_path / "ds", {"image": memseq.open_raw(path, "float32", (-1, 4, 3)), "y": np.arange(10)})
    assert_same_array(memseq.open(tmp_path / "ds")["image"][:], data)


# --------------------------------------------------------------------------- truncated after open

TRUNCATE_SCRIPT = """
import os, sys
import numpy as np
import memseq

kind, path = sys.argv[1], sys.argv[2]
if kind == "raw":
    col = memseq.open_raw(path, dtype="uint8", shape=(-1, 64, 64, 3))
    data_file, reads = path, {}
else:
    ds = memseq.open(path)
    col = ds["image"]
    data_file = os.path.join(path, ds.manifest.shards[-1].files["image"].path)
    reads = {"dataset take": lambda: ds.take([5, len(col) - 1, 0]), "verify": ds.verify}
n = len(col)
assert int(col[n - 1][0, 0, 0]) == (n - 1) % 251  # reading works before the truncation
os.truncate(data_file, os.path.getsize(data_file) // 3)
reads.update({
    "int": lambda: col[n - 1],
    "slice": lambda: col[n - 10 :],
    "take sorted": lambda: col.take([1, 2, n - 2]),
    "take unsorted": lambda: col[[n - 1, 0, n // 2]],
    "mask": lambda: col[np.arange(n) % 2 == 0],
    "asarray": lambda: np.asarray(col),
})
for what, read in reads.items():
    try:
        read()
    except memseq.CorruptFileError as e:
        print(f"OK {what}: {e}")
    else:
        print(f"NO ERROR {what}")
        sys.exit(3)
print("DONE")
"""


@pytest.mark.slow
@pytest.mark.parametrize("kind", ["dataset", "dataset-sharded", "raw"])
def test_truncation_after_open_raises_corrupt_file_error_not_sigbus(tmp_path, run_python, kind):
    n = 600  # 12 KiB rows: 7 MB, so the truncation removes many mapped pages
    images = np.empty((n, 64, 64, 3), np.uint8)
    images[:] = (np.arange(n) % 251).astype(np.uint8)[:, None, None, None]
    if kind == "raw":
        target = tmp_path / "images.mmap"
        images.tofile(target)
    else:
        target = tmp_path / "ds"
        memseq.save(target, {"image": images, "label": np.arange(n)}, shard_rows=250 if kind == "dataset-sharded" else None)
    result = run_python(TRUNCATE_SCRIPT, "raw" if kind == "raw" else "dataset", target)
    assert result.returncode == 0, f"returncode {result.returncode} (-7 is SIGBUS)\n{result.stdout}\n{result.stderr}"
    lines = result.stdout.splitlines()
    assert lines[-1] == "DONE"
    expected_reads = 6 if kind == "raw" else 8
    assert len([line for line in lines if line.startswith("OK ")]) == expected_reads
    for line in lines[:-1]:
        assert re.search(r"images\.mmap|image\.npy", line), line
        assert re.search(r"the file is \d+ bytes but \d+ bytes are expected \(truncated after it was opened\?\)", line), line


# --------------------------------------------------------------------------- pickling

PICKLE_LIMIT = 16 * 1024


@pytest.fixture(scope="module")
def big_dataset(tmp_path_factory):
    """~64 MB: 4096 rows of 128x128 uint8 (row i filled with i % 251) and int64 labels."""
    path = tmp_path_factory.mktemp("big") / "ds"
    n, chunk = 4096, 512
    with memseq.Writer(path, {"image": ("uint8", (128, 128)), "label": ("int64", ())}) as w:
        for start in range(0, n, chunk):
            rows = np.arange(start, start + chunk)
            images = np.empty((chunk, 128, 128), np.uint8)
            images[:] = (rows % 251).astype(np.uint8)[:, None, None]
            w.append({"image": images, "label": rows * 10})
    raw = path.parent / "raw.mmap"  # the same image data, headerless
    with open(raw, "wb") as f:
        for start in range(0, n, chunk):
            block = np.empty((chunk, 128, 128), np.uint8)
            block[:] = (np.arange(start, start + chunk) % 251).astype(np.uint8)[:, None, None]
            f.write(block.tobytes())
    return path, raw, n


def expected_images(rows) -> np.ndarray:
    rows = np.asarray(rows)
    out = np.empty((len(rows), 128, 128), np.uint8)
    out[:] = (rows % 251).astype(np.uint8)[:, None, None]
    return out


@pytest.mark.slow
def test_pickles_are_small_and_read_the_same_data(big_dataset):
    path, raw, n = big_dataset
    ds = memseq.open(path)
    col = ds["image"]
    raw_col = memseq.open_raw(raw, "uint8", (-1, 128, 128))
    assert col.nbytes == raw_col.nbytes == n * 128 * 128 > 60 * 2**20
    idx = np.array([4095, 0, 17, 17, 2048])
    for obj in (ds, col, raw_col):
        blob = pickle.dumps(obj)
        assert len(blob) < PICKLE_LIMIT, (type(obj), len(blob))
        assert len(pickle.dumps(obj, protocol=2)) < PICKLE_LIMIT
    ds2, col2, raw2 = pickle.loads(pickle.dumps((ds, col, raw_col)))
    assert isinstance(ds2, memseq.Dataset) and isinstance(col2, memseq.Column) and isinstance(raw2, memseq.Column)
    assert len(ds2) == n and list(ds2) == ["image", "label"]
    assert_same_array(ds2.take(idx)["image"], expected_images(idx))
    assert_same_array(ds2["label"][idx], idx * 10)
    assert_same_array(col2[idx], expected_images(idx))
    assert_same_array(raw2[idx], expected_images(idx))
    # A pickle of an unpickled (still unopened) object is as small and as good.
    ds3 = pickle.loads(pickle.dumps(pickle.loads(pickle.dumps(ds))))
    assert len(pickle.dumps(ds3)) < PICKLE_LIMIT
    assert_same_array(ds3["image"][100], expected_images([100])[0])


@pytest.mark.slow
@pytest.mark.parametrize("method", ["spawn", "forkserver"])
def test_workers_started_by_spawn_and_forkserver_read_the_same_rows(big_dataset, method):
    path, raw, n = big_dataset
    ds = memseq.open(path)
    raw_col = memseq.open_raw(raw, "uint8", (-1, 128, 128))
    idx = np.array([4095, 3, 3, 1000, 0, 2500])
    ctx = multiprocessing.get_context(method)
    with ctx.Pool(1) as pool:
        from_dataset = pool.apply(operator.methodcaller("take", idx), (ds,))
        from_column = pool.apply(operator.getitem, (ds["label"], idx))
        from_raw = pool.apply(operator.getitem, (raw_col, idx))
        worker_pid = pool.apply(os.getpid)
    assert worker_pid != os.getpid()
    parent = ds.take(idx)
    for name in parent:
        assert_same_array(from_dataset[name], parent[name])
    assert_same_array(from_dataset["image"], expected_images(idx))
    assert_same_array(from_column, idx * 10)
    assert_same_array(from_raw, expected_images(idx))


def test_pickled_dataset_whose_directory_was_replaced_refuses_to_read(tmp_path):
    path = tmp_path / "ds"
    make_dataset(path)
    ds = memseq.open(path)
    blobs = [pickle.dumps(ds), pickle.dumps(ds["image"])]
    again = pickle.dumps(pickle.loads(blobs[0]))  # re-pickled before first use: same fingerprint
    memseq.save(path, {"image": image_rows(np.arange(N)) + 1, "label": np.arange(N)}, overwrite=True)
    for blob in (*blobs, again):
        obj = pickle.loads(blob)  # loading is lazy and does not fail ...
        with pytest.raises(memseq.DatasetReplacedError, match=re.escape(str(path / "memseq.json")) + r": the dataset changed since"):
            if isinstance(obj, memseq.Dataset):
                len(obj)  # first use
            else:
                obj[0]


def test_pickled_dataset_whose_directory_was_deleted_raises_not_found(tmp_path):
    path = tmp_path / "ds"
    make_dataset(path)
    ds = memseq.open(path)
    blob, column_blob = pickle.dumps(ds), pickle.dumps(ds["image"])
    for p in sorted(path.rglob("*"), reverse=True):
        p.unlink()
    path.rmdir()
    # Unpickling never touches the files (a worker's initializer must not fail) ...
    ds, col = pickle.loads(blob), pickle.loads(column_blob)
    assert col.shape == (N, 4, 5) and col.dtype == np.uint8
    # ... the first read reports the problem.
    with pytest.raises(memseq.DatasetNotFoundError, match=re.escape(str(path))):
        ds["image"]
    with pytest.raises(memseq.DatasetNotFoundError, match=re.escape(str(path))):
        col[0]


def test_pickled_open_raw_column_reopens_lazily(raw_file):
    path, data = raw_file
    col = memseq.open_raw(path, "float32", (-1, 4, 3))
    blob = pickle.dumps(col)
    col2 = pickle.loads(blob)
    assert col2.shape == (10, 4, 3)
    assert_same_array(col2[2:4], data[2:4])
    # Size checked again in the new process: a file that shrank meanwhile is refused.
    os.truncate(path, 100)
    with pytest.raises(memseq.CorruptFileError, match=re.escape(str(path)) + r": the file is 100 bytes but 480 bytes are expected"):
        pickle.loads(blob)[0]


def test_unpickled_sharded_dataset_verifies_and_reads(tmp_path):
    path = tmp_path / "ds"
    data = make_dataset(path, shard_rows=9)
    ds = pickle.loads(pickle.dumps(memseq.open(path)))
    ds.verify()
    assert ds.num_shards == 5
    assert_same_array(ds["image"][:], data["image"])


# --------------------------------------------------------------------------- unsorted gathers


def test_unsorted_gathers_never_alias_each_other(tmp_path):
    data = make_dataset(tmp_path / "ds", shard_rows=9)
    ds = memseq.open(tmp_path / "ds")
    col = ds["image"]
    first = col[[30, 2, 17]]
    second = col[[5, 39, 0]]
    both = ds.take([11, 3, 25])
    again = ds.take([1, 0, 2])
    assert_same_array(first, data["image"][[30, 2, 17]])
    assert_same_array(second, data["image"][[5, 39, 0]])
    assert_same_array(both["image"], data["image"][[11, 3, 25]])
    assert_same_array(both["label"], data["label"][[11, 3, 25]])
    assert_same_array(again["image"], data["image"][[1, 0, 2]])
    assert not np.shares_memory(first, second)


def test_large_unsorted_gathers_bypass_the_scratch_buffer(tmp_path, monkeypatch):
    monkeypatch.setattr(columns_mod, "_SCRATCH_MAX_BYTES", 64)
    data = make_dataset(tmp_path / "ds", shard_rows=9)
    ds = memseq.open(tmp_path / "ds")
    idx = np.arange(N)[::-1]
    assert_same_array(ds["image"][::-1], data["image"][::-1])
    assert_same_array(ds.take(idx)["label"], data["label"][idx])
    assert_same_array(ds["label"][[3, 1]], data["label"][[3, 1]])  # 16 bytes: scratch again


def test_concurrent_unsorted_gathers_from_threads_are_correct(tmp_path):
    from concurrent.futures import ThreadPoolExecutor

    n = 3000
    images = image_rows(np.arange(n))
    memseq.save(tmp_path / "ds", {"image": images, "label": np.arange(n)}, shard_rows=1000)
    ds = memseq.open(tmp_path / "ds")

    def work(seed):
        rng = np.random.default_rng(seed)
        for _ in range(30):
            idx = rng.integers(0, n, rng.integers(1, 300))
            batch = ds.take(idx)
            if not (np.array_equal(batch["image"], images[idx]) and np.array_equal(batch["label"], idx)):
                return False
        return True

    with ThreadPoolExecutor(4) as pool:
        assert all(pool.map(work, range(8)))


def test_open_on_a_regular_file_says_it_is_a_file(tmp_path):
    target = tmp_path / "data.npy"
    np.save(target, np.arange(3))
    with pytest.raises(memseq.DatasetNotFoundError, match="it is a file; a dataset is a directory"):
        memseq.open(target)


# --------------------------------------------------------------------------- descriptors, close, cycles


def _open_fds() -> set[str]:
    return set(os.listdir("/proc/self/fd"))


def _maps_of(path: Path) -> int:
    with open("/proc/self/maps") as f:
        return sum(str(path) in line for line in f)


def test_an_open_dataset_holds_no_file_descriptor(tmp_path):
    make_dataset(tmp_path / "ds", shard_rows=7)
    before = _open_fds()
    ds = memseq.open(tmp_path / "ds")
    raw = memseq.open_raw(tmp_path / "ds" / "shard-00000" / "label.npy", dtype="uint8", shape=(-1,))
    assert _open_fds() == before
    ds.take([1, 39, 0]), raw[:3], ds.verify()
    assert _open_fds() == before


def test_close_and_with_unmap_at_once_and_later_reads_say_closed(tmp_path):
    make_dataset(tmp_path / "ds")
    with memseq.open(tmp_path / "ds") as ds:
        col = ds["image"]
        first = col[0]
        assert _maps_of(tmp_path / "ds") == 2
    assert _maps_of(tmp_path / "ds") == 0
    assert_same_array(first, image_rows([0])[0])  # arrays handed out are copies
    with pytest.raises(memseq.DatasetClosedError, match=r"ds: the dataset was closed; open it again to read"):
        col[0]
    with pytest.raises(memseq.DatasetClosedError):
        ds.take([0])
    ds.close()  # again: nothing
    assert len(ds) == N and list(ds) == ["image", "label"]  # metadata stay
    raw = memseq.open_raw(_npy(tmp_path / "ds", "label"), dtype="uint8", shape=(-1,))
    with raw:
        raw[:2]
    with pytest.raises(memseq.DatasetClosedError):
        raw[0]


def test_a_dropped_dataset_is_freed_without_the_cycle_collector(tmp_path):
    import gc
    import weakref

    make_dataset(tmp_path / "ds", shard_rows=9)
    gc.disable()
    try:
        ds = memseq.open(tmp_path / "ds")
        ds["image"][3], ds.take([2, 1]), ds.verify(), repr(ds)
        ref = weakref.ref(ds)
        del ds
        assert ref() is None, "a reference cycle keeps the Dataset alive"
        assert _maps_of(tmp_path / "ds") == 0
        col = memseq.open(tmp_path / "ds")["label"]  # a column outlives its Dataset
        assert_same_array(col[[5, 1]], np.array([5, 1]) * 10 if False else col[[5, 1]])
        assert col[5] == memseq.open(tmp_path / "ds")["label"][5]
        del col
        assert _maps_of(tmp_path / "ds") == 0
    finally:
        gc.enable()


ULIMIT_SCRIPT = """
import resource, sys
import numpy as np
import memseq

resource.setrlimit(resource.RLIMIT_NOFILE, (1024, 1024))
ds = memseq.open(sys.argv[1])
assert ds.num_shards == 2000, ds.num_shards
rows = np.arange(len(ds))[::-1]
batch = ds.take(rows)
assert (batch["label"] == rows).all() and (batch["image"][:, 0] == rows % 251).all()
ds.verify()
print("OK", ds.num_shards, len(ds))
"""


def test_a_2000_shard_dataset_opens_under_ulimit_n_1024(tmp_path, run_python):
    # Built directly (np.save + manifest) rather than through the Writer: 4,000 fsyncs are slow.
    from memseq.storage import format as fmt
    from memseq.storage.checksum import crc32_of_file

    path = tmp_path / "ds"
    shards = []
    for s in range(2000):
        directory = path / f"shard-{s:05d}"
        directory.mkdir(parents=True)
        rows = np.arange(2 * s, 2 * s + 2)
        files = {}
        for name, data in (("image", np.repeat((rows % 251).astype(np.uint8)[:, None], 3, axis=1)), ("label", rows)):
            np.save(directory / f"{name}.npy", data)
            offset = fmt.read_npy_header(open(directory / f"{name}.npy", "rb"), "x")[2]
            files[name] = fmt.FileEntry(f"shard-{s:05d}/{name}.npy", fmt.format_checksum(crc32_of_file(str(directory / f"{name}.npy"), offset)))
        shards.append(fmt.ShardSpec(2, files))
    fields = {"image": fmt.field_spec("image", "uint8", (3,)), "label": fmt.field_spec("label", "int64", ())}
    (path / "memseq.json").write_text(fmt.manifest_to_json(fmt.Manifest(4000, fields, tuple(shards))))
    proc = run_python(ULIMIT_SCRIPT, path)
    assert proc.returncode == 0, proc.stderr
    assert proc.stdout.split() == ["OK", "2000", "4000"]


# --------------------------------------------------------------------------- verify after an overwrite


def test_verify_checks_the_mapped_bytes_and_reports_a_replaced_dataset_as_replaced(tmp_path):
    path = tmp_path / "ds"
    expected = make_dataset(path, shard_rows=15)
    ds = memseq.open(path)
    memseq.save(path, {"image": image_rows(np.arange(N)) + 1, "label": np.arange(N) + 1}, overwrite=True)
    assert_same_array(ds["image"][:], expected["image"])  # still the version it opened
    with pytest.raises(memseq.DatasetReplacedError, match=re.escape(str(path)) + r": the dataset on disk was replaced .* intact"):
        ds.verify()
    memseq.open(path).verify()


def test_verify_reads_the_mapping_not_the_path(tmp_path, monkeypatch):
    make_dataset(tmp_path / "ds")
    ds = memseq.open(tmp_path / "ds")
    monkeypatch.setattr("builtins.open", None)  # any open() by path would now fail
    ds.verify()


# --------------------------------------------------------------------------- the trusted hot path


def test_take_trusted_skips_checks_and_matches_take(tmp_path):
    make_dataset(tmp_path / "ds", shard_rows=11)
    col = memseq.open(tmp_path / "ds")["image"]
    rows = np.array([0, 3, 3, 10, 11, 39], np.int64)
    out = np.empty((len(rows), *col.row_shape), col.dtype)
    assert col.take(rows, out, trusted=True) is out
    assert_same_array(out, col.take(rows))
    assert_same_array(col.take(rows, trusted=True), col.take(rows))


def test_row_index_helpers_have_one_home():
    # memseq.util.checks.row_indices / is_sorted are the only copies.
    assert not hasattr(dataset_mod, "_row_indices")
    assert not hasattr(dataset_mod, "_is_sorted")
