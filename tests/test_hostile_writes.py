"""The second hostile campaign against writes (issue 21): findings 1, 3, 9, 12 and the .npz part of 13.

Each case feeds one hostile input to a write path and asserts the one acceptable outcome:
the exact values committed, or a named ``memseq.MemseqError`` with nothing left behind
(no dataset, no temporary directory). Kinds:

- Dask blocks that lie about their chunk (rows, columns, dtype, values): ``SchemaError``
  naming the field and the block, nothing committed (finding 1);
- inputs a library would fill in: an HDF5 virtual dataset whose source is missing, a
  16-bit PNG, mixed bit depths (finding 3);
- disk full (a 2 MiB tmpfs when running as root; ENOSPC injected otherwise), file size
  limit (RLIMIT_FSIZE) and read-only failures during convert (jobs 1 and 2) and Dask
  save: ``WriteError`` naming the dataset (finding 9);
- dataset names of 230-255 bytes through save, Writer, convert and Dask save, and the
  sweep of a dead writer's temporary directory under such a name (finding 12);
- an object-dtype ``.npz``: ``SchemaError`` "not supported", never "corrupt" (finding 13).
"""

from __future__ import annotations

import errno
import json
import os
import struct
import subprocess
import zlib

import numpy as np
import pytest
from conftest import assert_same_array

import memseq
from memseq import convert as cv
from memseq.cli import main
from memseq.storage import commit as _commit

da = pytest.importorskip("dask.array", reason="dask[array] (test extra) is not installed")
dask = pytest.importorskip("dask")


def _leftovers(parent) -> list[str]:
    """Hidden entries beside a target: temporary directories of a write."""
    return sorted(e for e in os.listdir(parent) if e.startswith("."))


def _assert_nothing_written(path) -> None:
    assert not os.path.lexists(path), f"{path} was committed"
    assert _leftovers(os.path.dirname(path)) == []


@pytest.fixture(autouse=True)
def _synchronous_dask():
    # One thread: a lying block is found in a deterministic order, and the machine is shared.
    with dask.config.set(scheduler="synchronous"):
        yield


# --------------------------------------------------------------------------- finding 1: Dask blocks that lie


def _declared(values: np.ndarray, declared_dtype, rows: int = 4000, chunk_rows: int = 1000):
    """A Dask array of ``rows`` rows in chunks of ``chunk_rows`` declared as ``declared_dtype``,
    whose third block computes to ``values`` (whatever it really is)."""
    row_shape = (4,)
    blocks = []
    for j in range(rows // chunk_rows):
        good = np.full((chunk_rows, *row_shape), j, dtype=declared_dtype)
        block = values if j == 2 else good
        blocks.append(da.from_delayed(dask.delayed(lambda b=block: b)(), shape=(chunk_rows, *row_shape), dtype=declared_dtype))
    return da.concatenate(blocks)


LYING_BLOCKS = [
    # (id, what block 2 computes to, declared dtype, message)
    ("999-rows-of-1000", np.ones((999, 4), np.uint8), np.uint8, r"rows 2000:3000.*field 'x'.*arrays of shape \(1000, 4\)\. Received shape: \(999, 4\)"),
    ("1001-rows", np.ones((1001, 4), np.uint8), np.uint8, r"rows 2000:3000.*Received shape: \(1001, 4\)"),
    ("5-columns-of-4", np.ones((1000, 5), np.uint8), np.uint8, r"rows 2000:3000.*field 'x' takes rows of shape \(4,\).*Received shape: \(1000, 5\)"),
    ("flat", np.ones(4000, np.uint8), np.uint8, r"rows 2000:3000.*Received shape: \(4000,\)"),
    ("scalar", np.uint8(3), np.uint8, r"rows 2000:3000.*Received shape: \(\)"),
    ("int64-256-299-as-uint8", np.arange(4000, dtype=np.int64).reshape(1000, 4) % 44 + 256, np.uint8,
     r"rows 2000:3000.*field 'x' has dtype uint8; int64 does not cast to it safely"),
    ("int64-in-range-as-uint8", np.ones((1000, 4), np.int64), np.uint8, r"int64 does not cast to it safely"),
    ("float64-as-float32", np.full((1000, 4), 1e300), np.float32, r"float64 does not cast to it safely"),
    ("float-as-int", np.full((1000, 4), 0.5, np.float32), np.int32, r"float32 does not cast to it safely"),
    ("negative-as-unsigned", np.full((1000, 4), -1, np.int8), np.uint16, r"int8 does not cast to it safely"),
    ("objects", np.full((1000, 4), None, object), np.uint8, r"object does not cast to it safely"),
]


@pytest.mark.parametrize("block, dtype, pattern", [c[1:] for c in LYING_BLOCKS], ids=[c[0] for c in LYING_BLOCKS])
def test_dask_block_that_lies_is_refused_and_nothing_committed(tmp_path, block, dtype, pattern):
    path = tmp_path / "ds"
    with pytest.raises(memseq.SchemaError, match=pattern):
        memseq.save(path, {"x": _declared(block, dtype), "label": np.arange(4000)})
    _assert_nothing_written(path)


def test_dask_lying_block_under_the_threaded_scheduler(tmp_path):
    path = tmp_path / "ds"
    with dask.config.set(scheduler="threads"), pytest.raises(memseq.SchemaError, match=r"rows 2000:3000"):
        memseq.save(path, {"x": _declared(np.ones((999, 4), np.uint8), np.uint8)}, shard_rows=1500)
    _assert_nothing_written(path)


def test_dask_lying_block_cannot_overwrite_a_dataset(tmp_path):
    path = tmp_path / "ds"
    memseq.save(path, {"x": np.zeros((4000, 4), np.uint8)})
    with pytest.raises(memseq.SchemaError, match="does not cast"):
        memseq.save(path, {"x": _declared(np.full((1000, 4), 300, np.int64), np.uint8)}, overwrite=True)
    assert_same_array(memseq.open(path)["x"][:], np.zeros((4000, 4), np.uint8))
    assert _leftovers(tmp_path) == []


def test_dask_block_that_widens_safely_is_written_exactly(tmp_path):
    # The same rule as Writer.append: a dtype that casts safely is accepted, exactly.
    values = np.arange(4000, dtype=np.int16).reshape(1000, 4) - 2000
    memseq.save(tmp_path / "ds", {"x": _declared(values, np.int32)})
    x = memseq.open(tmp_path / "ds")["x"]
    assert x.dtype == np.int32
    assert_same_array(x[2000:3000], values.astype(np.int32))
    assert memseq.open(tmp_path / "ds").verify() is None


def test_dask_block_check_is_the_writers_rule(tmp_path):
    # One rule, one message: Writer.append refuses the same block with the same words.
    with memseq.Writer(tmp_path / "w", {"x": ("uint8", (4,))}) as w:
        with pytest.raises(memseq.SchemaError, match=r"field 'x' has dtype uint8; int64 does not cast to it safely"):
            w.append({"x": np.full((3, 4), 300, np.int64)})
        with pytest.raises(memseq.SchemaError, match=r"field 'x' takes rows of shape \(4,\), so arrays of shape \(n, 4\)\. Received shape: \(3, 5\)"):
            w.append({"x": np.zeros((3, 5), np.uint8)})
        w.append({"x": np.zeros((3, 4), np.uint8)})


class _LyingSource(cv.Source):
    """A conversion source whose rows are not what its fields declare."""

    def __init__(self, rows):
        self.fields = {"x": memseq.storage.format.field_spec("x", np.uint8, (4,))}
        self.num_rows = 100
        self.description = "lying source"
        self._rows = rows

    def read(self, start, stop):
        return {"x": self._rows(stop - start)}


@pytest.mark.parametrize("rows, pattern", [
    (lambda n: np.full((n, 4), 300, np.int64), r"lying source \(rows 0:100\): field 'x' has dtype uint8; int64 does not cast"),
    (lambda n: np.zeros((n, 5), np.uint8), r"lying source \(rows 0:100\): field 'x' takes rows of shape \(4,\).*\(100, 5\)"),
    (lambda n: np.zeros((n - 1, 4), np.uint8), r"Received shape: \(99, 4\)"),
], ids=["int64-as-uint8", "5-columns", "short"])
def test_convert_engine_uses_the_same_block_check(tmp_path, rows, pattern):
    with pytest.raises(memseq.SchemaError, match=pattern):
        cv.convert(tmp_path / "out", _LyingSource(rows))
    _assert_nothing_written(tmp_path / "out")


# --------------------------------------------------------------------------- finding 9: disk full, size limit, read-only


def _npy_source(tmp_path, mib: int = 4):
    x = np.arange(mib * 2**20 // 8, dtype=np.int64).reshape(-1, 64)
    np.save(tmp_path / "x.npy", x)
    return x


def _assert_write_error(e: BaseException, path, code: int) -> None:
    assert isinstance(e, memseq.WriteError), repr(e)
    assert e.errno == code
    assert e.filename == str(path)
    assert str(path) in str(e) and "Nothing was committed" in str(e)
    assert "[Errno" not in str(e)


@pytest.mark.slow
@pytest.mark.parametrize("jobs", [1, 2])
def test_convert_on_a_full_disk_raises_write_error(tmp_path, small_tmpfs, jobs):
    _npy_source(tmp_path)
    dst = small_tmpfs / "out"
    with pytest.raises(memseq.WriteError) as info:
        cv.convert(dst, cv.NpySource(tmp_path / "x.npy", "x"), jobs=jobs, shard_rows=2048)
    _assert_write_error(info.value, dst, errno.ENOSPC)
    assert "field 'x'" in str(info.value)
    assert os.listdir(small_tmpfs) == []


def test_dask_save_on_a_full_disk_raises_write_error(tmp_path, small_tmpfs):
    dst = small_tmpfs / "out"
    x = da.ones((8192, 64), dtype=np.int64, chunks=1024)
    with pytest.raises(memseq.WriteError) as info:
        memseq.save(dst, {"x": x, "label": np.arange(8192)})
    _assert_write_error(info.value, dst, errno.ENOSPC)
    assert os.listdir(small_tmpfs) == []


def test_cli_convert_on_a_full_disk_prints_one_clean_line(tmp_path, small_tmpfs, capsys):
    _npy_source(tmp_path)
    dst = small_tmpfs / "out"
    code = main(["convert", str(dst), f"--field=x={tmp_path / 'x.npy'}", "--no-progress"])
    err = capsys.readouterr().err
    assert code == 1
    assert err.startswith(f"memseq: error: {dst}: writing the data of field 'x' failed: No space left on device.")
    assert "[Errno" not in err and err.count("\n") == 1
    assert os.listdir(small_tmpfs) == []


@pytest.mark.parametrize("write", ["convert", "dask", "writer"])
def test_read_only_mount_is_write_error(tmp_path, small_tmpfs, write):
    _npy_source(tmp_path, 1)
    subprocess.run(["mount", "-o", "remount,ro", str(small_tmpfs)], check=True)
    dst = small_tmpfs / "out"
    with pytest.raises(memseq.WriteError) as info:
        if write == "convert":
            cv.convert(dst, cv.NpySource(tmp_path / "x.npy", "x"), jobs=2)
        elif write == "dask":
            memseq.save(dst, {"x": da.ones((10, 4), dtype=np.uint8, chunks=5)})
        else:
            memseq.save(dst, {"x": np.ones((10, 4), np.uint8)})
    _assert_write_error(info.value, dst, errno.EROFS)
    assert os.listdir(small_tmpfs) == []


def _failing(code: int):
    def fail(*args, **kwargs):
        raise OSError(code, os.strerror(code))
    return fail


@pytest.mark.parametrize("code", [errno.ENOSPC, errno.EFBIG, errno.EROFS, errno.EDQUOT])
def test_convert_write_failure_in_this_process_is_write_error(tmp_path, monkeypatch, code):
    _npy_source(tmp_path, 1)
    dst = tmp_path / "out" / "ds"
    monkeypatch.setattr(os, "pwrite", _failing(code))
    with pytest.raises(memseq.WriteError) as info:
        cv.convert(dst, cv.NpySource(tmp_path / "x.npy", "x"))
    _assert_write_error(info.value, dst, code)
    _assert_nothing_written(dst)


@pytest.mark.parametrize("code", [errno.ENOSPC, errno.EFBIG, errno.EROFS])
def test_dask_save_write_failure_is_write_error(tmp_path, monkeypatch, code):
    dst = tmp_path / "ds"
    monkeypatch.setattr(os, "pwrite", _failing(code))
    with pytest.raises(memseq.WriteError) as info:
        memseq.save(dst, {"x": da.ones((1000, 4), dtype=np.uint8, chunks=250)})
    _assert_write_error(info.value, dst, code)
    _assert_nothing_written(dst)


@pytest.mark.parametrize("write", ["convert", "dask"])
def test_read_only_filesystem_is_write_error(tmp_path, monkeypatch, write):
    # The temporary directory cannot even be created.
    _npy_source(tmp_path, 1)
    dst = tmp_path / "ds"
    monkeypatch.setattr(os, "mkdir", _failing(errno.EROFS))
    with pytest.raises(memseq.WriteError) as info:
        if write == "convert":
            cv.convert(dst, cv.NpySource(tmp_path / "x.npy", "x"))
        else:
            memseq.save(dst, {"x": da.ones((10, 4), dtype=np.uint8, chunks=5)})
    _assert_write_error(info.value, dst, errno.EROFS)
    _assert_nothing_written(dst)


_SUBPROCESS_WRITES = """
import errno, json, os, resource, sys
import numpy as np
import dask, dask.array as da
import memseq
from memseq.convert import NpySource, convert


class FullDiskSource(NpySource):
    # In each worker process, every pwrite after the first read fails as a full disk does.
    def read(self, start, stop):
        def fail(*args, **kwargs):
            raise OSError(errno.ENOSPC, os.strerror(errno.ENOSPC))
        os.pwrite = fail
        return super().read(start, stop)


def attempt(name, write):
    try:
        write()
        return "committed"
    except Exception as e:
        return [type(e).__name__, getattr(e, "errno", None), getattr(e, "filename", None), str(e)]


if __name__ == "__main__":
    np.save("x.npy", np.arange(2**17, dtype=np.int64).reshape(-1, 64))  # 1 MiB, 2048 rows
    out = {}
    out["enospc-jobs2"] = attempt("c", lambda: convert(os.path.abspath("enospc"), FullDiskSource("x.npy", "x"), jobs=2, shard_rows=512))
    resource.setrlimit(resource.RLIMIT_FSIZE, (256 * 1024, 256 * 1024))
    out["efbig-jobs1"] = attempt("c", lambda: convert(os.path.abspath("efbig1"), NpySource("x.npy", "x"), jobs=1))
    out["efbig-jobs2"] = attempt("c", lambda: convert(os.path.abspath("efbig2"), NpySource("x.npy", "x"), jobs=2, shard_rows=512))
    with dask.config.set(scheduler="threads"):
        out["efbig-dask"] = attempt("d", lambda: memseq.save(os.path.abspath("efbigdask"), {"x": da.ones((2048, 64), dtype=np.int64, chunks=256)}))
    out["left"] = sorted(e for e in os.listdir(".") if e not in ("x.npy",) and not e.startswith("_script"))
    print(json.dumps(out))
"""


@pytest.mark.slow
def test_convert_jobs2_and_dask_save_under_enospc_and_rlimit_fsize(run_python, tmp_path):
    done = run_python(_SUBPROCESS_WRITES, timeout=300)
    assert done.returncode == 0, done.stderr
    out = json.loads(done.stdout.strip().splitlines()[-1])
    for case, code, name in [("enospc-jobs2", errno.ENOSPC, "enospc"), ("efbig-jobs1", errno.EFBIG, "efbig1"),
                             ("efbig-jobs2", errno.EFBIG, "efbig2"), ("efbig-dask", errno.EFBIG, "efbigdask")]:
        kind, got_errno, filename, message = out[case]
        assert (kind, got_errno, filename) == ("WriteError", code, str(tmp_path / name)), (case, out[case])
        assert "Nothing was committed" in message and "[Errno" not in message
    assert out["left"] == [], out["left"]


# --------------------------------------------------------------------------- finding 12: long names

LONG = [230, 240, 250, 255]


@pytest.mark.parametrize("n", LONG)
def test_long_dataset_names_save_writer_convert_dask(tmp_path, n):
    x = np.arange(40, dtype=np.int32).reshape(10, 4)
    np.save(tmp_path / "x.npy", x)
    parent = tmp_path / "d"
    parent.mkdir()
    paths = {kind: parent / (kind[0] * n) for kind in ("save", "writer", "convert", "dask")}
    memseq.save(paths["save"], {"x": x})
    memseq.save(paths["save"], {"x": x + 1}, overwrite=True)  # the exchange needs the temp dir's name too
    with memseq.Writer(paths["writer"], {"x": ("int32", (4,))}) as w:
        w.append({"x": x})
    cv.convert(paths["convert"], cv.NpySource(tmp_path / "x.npy", "x"), jobs=1)
    memseq.save(paths["dask"], {"x": da.from_array(x, chunks=3)})
    for kind, path in paths.items():
        expected = x + 1 if kind == "save" else x
        assert_same_array(memseq.open(path)["x"][:], expected)
    assert _leftovers(parent) == []


def test_long_non_ascii_name(tmp_path):
    name = "é" * 127  # 254 bytes
    memseq.save(tmp_path / name, {"x": np.arange(3)})
    memseq.save(tmp_path / name, {"x": np.arange(4)}, overwrite=True)
    assert len(memseq.open(tmp_path / name)) == 4
    assert _leftovers(tmp_path) == []


def test_temp_stems_fit_and_stay_distinct():
    a, b = "a" * 250 + "1", "a" * 250 + "2"
    assert _commit.temp_stem("short") == "short"
    for name in (a, b, "é" * 127, "x" * 255):
        stem = _commit.temp_stem(name)
        longest = f".{stem}{_commit.TMP_MARKER}{2**31 - 1}-{'f' * 12}-old"
        assert len(os.fsencode(longest)) <= 255
        assert stem == _commit.temp_stem(name)  # every writer computes the same one
    assert _commit.temp_stem(a) != _commit.temp_stem(b)


@pytest.mark.parametrize("n", [100, 250])
def test_dead_writer_temp_dir_of_a_long_name_is_swept(run_python, tmp_path, n):
    path = tmp_path / ("k" * n)
    done = run_python(
        f"""
        import os, numpy as np, memseq
        w = memseq.Writer({str(path)!r}, {{"x": ("int64", ())}})
        w.append({{"x": np.arange(5)}})
        os._exit(0)  # killed: no abort, no commit
        """
    )
    assert done.returncode == 0, done.stderr
    dead = [e for e in _leftovers(tmp_path) if _commit.TMP_MARKER in e]
    assert len(dead) == 1
    memseq.save(path, {"x": np.arange(3)})
    assert [e for e in _leftovers(tmp_path) if _commit.TMP_MARKER in e] == []
    assert len(memseq.open(path)) == 3


# --------------------------------------------------------------------------- finding 3: invented values


@pytest.fixture
def vds(tmp_path):
    """A virtual dataset 'v' (rows 1..10 from sub/src.h5:/d) in sub/v.h5; the source's path."""
    h5py = pytest.importorskip("h5py")
    sub = tmp_path / "sub"
    sub.mkdir()
    with h5py.File(sub / "src.h5", "w") as f:
        f["d"] = np.arange(1, 11, dtype=np.int32)
    layout = h5py.VirtualLayout(shape=(10,), dtype=np.int32)
    layout[:] = h5py.VirtualSource("src.h5", "d", shape=(10,))
    with h5py.File(sub / "v.h5", "w") as f:
        f.create_virtual_dataset("v", layout, fillvalue=-7)
    return sub / "src.h5"


def test_hdf5_virtual_dataset_with_its_source_converts_exactly(tmp_path, vds, monkeypatch):
    monkeypatch.chdir(tmp_path)  # the source is found beside the virtual dataset's file, not in the cwd
    ds = cv.convert(tmp_path / "out", cv.HDF5Source(vds.parent / "v.h5"))
    assert_same_array(ds["v"][:], np.arange(1, 11, dtype=np.int32))


def test_hdf5_virtual_dataset_with_a_missing_source_file_is_refused(tmp_path, vds, monkeypatch, capsys):
    monkeypatch.chdir(tmp_path)
    os.rename(vds, tmp_path / "elsewhere.h5")
    pattern = r"v\.h5:/v: a virtual dataset whose source file 'src\.h5' \(for dataset 'd'\) is missing.*fill value \(-7\).*refuses"
    with pytest.raises(memseq.FormatError, match=pattern):
        cv.HDF5Source(vds.parent / "v.h5")
    code = main(["convert", str(vds.parent / "v.h5"), str(tmp_path / "out"), "--no-progress"])
    assert code == 1 and "is missing" in capsys.readouterr().err
    _assert_nothing_written(tmp_path / "out")


def test_hdf5_virtual_dataset_with_a_missing_source_dataset_is_refused(tmp_path, vds):
    h5py = pytest.importorskip("h5py")
    with h5py.File(vds, "a") as f:
        del f["d"]
        f["other"] = np.zeros(10, np.int32)
    with pytest.raises(memseq.FormatError, match=r"source dataset 'd' is missing from 'src\.h5'"):
        cv.HDF5Source(vds.parent / "v.h5")


def test_hdf5_virtual_source_removed_after_planning_is_refused_on_reading(tmp_path, vds):
    source = cv.HDF5Source(vds.parent / "v.h5")
    os.remove(vds)
    with pytest.raises(memseq.FormatError, match="is missing"):
        cv.convert(tmp_path / "out", source)
    _assert_nothing_written(tmp_path / "out")


def _png(path, pixels: np.ndarray, color_type: int, depth: int) -> None:
    """Writes a PNG by hand (Pillow cannot write 16-bit colour PNGs)."""
    height, width = pixels.shape[:2]
    sample = ">u2" if depth == 16 else "u1"
    raw = b"".join(b"\x00" + pixels[i].astype(sample).tobytes() for i in range(height))

    def chunk(kind: bytes, data: bytes) -> bytes:
        return struct.pack(">I", len(data)) + kind + data + struct.pack(">I", zlib.crc32(kind + data))

    header = struct.pack(">IIBBBBB", width, height, depth, color_type, 0, 0, 0)
    path.write_bytes(b"\x89PNG\r\n\x1a\n" + chunk(b"IHDR", header) + chunk(b"IDAT", zlib.compress(raw)) + chunk(b"IEND", b""))


@pytest.mark.parametrize("color, channels", [("gray", 1), ("rgb", 3)])
def test_16_bit_gray_png_keeps_its_exact_values(tmp_path, color, channels):
    pytest.importorskip("PIL")
    rng = np.random.default_rng(0)
    pixels = rng.integers(0, 65536, (3, 6, 5), dtype=np.uint16)  # almost every value > 255
    (tmp_path / "img" / "a").mkdir(parents=True)
    for i, p in enumerate(pixels):
        _png(tmp_path / "img" / "a" / f"{i}.png", p, 0, 16)
    ds = cv.convert(tmp_path / "out", cv.ImageFolderSource(tmp_path / "img", color=color))
    image = ds["image"][:]
    assert image.dtype == np.uint16 and image.shape == (3, 6, 5, channels)
    for c in range(channels):
        assert_same_array(image[..., c], pixels)


def test_cli_convert_of_16_bit_pngs_reports_uint16(tmp_path, capsys):
    pytest.importorskip("PIL")
    (tmp_path / "img" / "a").mkdir(parents=True)
    _png(tmp_path / "img" / "a" / "0.png", np.full((4, 4), 40000, np.uint16), 0, 16)
    assert main(["convert", str(tmp_path / "img"), str(tmp_path / "out"), "--no-progress", "--gray"]) == 0
    assert "uint16" in capsys.readouterr().out
    assert int(memseq.open(tmp_path / "out")["image"][0].max()) == 40000


@pytest.mark.parametrize("color_type, channels, rawmode", [(2, 3, "RGB;16B"), (6, 4, "RGBA;16B"), (4, 2, "LA;16B")])
def test_16_bit_colour_png_is_refused_not_reduced(tmp_path, color_type, channels, rawmode, capsys):
    pytest.importorskip("PIL")
    (tmp_path / "img" / "a").mkdir(parents=True)
    _png(tmp_path / "img" / "a" / "0.png", np.full((4, 4, channels), 40000, np.uint16), color_type, 16)
    pattern = rf"0\.png: the file stores 16 bits per channel \({rawmode}\) but Pillow reads it as 8-bit.*memseq refuses it"
    with pytest.raises(memseq.SchemaError, match=pattern):
        cv.ImageFolderSource(tmp_path / "img")
    assert main(["convert", str(tmp_path / "img"), str(tmp_path / "out"), "--no-progress"]) == 1
    assert "refuses" in capsys.readouterr().err
    _assert_nothing_written(tmp_path / "out")


def test_mixed_bit_depths_are_refused(tmp_path):
    pytest.importorskip("PIL")
    (tmp_path / "img" / "a").mkdir(parents=True)
    _png(tmp_path / "img" / "a" / "0.png", np.full((4, 4), 40000, np.uint16), 0, 16)
    _png(tmp_path / "img" / "a" / "1.png", np.full((4, 4), 200, np.uint8), 0, 8)
    with pytest.raises(memseq.SchemaError, match=r"1\.png: the image's pixels are uint8 \(mode L\) but the dataset's are uint16"):
        cv.convert(tmp_path / "out", cv.ImageFolderSource(tmp_path / "img"))
    _assert_nothing_written(tmp_path / "out")


@pytest.mark.parametrize("mode, dtype", [("I", np.int32), ("F", np.float32)])
def test_32_bit_images_keep_their_exact_values(tmp_path, mode, dtype):
    Image = pytest.importorskip("PIL.Image")
    values = (np.arange(20).reshape(4, 5) * 123457 - 10**6).astype(dtype)
    (tmp_path / "img" / "a").mkdir(parents=True)
    Image.fromarray(values, mode=mode).save(tmp_path / "img" / "a" / "0.tiff")
    ds = cv.convert(tmp_path / "out", cv.ImageFolderSource(tmp_path / "img", color="gray"))
    assert_same_array(ds["image"][0][..., 0], values)


# --------------------------------------------------------------------------- finding 13: object .npz


@pytest.mark.parametrize("compressed", [False, True])
def test_object_npz_is_not_supported_not_corrupt(tmp_path, compressed, capsys):
    save = np.savez_compressed if compressed else np.savez
    save(tmp_path / "o.npz", x=np.arange(3), obj=np.array([{"a": 1}, None, 3], dtype=object))
    with pytest.raises(memseq.SchemaError, match=r"o\.npz\['obj'\]: object arrays \(dtype object\) are not supported.*never unpickles") as info:
        cv.NpzSource(tmp_path / "o.npz")
    assert not isinstance(info.value, memseq.CorruptFileError)
    assert main(["convert", str(tmp_path / "o.npz"), str(tmp_path / "out"), "--no-progress"]) == 1
    err = capsys.readouterr().err
    assert "not supported" in err and "corrupt" not in err
    cv.convert(tmp_path / "out", cv.NpzSource(tmp_path / "o.npz", ["x"]))  # the numeric arrays still convert


# --------------------------------------------------------------------------- issue 23: the command names its flag


def test_cli_already_exists_names_the_flag(tmp_path, capsys):
    np.save(tmp_path / "x.npy", np.arange(4))
    args = ["convert", str(tmp_path / "out"), f"--field=x={tmp_path / 'x.npy'}", "--no-progress"]
    assert main(args) == 0
    capsys.readouterr()
    assert main(args) == 1
    err = capsys.readouterr().err
    assert "already exists; pass --overwrite to replace it" in err and "overwrite=True" not in err
    assert main(args + ["--overwrite"]) == 0


def test_classes_file_with_a_long_name_and_a_failing_disk(tmp_path, monkeypatch):
    target = tmp_path / ("c" * 250)
    cv.write_classes(target, ["cat", "dog"])
    assert json.loads(target.read_text()) == ["cat", "dog"]
    monkeypatch.setattr(os, "replace", _failing(errno.ENOSPC))
    with pytest.raises(memseq.WriteError, match="writing the classes file failed: No space left on device"):
        cv.write_classes(tmp_path / "other.json", ["cat"])
    assert sorted(os.listdir(tmp_path)) == [target.name]
