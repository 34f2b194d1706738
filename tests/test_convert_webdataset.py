"""WebDataset tar shards written by webdataset's own TarWriter, converted and compared value for value."""

from __future__ import annotations

import io
import os
import tarfile

import numpy as np
import pytest

wds = pytest.importorskip("webdataset")
Image = pytest.importorskip("PIL.Image")

from memseq import convert as cv  # noqa: E402
from memseq.errors import CorruptFileError, FormatError, SchemaError  # noqa: E402


def _png(array, mode=None):
    buf = io.BytesIO()
    Image.fromarray(array, mode).save(buf, format="PNG")
    return buf.getvalue()


def _samples(n, start=0, seed=0):
    rng = np.random.default_rng(seed)
    out = []
    for i in range(start, start + n):
        out.append({
            "__key__": f"{i:06d}",
            "cls": str(i * 3 - 7).encode(),
            "png": rng.integers(0, 256, (5, 4, 3), dtype=np.uint8),
            "depth.png": rng.integers(0, 2**16, (5, 4), dtype=np.uint16),
            "feat.npy": rng.random((2, 3)).astype(np.float32),
            "tokens.npy": rng.integers(0, 50000, i % 4).astype(np.int32),  # i % 4 == 0: empty
        })
    return out


def _write(path, samples):
    with wds.TarWriter(str(path)) as sink:
        for s in samples:
            sink.write({
                "__key__": s["__key__"], "cls": s["cls"], "png": _png(s["png"]), "depth.png": _png(s["depth.png"]),
                "feat.npy": s["feat.npy"], "tokens.npy": s["tokens.npy"],
            })


def _check(ds, samples):
    assert ds.num_rows == len(samples)
    assert {n: (str(f.dtype), f.shape) for n, f in ds.fields.items()} == {
        "cls": ("int64", ()), "png": ("uint8", (5, 4, 3)), "depth.png": ("uint16", (5, 4, 1)),
        "feat.npy": ("float32", (2, 3)), "tokens.npy": ("int32", (None,)),
    }
    np.testing.assert_array_equal(ds["cls"][:], [int(s["cls"]) for s in samples])
    np.testing.assert_array_equal(ds["png"][:], np.stack([s["png"] for s in samples]))
    np.testing.assert_array_equal(ds["depth.png"][:], np.stack([s["depth.png"] for s in samples])[..., None])
    np.testing.assert_array_equal(ds["feat.npy"][:], np.stack([s["feat.npy"] for s in samples]))
    for i, s in enumerate(samples):
        np.testing.assert_array_equal(ds["tokens.npy"][i], s["tokens.npy"])


def test_shards_round_trip_in_natural_order(tmp_path):
    shards = tmp_path / "shards"
    shards.mkdir()
    samples = []
    for k, n in ((0, 9), (2, 0), (10, 14)):
        part = _samples(n, len(samples), seed=k)
        _write(shards / f"train-{k}.tar", part)
        samples += part
    ds = cv.convert(tmp_path / "out", cv.source_for_path(shards), shard_rows=10)
    _check(ds, samples)


def test_fields_select_and_rename_extensions(tmp_path):
    samples = _samples(6)
    _write(tmp_path / "a.tar", samples)
    ds = cv.convert(tmp_path / "out", cv.WebDatasetSource(tmp_path / "a.tar", {"label": "cls", "image": "png"}))
    assert list(ds.fields) == ["label", "image"]
    np.testing.assert_array_equal(ds["image"][:], np.stack([s["png"] for s in samples]))


@pytest.mark.slow
def test_fixed_fields_in_worker_processes_match_one_process(tmp_path):
    _write(tmp_path / "a.tar", _samples(300))
    fields = ["cls", "png", "feat.npy"]
    one = cv.convert(tmp_path / "one", cv.WebDatasetSource(tmp_path / "a.tar", fields), shard_rows=100)
    two = cv.convert(tmp_path / "two", cv.WebDatasetSource(tmp_path / "a.tar", fields), shard_rows=100, jobs=2)
    for name in fields:
        np.testing.assert_array_equal(one[name][:], two[name][:])


def test_sample_missing_a_member_is_named_and_nothing_committed(tmp_path):
    samples = _samples(5)
    with wds.TarWriter(str(tmp_path / "a.tar")) as sink:
        for s in samples:
            sink.write({"__key__": s["__key__"], "cls": s["cls"], **({} if s["__key__"] == "000003" else
                                                                      {"feat.npy": s["feat.npy"]})})
    with pytest.raises(FormatError, match=r"a\.tar: sample '000003' has no 'feat\.npy' member"):
        cv.convert(tmp_path / "out", cv.WebDatasetSource(tmp_path / "a.tar"))
    assert sorted(os.listdir(tmp_path)) == ["a.tar"]


def test_truncated_and_compressed_shards_are_refused(tmp_path):
    _write(tmp_path / "a.tar", _samples(4))
    data = (tmp_path / "a.tar").read_bytes()
    cut = data.rindex(b"tokens.npy") + 512 + 20  # inside the last member's data
    (tmp_path / "b.tar").write_bytes(data[:cut])
    with pytest.raises(CorruptFileError, match=r"b\.tar: truncated"):
        cv.WebDatasetSource(tmp_path / "b.tar")
    import gzip

    (tmp_path / "c.tar").write_bytes(gzip.compress(data))
    with pytest.raises(FormatError, match=r"c\.tar: not a readable uncompressed tar \(a compressed tar"):
        cv.WebDatasetSource(tmp_path / "c.tar")


def test_values_memseq_cannot_hold_exactly_are_refused(tmp_path):
    with wds.TarWriter(str(tmp_path / "a.tar")) as sink:
        sink.write({"__key__": "0", "cls": b"1", "json": b"{}", "txt": b"a caption", "png": _png(np.zeros((2, 2, 3), np.uint8))})
        sink.write({"__key__": "1", "cls": b"x", "json": b"{}", "txt": b"2", "png": _png(np.zeros((3, 2, 3), np.uint8))})
    with pytest.raises(FormatError, match=r"extension 'json' \(field 'json'\): memseq decodes"):
        cv.WebDatasetSource(tmp_path / "a.tar")
    with pytest.raises(SchemaError, match=r"sample '0' member 'txt': holds 'a caption', not an integer"):
        cv.WebDatasetSource(tmp_path / "a.tar", ["txt"])
    with pytest.raises(SchemaError, match=r"sample '1' member 'cls': holds 'x', not an integer"):
        cv.convert(tmp_path / "o1", cv.WebDatasetSource(tmp_path / "a.tar", ["cls"]))
    with pytest.raises(SchemaError, match=r"sample '1' member 'png': a 3x2 RGB image"):
        cv.convert(tmp_path / "o2", cv.WebDatasetSource(tmp_path / "a.tar", ["png"]))
    assert sorted(os.listdir(tmp_path)) == ["a.tar"]


def test_npy_members_that_disagree_are_refused(tmp_path):
    with tarfile.open(tmp_path / "a.tar", "w") as tar:
        for key, arr in (("0", np.zeros((2, 3), np.float32)), ("1", np.zeros((2, 4), np.float32))):
            buf = io.BytesIO()
            np.save(buf, arr)
            info = tarfile.TarInfo(f"{key}.x.npy")
            info.size = len(buf.getvalue())
            tar.addfile(info, io.BytesIO(buf.getvalue()))
    with pytest.raises(SchemaError, match=r"sample '1' member 'x\.npy': holds float32 \(2, 4\)"):
        cv.WebDatasetSource(tmp_path / "a.tar")


def test_cli_converts_shards_with_members(tmp_path):
    import memseq
    from memseq.cli import main

    samples = _samples(5)
    _write(tmp_path / "a.tar", samples)
    assert main(["convert", str(tmp_path / "a.tar"), str(tmp_path / "out"), "--no-progress", "--members", "label=cls,png"]) == 0
    ds = memseq.open(tmp_path / "out")
    assert list(ds.fields) == ["label", "png"]
    np.testing.assert_array_equal(ds["label"][:], [int(s["cls"]) for s in samples])


def test_cli_scheduler_converts_shards_through_dask(tmp_path):
    pytest.importorskip("dask")
    import memseq
    from memseq.cli import main

    samples = _samples(7)
    _write(tmp_path / "a.tar", samples)
    assert main(["convert", str(tmp_path / "a.tar"), str(tmp_path / "out"), "--no-progress", "--members", "cls,png,feat.npy",
                 "--scheduler", "synchronous"]) == 0
    ds = memseq.open(tmp_path / "out")
    np.testing.assert_array_equal(ds["png"][:], np.stack([s["png"] for s in samples]))
    np.testing.assert_array_equal(ds["feat.npy"][:], np.stack([s["feat.npy"] for s in samples]))
