"""Variable-length (ragged) fields: format, write, read, verify, corrupt offsets."""

from __future__ import annotations

import json
import pickle

import numpy as np
import pytest
from conftest import assert_same_array
from hypothesis import given, settings
from hypothesis import strategies as st

import memseq


def _rows(lengths, trailing=(), dtype=np.uint16, seed=0):
    rng = np.random.default_rng(seed)
    return [rng.integers(0, 60000, (n, *trailing)).astype(dtype) for n in lengths]


def _write(path, rows, labels=None, shard_rows=None, appends=1, dtype="uint16", trailing=()):
    labels = np.arange(len(rows), dtype=np.int64) if labels is None else labels
    fields = {"tokens": (dtype, (None, *trailing)), "label": ("int64", ())}
    cuts = np.linspace(0, len(rows), appends + 1).astype(int)
    with memseq.Writer(path, fields=fields, shard_rows=shard_rows) as w:
        for a, b in zip(cuts[:-1], cuts[1:]):
            w.append({"tokens": rows[a:b], "label": labels[a:b]})


def _manifest(path):
    return json.loads((path / "memseq.json").read_text())


def _assert_rows(actual, expected):
    assert len(actual) == len(expected)
    for a, e in zip(actual, expected):
        assert_same_array(a, e)


# --------------------------------------------------------------------------- round trips


@settings(max_examples=40, deadline=None)
@given(
    lengths=st.lists(st.integers(0, 40), min_size=0, max_size=30),
    shard_rows=st.one_of(st.none(), st.integers(1, 7)),
    appends=st.integers(1, 4),
    trailing=st.sampled_from([(), (3,), (2, 2)]),
)
def test_round_trip(tmp_path_factory, lengths, shard_rows, appends, trailing):
    path = tmp_path_factory.mktemp("rt") / "ds"
    rows = _rows(lengths, trailing)
    _write(path, rows, shard_rows=shard_rows, appends=appends, trailing=trailing)
    ds = memseq.open(path)
    column = ds["tokens"]
    assert len(column) == len(ds) == len(rows)
    assert column.row_shape == (None, *trailing)
    assert ds.fields["tokens"].shape == (None, *trailing)
    assert_same_array(column.lengths, np.array(lengths, np.int64).reshape(-1))
    _rows_equal = _assert_rows
    _rows_equal(column[:], rows)
    for i in range(len(rows)):
        assert_same_array(column[i], rows[i])
    if rows:
        assert_same_array(column[-1], rows[-1])
        pick = np.random.default_rng(1).integers(0, len(rows), 10)
        _rows_equal(column[pick], [rows[i] for i in pick])
        mask = np.arange(len(rows)) % 2 == 0
        _rows_equal(column[mask], [r for r, m in zip(rows, mask) if m])
        _rows_equal(column[::-2], rows[::-2])
        taken = ds.take(pick[::-1])
        _rows_equal(taken["tokens"], [rows[i] for i in pick[::-1]])
        assert_same_array(taken["label"], pick[::-1].astype(np.int64))
    ds.verify()
    # Every file is plain numpy: the values and offsets of each shard rebuild the rows.
    rebuilt = []
    for shard in _manifest(path)["shards"]:
        entry = shard["files"]["tokens"]
        values = np.load(path / entry["path"], mmap_mode="r")
        offsets = np.load(path / entry["offsets"]["path"], mmap_mode="r")
        assert offsets.dtype == np.dtype("<i8") and offsets[0] == 0 and offsets[-1] == len(values) == entry["num_values"]
        rebuilt += [np.asarray(values[a:b]) for a, b in zip(offsets[:-1], offsets[1:])]
    _rows_equal(rebuilt, rows)


def test_design_example_and_save(tmp_path):
    with memseq.Writer(tmp_path / "a", fields={"tokens": ("uint16", (None,)), "label": ("int64", ())}) as w:
        w.append({"tokens": [np.arange(5), np.arange(3)], "label": np.array([0, 1])})
    ds = memseq.open(tmp_path / "a")
    assert_same_array(ds["tokens"][1], np.arange(3, dtype=np.uint16))
    assert isinstance(ds["tokens"][0:2], list)
    frames = [np.ones((4, 80), np.float32), np.zeros((0, 80), np.float32)]
    memseq.save(tmp_path / "b", {"audio": frames, "label": np.arange(2)})
    ds = memseq.open(tmp_path / "b")
    assert ds.fields["audio"].shape == (None, 80)
    _assert_rows(ds["audio"][:], frames)
    # A saved ragged column copies into a new dataset.
    memseq.save(tmp_path / "c", {"audio": ds["audio"], "label": ds["label"]})
    _assert_rows(memseq.open(tmp_path / "c")["audio"][:], frames)


def test_column_pickles_by_reference(tmp_path):
    _write(tmp_path / "ds", _rows([300] * 200))
    column = memseq.open(tmp_path / "ds")["tokens"]
    data = pickle.dumps(column)
    assert len(data) < 2000
    assert_same_array(pickle.loads(data)[7], column[7])


def test_manifest_without_ragged_fields_has_no_ragged_keys(tmp_path):
    memseq.save(tmp_path / "ds", {"x": np.arange(3)})
    text = (tmp_path / "ds" / "memseq.json").read_text()
    assert "ragged" not in text and "offsets" not in text and "num_values" not in text


# --------------------------------------------------------------------------- writing errors


@pytest.mark.parametrize(
    "tokens, pattern",
    [
        ([np.arange(3, dtype=np.float32)], r"row 0 has dtype float32, which does not cast"),
        ([np.array([70000])], r"row 0 has dtype int64, which does not cast"),
        ([np.arange(4).reshape(2, 2)], r"rows must have shape \(length, \)\. Row 0 has shape \(2, 2\)"),
        (np.arange(3), r"takes a list of arrays, one per row"),
    ],
)
def test_writer_refuses_bad_rows(tmp_path, tokens, pattern):
    with memseq.Writer(tmp_path / "ds", fields={"tokens": ("uint16", (None,))}) as w:
        with pytest.raises(memseq.SchemaError, match=pattern):
            w.append({"tokens": tokens})


def test_writer_refuses_mismatched_row_counts_and_name_clash(tmp_path):
    with memseq.Writer(tmp_path / "ds", fields={"tokens": ("uint16", (None,)), "label": ("int64", ())}) as w:
        with pytest.raises(memseq.SchemaError, match="same number of rows"):
            w.append({"tokens": [np.arange(2)], "label": np.arange(2)})
    with pytest.raises(memseq.SchemaError, match="would share its file with the offsets"):
        memseq.Writer(tmp_path / "x", fields={"t": ("u1", (None,)), "t.offsets": ("u1", ())})
    with pytest.raises(memseq.SchemaError, match="rows must be arrays of"):
        memseq.save(tmp_path / "y", {"t": [np.zeros(2), np.zeros((2, 2))]})


# --------------------------------------------------------------------------- corrupt offsets


def _offsets_path(path):
    return path / _manifest(path)["shards"][0]["files"]["tokens"]["offsets"]["path"]


def _rewrite_offsets(path, edit):
    """Replaces the offsets file with edited values (same header, same size)."""
    file = _offsets_path(path)
    offsets = np.load(file)
    edit(offsets)
    np.save(file, offsets)


@pytest.fixture
def ragged_dir(tmp_path):
    _write(tmp_path / "ds", _rows([3, 0, 5, 2, 4]))
    return tmp_path / "ds"


def test_non_monotonic_offsets_pass_open_fail_read_and_verify(ragged_dir):
    _rewrite_offsets(ragged_dir, lambda o: o.__setitem__(2, 1))  # [0, 3, 1, 8, ...]: row 1 goes backwards
    ds = memseq.open(ragged_dir)  # the cheap checks pass
    assert_same_array(ds["tokens"][3], memseq.open(ragged_dir)["tokens"][3])
    with pytest.raises(memseq.CorruptFileError, match=r"row 1 spans values \[3, 1\)"):
        ds["tokens"][1]
    with pytest.raises(memseq.CorruptFileError, match="offsets decrease at row 1"):
        ds.verify()


def test_offsets_past_the_values(ragged_dir):
    _rewrite_offsets(ragged_dir, lambda o: o.__setitem__(-1, 10**6))
    with pytest.raises(memseq.CorruptFileError, match=r"must start at 0 and end at the number of values \(14\)"):
        memseq.open(ragged_dir)


def test_offset_far_past_the_values_inside(ragged_dir):
    _rewrite_offsets(ragged_dir, lambda o: o.__setitem__(3, 2**40))
    ds = memseq.open(ragged_dir)
    with pytest.raises(memseq.CorruptFileError, match=r"outside \[0, 14\]"):
        ds["tokens"][2]
    with pytest.raises(memseq.CorruptFileError):
        ds.verify()


def test_offsets_not_starting_at_zero(ragged_dir):
    _rewrite_offsets(ragged_dir, lambda o: o.__setitem__(0, 1))
    with pytest.raises(memseq.CorruptFileError, match="must start at 0"):
        memseq.open(ragged_dir)


def test_wrong_dtype_of_offsets(ragged_dir):
    file = _offsets_path(ragged_dir)
    np.save(file, np.load(file).astype(np.int32))
    with pytest.raises(memseq.FormatError, match=r"'tokens \(offsets\)' should have dtype int64"):
        memseq.open(ragged_dir)


def test_offsets_length_does_not_match_row_count(ragged_dir):
    file = _offsets_path(ragged_dir)
    np.save(file, np.load(file)[:-1])
    with pytest.raises(memseq.FormatError, match=r"should have shape \(6,\)"):
        memseq.open(ragged_dir)


def test_num_values_disagrees_with_values_file(ragged_dir):
    doc = _manifest(ragged_dir)
    doc["shards"][0]["files"]["tokens"]["num_values"] = 13
    (ragged_dir / "memseq.json").write_text(json.dumps(doc))
    with pytest.raises(memseq.FormatError, match=r"should have shape \(13,\)"):
        memseq.open(ragged_dir)


@pytest.mark.parametrize(
    "edit, pattern",
    [
        (lambda e: e.pop("offsets"), "missing the key 'offsets'"),
        (lambda e: e.pop("num_values"), "missing the key 'num_values'"),
        (lambda e: e.__setitem__("num_values", -1), "must be >= 0"),
        (lambda e: e["offsets"].__setitem__("path", "../x.npy"), "must not contain '..'"),
        (lambda e: e["offsets"].__setitem__("extra", 1), r"unknown keys \['extra'\]"),
    ],
)
def test_bad_ragged_manifest_entries(ragged_dir, edit, pattern):
    doc = _manifest(ragged_dir)
    edit(doc["shards"][0]["files"]["tokens"])
    (ragged_dir / "memseq.json").write_text(json.dumps(doc))
    with pytest.raises(memseq.FormatError, match=pattern):
        memseq.open(ragged_dir)


def test_checksum_of_offsets_is_verified(ragged_dir):
    # Same first and last offset, rows redistributed: only the checksum can tell.
    _rewrite_offsets(ragged_dir, lambda o: o.__setitem__(1, 2))
    with pytest.raises(memseq.CorruptFileError, match="checksum mismatch"):
        memseq.open(ragged_dir).verify()


# --------------------------------------------------------------------------- golden manifest

GOLDEN = __import__("pathlib").Path(__file__).parent / "golden" / "small_ragged_v1.json"


def golden_ragged_data():
    """Deterministic variable-length rows: 1-D tokens (one empty row) and 2-wide frames."""
    return {
        "tokens": [np.arange(n, dtype=np.uint16) * 3 for n in (4, 0, 2, 5, 1)],
        "frames": [np.full((n, 2), n, dtype=np.float32) for n in (1, 2, 0, 3, 1)],
        "label": np.array([3, 1, 4, 1, 5], dtype=np.int64),
    }


def test_ragged_manifest_matches_golden_byte_for_byte(tmp_path):
    memseq.save(tmp_path / "ds", golden_ragged_data(), shard_rows=3)
    written = (tmp_path / "ds" / "memseq.json").read_bytes()
    if __import__("os").environ.get("MEMSEQ_REGEN_GOLDEN") == "1":
        GOLDEN.write_bytes(written)
    assert written == GOLDEN.read_bytes(), "The ragged manifest format drifted (MEMSEQ_REGEN_GOLDEN=1 if intended)."


def test_golden_ragged_checksums_are_crc32_of_values_and_offsets():
    import zlib

    doc = json.loads(GOLDEN.read_text())
    assert doc["fields"]["tokens"] == {"dtype": "<u2", "shape": [None], "layout": "ragged"}
    assert doc["fields"]["frames"] == {"dtype": "<f4", "shape": [None, 2], "layout": "ragged"}
    data = golden_ragged_data()
    start = 0
    for shard in doc["shards"]:
        stop = start + shard["num_rows"]
        for name in ("tokens", "frames"):
            rows = data[name][start:stop]
            values = np.concatenate(rows)
            offsets = np.concatenate([[0], np.cumsum([len(r) for r in rows])]).astype("<i8")
            entry = shard["files"][name]
            assert entry["num_values"] == len(values)
            assert entry["checksum"] == f"crc32:{zlib.crc32(values.tobytes()):08x}"
            assert entry["offsets"]["checksum"] == f"crc32:{zlib.crc32(offsets.tobytes()):08x}"
            assert entry["offsets"]["path"] == entry["path"].replace(".npy", ".offsets.npy")
        start = stop
    assert start == doc["num_rows"] == 5


def test_no_single_array_form(tmp_path):
    _write(tmp_path / "ds", _rows([2, 3]))
    with pytest.raises(memseq.SchemaError, match="no single array form"):
        np.asarray(memseq.open(tmp_path / "ds")["tokens"])
