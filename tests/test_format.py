"""The on-disk format: golden manifests, strict manifest validation, field specs, .npy headers."""

from __future__ import annotations

import io
import json
import math
import os
import re
import zlib
from pathlib import Path

import numpy as np
import pytest
from conftest import assert_same_array
from hypothesis import given, settings
from hypothesis import strategies as st

import memseq
from memseq.storage import format as fmt
from memseq.storage import manifest as manifest_mod

GOLDEN_DIR = Path(__file__).parent / "golden"
# Set MEMSEQ_REGEN_GOLDEN=1 to rewrite the golden files after an *intended* format change
# (and bump FORMAT_VERSION if older readers could misread the new files).
REGEN = os.environ.get("MEMSEQ_REGEN_GOLDEN") == "1"


# --------------------------------------------------------------------------- golden manifests


def golden_data() -> dict[str, np.ndarray]:
    """A small deterministic dataset covering several dtypes and row shapes."""
    return {
        "image": np.arange(5 * 2 * 3, dtype=np.uint8).reshape(5, 2, 3),
        "label": np.array([10, -1, 2**40, 0, 7], dtype=np.int64),
        "mask": np.array([True, False, True, True, False]),
        "score": (np.arange(10, dtype=np.float32) / 4 - 1).reshape(5, 2),
        "weight": np.array([0.5, -2.0, 1e-3, 65504.0, 0.0], dtype=np.float16),
    }


GOLDEN_CASES = {
    "small_v1.json": {},  # one shard: files at the top of the dataset directory
    "small_sharded_v1.json": {"shard_rows": 3},  # two shards: 3 + 2 rows
}


def _golden(name: str, written: bytes) -> bytes:
    path = GOLDEN_DIR / name
    if REGEN:
        path.write_bytes(written)
    return path.read_bytes()


@pytest.mark.parametrize("golden_name", sorted(GOLDEN_CASES))
def test_manifest_matches_golden_byte_for_byte(tmp_path, golden_name):
    memseq.save(tmp_path / "ds", golden_data(), **GOLDEN_CASES[golden_name])
    written = (tmp_path / "ds" / "memseq.json").read_bytes()
    assert written == _golden(golden_name, written), (
        "The manifest format drifted. If intended, regenerate with MEMSEQ_REGEN_GOLDEN=1 and "
        "bump the format version if older readers could misread it."
    )


@pytest.mark.parametrize("golden_name", sorted(GOLDEN_CASES))
def test_golden_checksums_are_crc32_of_the_data_bytes(golden_name):
    # Computed independently of memseq: zlib CRC-32 of the rows' raw bytes, header excluded.
    doc = json.loads((GOLDEN_DIR / golden_name).read_text())
    data = golden_data()
    start = 0
    for shard in doc["shards"]:
        stop = start + shard["num_rows"]
        for name, entry in shard["files"].items():
            expected = zlib.crc32(np.ascontiguousarray(data[name][start:stop]).tobytes())
            assert entry["checksum"] == f"crc32:{expected:08x}", (golden_name, name)
        start = stop
    assert start == doc["num_rows"] == 5
    # Pin a few literal values too, so a change in the data builder cannot hide a drift.
    if golden_name == "small_v1.json":
        files = doc["shards"][0]["files"]
        assert files["image"] == {"checksum": "crc32:%08x" % zlib.crc32(bytes(range(30))), "path": "image.npy"}
        assert files["label"]["path"] == "label.npy"


def test_golden_manifest_content_is_the_documented_schema():
    doc = json.loads((GOLDEN_DIR / "small_sharded_v1.json").read_text())
    assert doc["format"] == "memseq" and doc["version"] == 1
    assert doc["fields"] == {
        "image": {"dtype": "|u1", "shape": [2, 3], "layout": "fixed"},
        "label": {"dtype": "<i8", "shape": [], "layout": "fixed"},
        "mask": {"dtype": "|b1", "shape": [], "layout": "fixed"},
        "score": {"dtype": "<f4", "shape": [2], "layout": "fixed"},
        "weight": {"dtype": "<f2", "shape": [], "layout": "fixed"},
    }
    assert [s["num_rows"] for s in doc["shards"]] == [3, 2]
    assert doc["shards"][1]["files"]["mask"]["path"] == "shard-00001/mask.npy"


def test_golden_manifest_opens_over_plain_np_save_files(tmp_path):
    # The reader accepts files written by np.save (unpadded headers), not only memseq's own.
    ds_dir = tmp_path / "ds"
    ds_dir.mkdir()
    (ds_dir / "memseq.json").write_bytes((GOLDEN_DIR / "small_sharded_v1.json").read_bytes())
    data = golden_data()
    for shard, rows in (("shard-00000", slice(0, 3)), ("shard-00001", slice(3, 5))):
        (ds_dir / shard).mkdir()
        for name, arr in data.items():
            np.save(ds_dir / shard / f"{name}.npy", arr[rows])
    ds = memseq.open(ds_dir)
    ds.verify()
    for name, arr in data.items():
        assert_same_array(ds[name][:], arr)


def test_data_files_are_aligned_npy_v1(tmp_path):
    memseq.save(tmp_path / "ds", golden_data())
    for name, arr in golden_data().items():
        path = tmp_path / "ds" / f"{name}.npy"
        with open(path, "rb") as f:
            assert np.lib.format.read_magic(f) == (1, 0)
            shape, fortran, dtype = np.lib.format.read_array_header_1_0(f)
            offset = f.tell()
        assert (shape, fortran, dtype) == (arr.shape, False, arr.dtype)
        assert offset % 64 == 0
        assert path.stat().st_size == offset + arr.nbytes
        assert_same_array(np.load(path, mmap_mode="r"), arr)


# --------------------------------------------------------------------------- manifest validation


@pytest.fixture
def dataset_dir(tmp_path) -> Path:
    path = tmp_path / "ds"
    memseq.save(path, {"image": np.zeros((4, 2, 2), np.uint8), "label": np.arange(4)})
    return path


def _edit_manifest(ds_dir: Path, edit) -> Path:
    manifest = ds_dir / "memseq.json"
    doc = json.loads(manifest.read_text())
    edit(doc)
    manifest.write_text(json.dumps(doc))
    return manifest


def _field(name):
    def get(doc):
        return doc["fields"][name]

    return get


def _file(name, shard=0):
    def get(doc):
        return doc["shards"][shard]["files"][name]

    return get


def _set(getter, key, value):
    def edit(doc):
        getter(doc)[key] = value

    return edit


def _delete(getter, key):
    def edit(doc):
        del getter(doc)[key]

    return edit


def _top(doc):
    return doc


def _shard0(doc):
    return doc["shards"][0]


BAD_MANIFESTS = [
    # id, edit, exception, message pattern
    ("format-wrong", _set(_top, "format", "npz"), r"'format' must be 'memseq'\. Received: 'npz'"),
    ("format-missing", _delete(_top, "format"), r"'format' must be 'memseq'\. Received: None"),
    ("version-string", _set(_top, "version", "1"), r"\['version'\] has the wrong type\. Received: '1'"),
    ("version-bool", _set(_top, "version", True), r"\['version'\] has the wrong type\. Received: True"),
    ("version-float", _set(_top, "version", 1.0), r"\['version'\] has the wrong type\. Received: 1\.0"),
    ("version-missing", _delete(_top, "version"), r"missing the key 'version'"),
    ("num_rows-missing", _delete(_top, "num_rows"), r"missing the key 'num_rows'"),
    ("num_rows-string", _set(_top, "num_rows", "4"), r"\['num_rows'\] has the wrong type\. Received: '4'"),
    ("num_rows-bool", _set(_top, "num_rows", True), r"\['num_rows'\] has the wrong type\. Received: True"),
    ("num_rows-negative", _set(_top, "num_rows", -4), r"must be >= 0\. Received: -4"),
    ("num_rows-disagrees", _set(_top, "num_rows", 5), r"'num_rows' is 5 but the shards hold 4 rows"),
    ("unknown-top-key", _set(_top, "comment", "hi"), r"manifest has unknown keys \['comment'\]"),
    ("fields-missing", _delete(_top, "fields"), r"missing the key 'fields'"),
    ("fields-list", _set(_top, "fields", []), r"\['fields'\] has the wrong type"),
    ("fields-empty", _set(_top, "fields", {}), r"has no fields"),
    ("field-not-object", _set(_top, "fields", {"image": "u1", "label": "i8"}), r"fields\['image'\] must be an object"),
    ("field-bad-name", lambda d: d["fields"].update({"../evil": d["fields"].pop("label")}), r"Field names must be"),
    ("field-unknown-key", _set(_field("image"), "compression", "zstd"), r"unknown keys \['compression'\]"),
    ("layout-ragged-fixed-shape", _set(_field("label"), "layout", "ragged"), r"a 'ragged' field has null as the first dimension"),
    ("layout-fixed-null-shape", _set(_field("label"), "shape", [None]), r"a 'ragged' field has null as the first dimension"),
    ("layout-unknown", _set(_field("label"), "layout", "sparse"), r"layout 'sparse'; this memseq reads 'fixed' and 'ragged'"),
    ("layout-missing", _delete(_field("label"), "layout"), r"fields\['label'\] is missing the key 'layout'"),
    ("dtype-object", _set(_field("label"), "dtype", "|O"), r"bool and numeric dtypes only"),
    ("dtype-unicode", _set(_field("label"), "dtype", "<U4"), r"bool and numeric dtypes only"),
    ("dtype-bytes", _set(_field("label"), "dtype", "|S8"), r"bool and numeric dtypes only"),
    ("dtype-structured", _set(_field("label"), "dtype", "i4,f8"), r"bool and numeric dtypes only"),
    ("dtype-datetime", _set(_field("label"), "dtype", "<M8[s]"), r"bool and numeric dtypes only"),
    ("dtype-void", _set(_field("label"), "dtype", "|V8"), r"bool and numeric dtypes only"),
    ("dtype-garbage", _set(_field("label"), "dtype", "int65"), r"\['dtype'\] is not a dtype\. Received: 'int65'"),
    ("dtype-unparsable", _set(_field("label"), "dtype", "i4,("), r"\['dtype'\] is not a dtype"),
    ("dtype-int", _set(_field("label"), "dtype", 8), r"\['dtype'\] has the wrong type\. Received: 8"),
    ("shape-string", _set(_field("image"), "shape", "2,2"), r"\['shape'\] has the wrong type"),
    ("shape-negative", _set(_field("image"), "shape", [2, -2]), r"non-negative ints"),
    ("shape-bool", _set(_field("image"), "shape", [True, 2]), r"non-negative ints"),
    ("shape-float", _set(_field("image"), "shape", [2.0, 2]), r"non-negative ints"),
    ("shards-missing", _delete(_top, "shards"), r"missing the key 'shards'"),
    ("shards-object", _set(_top, "shards", {}), r"\['shards'\] has the wrong type"),
    ("shard-not-object", _set(_top, "shards", [4]), r"shards\[0\] must be an object"),
    ("shard-unknown-key", _set(_shard0, "offsets", []), r"shards\[0\] has unknown keys \['offsets'\]"),
    ("shard-rows-string", _set(_shard0, "num_rows", "4"), r"shards\[0\]\['num_rows'\] has the wrong type"),
    ("shard-file-missing", lambda d: d["shards"][0]["files"].pop("label"), r"must name exactly the fields"),
    ("shard-file-extra", _set(lambda d: d["shards"][0]["files"], "extra", {"path": "x.npy", "checksum": "crc32:00000000"}), r"must name exactly the fields"),
    ("file-not-object", _set(lambda d: d["shards"][0]["files"], "label", "label.npy"), r"\['files'\]\['label'\] must be an object"),
    ("file-unknown-key", _set(_file("label"), "size", 32), r"unknown keys \['size'\]"),
    ("file-path-missing", _delete(_file("label"), "path"), r"missing the key 'path'"),
    ("file-path-int", _set(_file("label"), "path", 3), r"\['path'\] has the wrong type"),
    ("checksum-missing", _delete(_file("label"), "checksum"), r"missing the key 'checksum'"),
    ("checksum-md5", _set(_file("label"), "checksum", "md5:0123456789abcdef"), r"must look like 'crc32:0123abcd'"),
    ("checksum-uppercase", _set(_file("label"), "checksum", "crc32:ABCDEF01"), r"must look like 'crc32:0123abcd'"),
]


@pytest.mark.parametrize("edit, pattern", [c[1:] for c in BAD_MANIFESTS], ids=[c[0] for c in BAD_MANIFESTS])
def test_bad_manifest_is_refused_with_format_error(dataset_dir, edit, pattern):
    manifest = _edit_manifest(dataset_dir, edit)
    with pytest.raises(memseq.FormatError, match=pattern) as info:
        memseq.open(dataset_dir)
    assert isinstance(info.value, ValueError)
    assert not isinstance(info.value, memseq.UnsafePathError)
    assert str(manifest) in str(info.value)


@pytest.mark.parametrize(
    "version, pattern",
    [
        (2, r"version 2 is not supported; this memseq reads version\(s\) \[1\]\. .*upgrade memseq"),
        (0, r"version 0 is not supported; this memseq reads version\(s\) \[1\]\.$"),
        (-1, r"version -1 is not supported; this memseq reads version\(s\) \[1\]\.$"),
        (99, r"version 99 is not supported.*newer memseq: upgrade memseq"),
    ],
)
def test_unknown_version_is_refused_naming_supported_versions(dataset_dir, version, pattern):
    manifest = _edit_manifest(dataset_dir, _set(_top, "version", version))
    with pytest.raises(memseq.FormatError, match=pattern) as info:
        memseq.open(dataset_dir)
    assert str(manifest) in str(info.value)


def test_unknown_version_is_refused_before_unknown_keys(dataset_dir):
    # A future version may add keys: the message must be about the version, not the keys.
    def future(doc):
        doc["version"] = 2
        doc["fields"]["label"]["layout"] = "ragged"
        doc["fields"]["label"]["offsets_dtype"] = "<i8"
        doc["new_top_level_key"] = 1

    _edit_manifest(dataset_dir, future)
    with pytest.raises(memseq.FormatError, match="version 2 is not supported.*upgrade"):
        memseq.open(dataset_dir)


@pytest.mark.parametrize(
    "raw, pattern",
    [
        (b"{not json", r"not valid UTF-8 JSON"),
        (b"", r"not valid UTF-8 JSON"),
        (b'{"format": "memseq", "version": 1', r"not valid UTF-8 JSON"),
        (b"\xff\xfe{}", r"not valid UTF-8 JSON"),
        (b"[1, 2]", r"must be a JSON object\. Received: list"),
        (b'"memseq"', r"must be a JSON object\. Received: str"),
        (b"null", r"must be a JSON object\. Received: NoneType"),
    ],
    ids=["garbage", "empty", "cut-off", "not-utf8", "list", "string", "null"],
)
def test_unparsable_manifest_is_refused(dataset_dir, raw, pattern):
    (dataset_dir / "memseq.json").write_bytes(raw)
    with pytest.raises(memseq.FormatError, match=pattern) as info:
        memseq.open(dataset_dir)
    assert isinstance(info.value, ValueError)
    assert str(dataset_dir / "memseq.json") in str(info.value)


def test_oversized_manifest_is_refused_before_parsing(dataset_dir, monkeypatch):
    monkeypatch.setattr(manifest_mod, "_MAX_MANIFEST_BYTES", 1024)
    (dataset_dir / "memseq.json").write_bytes(b"{" + b" " * 2000 + b"}")
    with pytest.raises(memseq.FormatError, match=r"memseq\.json: larger than 1024 bytes"):
        memseq.open(dataset_dir)


def test_missing_directory_is_dataset_not_found(tmp_path):
    missing = tmp_path / "no" / "such" / "dataset"
    with pytest.raises(memseq.DatasetNotFoundError, match=re.escape(repr(str(missing))) + ".*no such directory") as info:
        memseq.open(missing)
    assert isinstance(info.value, FileNotFoundError)


def test_directory_without_manifest_is_dataset_not_found(tmp_path):
    (tmp_path / "plain").mkdir()
    np.save(tmp_path / "plain" / "image.npy", np.zeros(3))
    with pytest.raises(FileNotFoundError, match=r"plain'.*is not a memseq dataset.*memseq\.json is missing") as info:
        memseq.open(tmp_path / "plain")
    assert isinstance(info.value, memseq.DatasetNotFoundError)


def test_path_that_is_a_file_is_dataset_not_found(tmp_path):
    (tmp_path / "file.npy").write_bytes(b"x")
    with pytest.raises(memseq.DatasetNotFoundError, match="file.npy"):
        memseq.open(tmp_path / "file.npy")


# --------------------------------------------------------------------------- unsafe paths


@pytest.mark.parametrize(
    "bad_path, pattern",
    [
        ("/etc/passwd", r"must be relative to the dataset directory\. Received: '/etc/passwd'"),
        ("../outside.npy", r"must not contain '\.\.'.*Received: '\.\./outside\.npy'"),
        ("sub/../label.npy", r"must not contain '\.\.'"),
        ("./../label.npy", r"must not contain '\.\.'"),
        ("a//label.npy", r"must not contain '\.\.' or empty components"),
        ("sub\\label.npy", r"must be relative"),
        ("", r"must be relative"),
        ("label.npy\x00", r"must be relative"),
    ],
    ids=["absolute", "dotdot", "inner-dotdot", "dot-dotdot", "empty-component", "backslash", "empty", "nul"],
)
def test_unsafe_file_path_in_manifest_is_refused(dataset_dir, bad_path, pattern):
    manifest = _edit_manifest(dataset_dir, _set(_file("label"), "path", bad_path))
    with pytest.raises(memseq.UnsafePathError, match=pattern) as info:
        memseq.open(dataset_dir)
    assert isinstance(info.value, memseq.FormatError) and isinstance(info.value, ValueError)
    assert str(manifest) in str(info.value)


def test_symlinked_file_resolving_outside_is_refused(dataset_dir, tmp_path):
    outside = tmp_path / "outside.npy"
    os.replace(dataset_dir / "label.npy", outside)
    os.symlink(outside, dataset_dir / "label.npy")
    with pytest.raises(memseq.UnsafePathError, match=r"'label\.npy' resolves to .*outside\.npy'?, outside the dataset"):
        memseq.open(dataset_dir)


def test_relative_symlink_escaping_is_refused(dataset_dir, tmp_path):
    os.replace(dataset_dir / "label.npy", tmp_path / "outside.npy")
    os.symlink("../outside.npy", dataset_dir / "label.npy")
    with pytest.raises(memseq.UnsafePathError, match="outside the dataset directory"):
        memseq.open(dataset_dir)


def test_symlinked_shard_directory_resolving_outside_is_refused(tmp_path):
    ds_dir = tmp_path / "ds"
    memseq.save(ds_dir, {"x": np.arange(6)}, shard_rows=3)
    elsewhere = tmp_path / "elsewhere"
    os.replace(ds_dir / "shard-00001", elsewhere)
    os.symlink(elsewhere, ds_dir / "shard-00001")
    with pytest.raises(memseq.UnsafePathError, match=r"shard-00001/x\.npy.*outside the dataset directory"):
        memseq.open(ds_dir)


def test_symlinks_inside_the_dataset_and_to_the_dataset_are_fine(dataset_dir, tmp_path):
    # A symlink to the dataset directory itself, and one between files inside it, are safe.
    os.replace(dataset_dir / "label.npy", dataset_dir / "label-real.npy")
    os.symlink("label-real.npy", dataset_dir / "label.npy")
    os.symlink(dataset_dir, tmp_path / "alias")
    ds = memseq.open(tmp_path / "alias")
    ds.verify()
    assert ds["label"][:].tolist() == [0, 1, 2, 3]


# --------------------------------------------------------------------------- field specs


def test_field_spec_normalises_shapes_and_dtypes():
    spec = fmt.field_spec("image", "uint8", (64, 64, 3))
    assert spec == fmt.FieldSpec("image", np.dtype(np.uint8), (64, 64, 3))
    assert spec.row_nbytes == 64 * 64 * 3
    assert spec.to_json() == {"dtype": "|u1", "shape": [64, 64, 3], "layout": "fixed"}
    assert fmt.field_spec("x", np.float32, 5).shape == (5,)
    assert fmt.field_spec("x", "float64", np.int64(2)).shape == (2,)
    assert fmt.field_spec("x", "int64", ()).row_nbytes == 8
    assert fmt.field_spec("x", "int64", (0, 3)).row_nbytes == 0
    assert fmt.field_spec("x", ">i4", [np.int16(3)]).to_json() == {"dtype": ">i4", "shape": [3], "layout": "fixed"}


@pytest.mark.parametrize(
    "name", ["", ".hidden", "-dash", "a/b", "a\\b", "..", "x" * 129, "sp ace", "é", 5, None, b"bytes"]
)
def test_bad_field_names_are_refused(name):
    with pytest.raises(memseq.SchemaError, match=re.escape(repr(name))):
        fmt.check_field_name(name)


@pytest.mark.parametrize("name", ["a", "image", "x_1", "a.b-c", "_private", "9lives", "x" * 128])
def test_good_field_names_are_accepted(name):
    assert fmt.check_field_name(name) == name


@pytest.mark.parametrize("dtype", [object, "U4", "S3", "V8", "M8[ns]", "m8[s]", [("a", "i4")], "i4,f8", "(2,)i4"])
def test_non_numeric_dtypes_are_refused(dtype):
    with pytest.raises(memseq.SchemaError, match=r"Field 'f': memseq stores bool and numeric dtypes only"):
        fmt.check_dtype(dtype, field="f")


@pytest.mark.parametrize("dtype", ["notatype", "i4,(", 3.5])
def test_unparsable_dtypes_are_refused(dtype):
    with pytest.raises(memseq.SchemaError, match=r"Field 'f': not a dtype"):
        fmt.check_dtype(dtype, field="f")


@pytest.mark.parametrize(
    "shape", [(-1,), (2, -3), (True,), (2.0,), "abc", None, (np.float64(2),), ((2,),)]
)
def test_bad_row_shapes_are_refused(shape):
    with pytest.raises(memseq.SchemaError, match=r"Field 'x': row shape must be a tuple"):
        fmt.field_spec("x", "int8", shape)


def test_format_checksum():
    assert fmt.format_checksum(0) == "crc32:00000000"
    assert fmt.format_checksum(0xABCDEF) == "crc32:00abcdef"
    assert fmt.format_checksum(-1) == "crc32:ffffffff"


# --------------------------------------------------------------------------- .npy headers

NUMERIC_DTYPES = [
    "bool", "int8", "int16", "int32", "int64", "uint8", "uint16", "uint32", "uint64",
    "float16", "float32", "float64", "complex64", ">i4", ">f8",
]


@settings(max_examples=50, deadline=None)
@given(
    dtype=st.sampled_from(NUMERIC_DTYPES),
    shape=st.lists(st.integers(0, 2**40), min_size=1, max_size=4).map(tuple),
    pad=st.integers(0, 3),
)
def test_npy_header_is_read_back_by_numpy_and_by_memseq(dtype, shape, pad):
    dt = np.dtype(dtype)
    shortest = len(fmt.npy_header(dt, shape))
    header = fmt.npy_header(dt, shape, shortest + 64 * pad)
    assert len(header) == shortest + 64 * pad and len(header) % 64 == 0
    f = io.BytesIO(header)
    assert np.lib.format.read_magic(f) == (1, 0)
    assert np.lib.format.read_array_header_1_0(f) == (shape, False, dt)
    assert f.tell() == len(header)
    if math.prod(shape) * dt.itemsize <= 2**63 - 1:
        assert fmt.read_npy_header(io.BytesIO(header), "x.npy") == (dt, shape, len(header))
    else:  # numpy parses it, but no file could hold it: int64 byte offsets would wrap
        with pytest.raises(memseq.FormatError, match=r"x\.npy: not a readable \.npy file \(shape .* takes more than 2\*\*63 - 1 bytes\)"):
            fmt.read_npy_header(io.BytesIO(header), "x.npy")
    # The reserved length fits any row count of this row shape.
    reserved = fmt.reserved_header_length(dt, shape[1:])
    assert len(fmt.npy_header(dt, (2**63 - 1, *shape[1:]), reserved)) == reserved


def test_npy_header_refuses_a_length_it_cannot_fit():
    with pytest.raises(ValueError, match="Cannot fit"):
        fmt.npy_header(np.dtype("u1"), (3,), 32)
    with pytest.raises(ValueError, match="Cannot fit"):
        fmt.npy_header(np.dtype("u1"), (3,), 64 * 3 + 1)


def test_read_npy_header_accepts_np_save_output_including_version_2():
    buf = io.BytesIO()
    np.lib.format.write_array(buf, np.zeros((3, 2), np.float32), version=(2, 0))
    buf.seek(0)
    dtype, shape, offset = fmt.read_npy_header(buf, "v2.npy")
    assert (dtype, shape) == (np.dtype(np.float32), (3, 2))
    assert len(buf.getvalue()) == offset + 24


@pytest.mark.parametrize(
    "raw, pattern",
    [
        (b"", r"bad\.npy: not a readable \.npy file"),
        (b"PK\x03\x04 this is a zip", r"bad\.npy: not a readable \.npy file"),
        (b"\x93NUMPY\x01\x00\x40\x00{'descr': '<i8', 'fortran", r"bad\.npy: not a readable \.npy file"),
        (b"\x93NUMPY\x09\x00\x10\x00{}              \n", r"bad\.npy: not a readable \.npy file"),
    ],
    ids=["empty", "zip", "cut-header", "unknown-version"],
)
def test_read_npy_header_refuses_malformed_files(raw, pattern):
    with pytest.raises(memseq.FormatError, match=pattern):
        fmt.read_npy_header(io.BytesIO(raw), "bad.npy")


def test_read_npy_header_refuses_fortran_order():
    buf = io.BytesIO()
    np.lib.format.write_array(buf, np.asfortranarray(np.zeros((3, 2), np.float32)))
    buf.seek(0)
    with pytest.raises(memseq.FormatError, match=r"f\.npy: Fortran-order"):
        fmt.read_npy_header(buf, "f.npy")


def test_manifest_that_is_a_directory_is_refused(tmp_path):
    (tmp_path / "ds" / "memseq.json").mkdir(parents=True)
    with pytest.raises(memseq.FormatError, match=r"ds/memseq\.json: manifest is a directory, not a regular file"):
        memseq.open(tmp_path / "ds")


def test_the_old_import_path_exports_every_public_name_of_the_format():
    # storage/format.py is the specification and the public names; the code lives in
    # storage/schema.py (data model) and storage/manifest.py (memseq.json): split by
    # role, memseq.format and memseq.storage.format keep every name they had.
    import memseq.format

    expected = [
        "FORMAT_NAME", "FORMAT_VERSION", "FieldSpec", "FileEntry", "MANIFEST_NAME", "Manifest",
        "SUPPORTED_VERSIONS", "ShardSpec", "check_dtype", "check_field_name", "check_shard_rows",
        "field_spec", "format_checksum", "has_npy_magic", "manifest_to_json", "npy_header",
        "read_manifest", "read_npy_header", "reserved_header_length", "resolve_inside",
        "shard_directory", "shard_file", "shard_layout",
    ]
    assert sorted(memseq.format.__all__) == sorted(fmt.__all__) == expected
    for name in expected:
        assert getattr(memseq.format, name) is getattr(fmt, name), name
    assert fmt.parse_manifest is manifest_mod.parse_manifest
    assert fmt.read_manifest_bytes is manifest_mod.read_manifest_bytes


def test_manifest_round_trips_through_json(tmp_path):
    spec = fmt.field_spec("tokens", "uint16", (None, 2))
    manifest = fmt.Manifest(3, {"tokens": spec}, (fmt.ShardSpec(3, {"tokens": fmt.FileEntry(
        "tokens.npy", fmt.format_checksum(0xABC), 7, fmt.FileEntry("tokens.offsets.npy", fmt.format_checksum(1)))}),))
    (tmp_path / "memseq.json").write_text(fmt.manifest_to_json(manifest))
    assert fmt.read_manifest(str(tmp_path)) == manifest
