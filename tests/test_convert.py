"""memseq.convert and `memseq convert`: every source kind, parallel jobs, bad sources."""

from __future__ import annotations

import json
import os
import zipfile
import zlib

import numpy as np
import pytest

import memseq
from memseq import convert as cv
from memseq.cli import main
from memseq.cli.options import parse_shape
from memseq.write import parallel as _engine


def _leftovers(directory) -> list[str]:
    """Temporary directories (or files) a write or conversion could leave behind."""
    return [name for name in os.listdir(directory) if ".memseq-tmp-" in name]


def _tree_bytes(root) -> dict[str, bytes]:
    out = {}
    for dirpath, _, files in os.walk(root):
        for name in files:
            path = os.path.join(dirpath, name)
            with open(path, "rb") as f:
                out[os.path.relpath(path, root)] = f.read()
    return out


def _assert_dataset(path, expected: dict[str, np.ndarray]) -> memseq.Dataset:
    ds = memseq.open(path)
    assert sorted(ds) == sorted(expected)
    for name, array in expected.items():
        column = ds[name][:]
        assert column.dtype == array.dtype and column.shape == array.shape, name
        np.testing.assert_array_equal(column, array)
    ds.verify()
    return ds


@pytest.fixture
def arrays():
    rng = np.random.default_rng(0)
    return {
        "image": rng.integers(0, 256, (300, 8, 8, 3), dtype=np.uint8),
        "label": rng.integers(0, 10, 300).astype(np.int64),
        "weight": rng.random(300).astype(np.float32),
    }


# --------------------------------------------------------------------------- CRC-32 combination


def test_crc32_combine_matches_zlib_of_the_concatenation():
    rng = np.random.default_rng(1)
    for _ in range(100):
        a = rng.bytes(int(rng.integers(0, 2000)))
        b = rng.bytes(int(rng.integers(0, 2000)))
        assert cv.crc32_combine(zlib.crc32(a), zlib.crc32(b), len(b)) == zlib.crc32(a + b)
    assert cv.crc32_combine(123, 0, 0) == 123


def test_memseq_crc32_is_zlibs_crc32():
    # memseq checksums with ISA-L when installed: the manifest's values must not change.
    from memseq.storage.checksum import crc32

    rng = np.random.default_rng(5)
    for size in (0, 1, 7, 4096, 1_000_003):
        data = rng.integers(0, 256, size, dtype=np.uint8).tobytes()
        assert crc32(data) == zlib.crc32(data)
        assert crc32(data, 0xDEADBEEF) == zlib.crc32(data, 0xDEADBEEF)


# --------------------------------------------------------------------------- each source kind


def test_npy_fields_give_the_same_bytes_as_memseq_save(tmp_path, arrays):
    for name, array in arrays.items():
        np.save(tmp_path / f"{name}.npy", array)
    memseq.save(tmp_path / "saved", arrays)
    code = main(
        ["convert", str(tmp_path / "out"), "--no-progress"]
        + [f"--field={name}={tmp_path / name}.npy" for name in arrays]
    )
    assert code == 0
    _assert_dataset(tmp_path / "out", arrays)
    assert _tree_bytes(tmp_path / "out") == _tree_bytes(tmp_path / "saved")


def test_npy_source_path_names_the_field_after_the_file(tmp_path, arrays):
    np.save(tmp_path / "pixels.npy", arrays["image"])
    ds = cv.convert(tmp_path / "out", cv.source_for_path(tmp_path / "pixels.npy"))
    assert list(ds) == ["pixels"]


@pytest.mark.parametrize("compressed", [False, True], ids=["savez", "savez_compressed"])
def test_npz_all_arrays_and_selected_arrays(tmp_path, arrays, compressed, capsys):
    save = np.savez_compressed if compressed else np.savez
    save(tmp_path / "data.npz", **arrays)
    assert main(["convert", str(tmp_path / "data.npz"), str(tmp_path / "all"), "--no-progress"]) == 0
    _assert_dataset(tmp_path / "all", arrays)
    assert "300 rows" in capsys.readouterr().out
    # --field NAME=FILE.npz[:ARRAY]: select and rename; units smaller than the data
    # make the compressed reader continue streams and seek within members.
    code = main(
        ["convert", str(tmp_path / "some"), "--no-progress",
         f"--field=x={tmp_path / 'data.npz'}:image", f"--field=label={tmp_path / 'data.npz'}"]
    )
    assert code == 0
    _assert_dataset(tmp_path / "some", {"x": arrays["image"], "label": arrays["label"]})
    source = cv.NpzSource(tmp_path / "data.npz", ["image"])
    np.testing.assert_array_equal(source.read(250, 260)["image"], arrays["image"][250:260])
    np.testing.assert_array_equal(source.read(10, 20)["image"], arrays["image"][10:20])  # backwards
    source.close()


def test_raw_files_with_per_field_dtype_and_shape(tmp_path, arrays):
    raw = {}
    for name, array in arrays.items():
        m = np.memmap(tmp_path / f"{name}.mmap", dtype=array.dtype, mode="w+", shape=array.shape)
        m[:] = array
        m.flush()
        del m
        raw[name] = tmp_path / f"{name}.mmap"
    code = main(
        ["convert", str(tmp_path / "out"), "--no-progress",
         f"--raw=image={raw['image']}:uint8:-1,8,8,3",
         f"--raw=label={raw['label']}:int64:-1",
         f"--raw=weight={raw['weight']}:float32:300"]
    )
    assert code == 0
    _assert_dataset(tmp_path / "out", arrays)
    # --field with --dtype/--shape for raw files that share dtype and shape.
    code = main(
        ["convert", str(tmp_path / "out2"), "--no-progress", f"--field=image={raw['image']}",
         "--dtype", "uint8", "--shape=-1,8,8,3"]
    )
    assert code == 0
    _assert_dataset(tmp_path / "out2", {"image": arrays["image"]})


def test_raw_file_with_offset(tmp_path):
    data = np.arange(40, dtype="<f4").reshape(10, 4)
    (tmp_path / "x.bin").write_bytes(b"HEADER16BYTES..." + data.tobytes())
    assert main(["convert", str(tmp_path / "out"), "--no-progress", f"--raw=x={tmp_path / 'x.bin'}:<f4:-1,4:16"]) == 0
    _assert_dataset(tmp_path / "out", {"x": data})


def test_hdf5_all_datasets_and_selected_paths(tmp_path, arrays):
    h5py = pytest.importorskip("h5py")
    with h5py.File(tmp_path / "data.h5", "w") as f:
        f.create_dataset("image", data=arrays["image"], chunks=(16, 8, 8, 3), compression="gzip")
        group = f.create_group("meta")
        group.create_dataset("label", data=arrays["label"])
    assert main(["convert", str(tmp_path / "data.h5"), str(tmp_path / "all"), "--no-progress"]) == 0
    _assert_dataset(tmp_path / "all", {"image": arrays["image"], "meta.label": arrays["label"]})
    code = main(
        ["convert", str(tmp_path / "some"), "--no-progress", "--jobs", "2",
         f"--field=x={tmp_path / 'data.h5'}:/image", f"--field=y={tmp_path / 'data.h5'}:/meta/label"]
    )
    assert code == 0
    _assert_dataset(tmp_path / "some", {"x": arrays["image"], "y": arrays["label"]})


def _image_folder(root, sizes=None, mode="RGB"):
    """root/<class>/<n>.png; returns the expected images (in row order) and labels."""
    from PIL import Image

    rng = np.random.default_rng(3)
    images, labels = [], []
    for label, cls in enumerate(["bird", "cat", "dog"]):  # already alphabetical
        os.makedirs(root / cls)
        for i in range(4 + label):
            h, w = (sizes or {}).get((cls, i), (12, 10))
            pixels = rng.integers(0, 256, (h, w, 3), dtype=np.uint8)
            Image.fromarray(pixels).save(root / cls / f"{i:03d}.png")
            images.append(pixels)
            labels.append(label)
    (root / "cat" / "notes.txt").write_text("not an image")  # ignored
    (root / ".hidden").mkdir()  # ignored
    return images, np.array(labels, np.int64)


def test_image_folder_labels_in_alphabetical_class_order(tmp_path, capsys):
    pytest.importorskip("PIL")
    images, labels = _image_folder(tmp_path / "photos")
    classes_file = tmp_path / "classes.json"
    code = main(
        ["convert", str(tmp_path / "photos"), str(tmp_path / "out"), "--no-progress",
         "--classes-file", str(classes_file)]
    )
    assert code == 0
    out = capsys.readouterr().out
    assert "classes (label: name): 0: bird, 1: cat, 2: dog" in out
    assert json.loads(classes_file.read_text()) == ["bird", "cat", "dog"]
    ds = _assert_dataset(tmp_path / "out", {"image": np.stack(images), "label": labels})
    assert ds.fields["image"].shape == (12, 10, 3)
    assert sorted(os.listdir(tmp_path / "out")) == ["image.npy", "label.npy", "memseq.json"]


def test_image_folder_sizes_checked_or_resized_and_gray(tmp_path, capsys):
    pytest.importorskip("PIL")
    _image_folder(tmp_path / "photos", sizes={("cat", 2): (20, 16)})
    assert main(["convert", str(tmp_path / "photos"), str(tmp_path / "out"), "--no-progress"]) == 1
    err = capsys.readouterr().err
    assert "cat/002.png" in err and "--image-size" in err and "\n" not in err.rstrip("\n")
    assert not os.path.exists(tmp_path / "out") and not _leftovers(tmp_path)

    code = main(["convert", str(tmp_path / "photos"), str(tmp_path / "out"), "--no-progress", "--image-size", "6x5", "--gray"])
    assert code == 0
    ds = memseq.open(tmp_path / "out")
    assert ds.fields["image"].shape == (6, 5, 1) and ds.fields["image"].dtype == np.uint8


def test_classes_file_inside_the_dataset_is_refused_before_converting(tmp_path, capsys):
    pytest.importorskip("PIL")
    _image_folder(tmp_path / "photos")
    code = main(["convert", str(tmp_path / "photos"), str(tmp_path / "out"), "--classes-file", str(tmp_path / "out" / "c.json")])
    assert code == 1
    assert "inside the dataset directory" in capsys.readouterr().err
    assert not os.path.exists(tmp_path / "out")


def test_combined_sources_and_shards(tmp_path, arrays):
    np.save(tmp_path / "image.npy", arrays["image"])
    np.savez(tmp_path / "rest.npz", label=arrays["label"], weight=arrays["weight"])
    ds = cv.convert(
        tmp_path / "out",
        [cv.NpySource(tmp_path / "image.npy", "image"), cv.NpzSource(tmp_path / "rest.npz")],
        shard_rows=128,
    )
    assert ds.num_shards == 3 and [s.num_rows for s in ds.manifest.shards] == [128, 128, 44]
    _assert_dataset(tmp_path / "out", arrays)
    memseq.save(tmp_path / "saved", arrays, shard_rows=128)
    assert _tree_bytes(tmp_path / "out") == _tree_bytes(tmp_path / "saved")


# --------------------------------------------------------------------------- parallel jobs


def test_jobs_2_gives_the_same_dataset_as_jobs_1(tmp_path, arrays, monkeypatch):
    pytest.importorskip("PIL")
    # Small work units, so that both workers write pieces of every file.
    monkeypatch.setattr(_engine, "UNIT_BYTES", 4096)
    np.savez(tmp_path / "data.npz", **arrays)
    for jobs in (1, 2):
        code = main(["convert", str(tmp_path / "data.npz"), str(tmp_path / f"j{jobs}"), "--no-progress", "--jobs", str(jobs), "--shard-rows", "100"])
        assert code == 0
    assert _tree_bytes(tmp_path / "j1") == _tree_bytes(tmp_path / "j2")
    _assert_dataset(tmp_path / "j2", arrays)

    _image_folder(tmp_path / "photos")
    monkeypatch.setattr(cv.ImageFolderSource, "max_unit_rows", 2)
    for jobs in (1, 2):
        assert main(["convert", str(tmp_path / "photos"), str(tmp_path / f"img{jobs}"), "--no-progress", "-j", str(jobs)]) == 0
    assert _tree_bytes(tmp_path / "img1") == _tree_bytes(tmp_path / "img2")


# --------------------------------------------------------------------------- bad sources: clear error, nothing at DST


def _truncate(path, keep: int) -> None:
    os.truncate(path, keep)


def _check_failed(capsys, tmp_path, code: int, *needles: str) -> str:
    err = capsys.readouterr().err
    assert code == 1
    assert err.startswith("memseq: error: ") and err.count("\n") == 1, err
    assert "Traceback" not in err
    for needle in needles:
        assert needle in err, (needle, err)
    assert not os.path.exists(tmp_path / "out")
    assert not _leftovers(tmp_path)
    return err


def test_truncated_npy(tmp_path, arrays, capsys):
    np.save(tmp_path / "image.npy", arrays["image"])
    _truncate(tmp_path / "image.npy", 5000)
    code = main(["convert", str(tmp_path / "out"), f"--field=image={tmp_path / 'image.npy'}"])
    _check_failed(capsys, tmp_path, code, "image.npy", "truncated")


def test_npy_that_is_not_npy(tmp_path, capsys):
    (tmp_path / "image.npy").write_bytes(b"hello, not numpy")
    code = main(["convert", str(tmp_path / "out"), f"--field=image={tmp_path / 'image.npy'}"])
    _check_failed(capsys, tmp_path, code, "image.npy", "not a readable .npy")


def test_object_dtype_npy_is_refused(tmp_path, capsys):
    np.save(tmp_path / "obj.npy", np.array([{"a": 1}, None], dtype=object), allow_pickle=True)
    code = main(["convert", str(tmp_path / "out"), f"--field=obj={tmp_path / 'obj.npy'}"])
    _check_failed(capsys, tmp_path, code, "obj.npy")


def test_truncated_npz(tmp_path, arrays, capsys):
    np.savez(tmp_path / "data.npz", **arrays)
    _truncate(tmp_path / "data.npz", os.path.getsize(tmp_path / "data.npz") // 2)
    code = main(["convert", str(tmp_path / "data.npz"), str(tmp_path / "out")])
    _check_failed(capsys, tmp_path, code, "data.npz", "truncated")


def test_corrupt_compressed_npz_member_fails_while_converting(tmp_path, arrays, capsys):
    np.savez_compressed(tmp_path / "data.npz", image=arrays["image"])
    with zipfile.ZipFile(tmp_path / "data.npz") as zf:
        info = zf.getinfo("image.npy")
    data = bytearray((tmp_path / "data.npz").read_bytes())
    middle = info.header_offset + 30 + len(info.filename) + len(info.extra) + info.compress_size // 2
    for i in range(middle, middle + 64):
        data[i] ^= 0x5A
    (tmp_path / "data.npz").write_bytes(bytes(data))
    code = main(["convert", str(tmp_path / "data.npz"), str(tmp_path / "out"), "--no-progress"])
    _check_failed(capsys, tmp_path, code, "data.npz", "corrupt")


def test_raw_size_mismatch(tmp_path, capsys):
    (tmp_path / "x.mmap").write_bytes(b"\0" * 1001)
    code = main(["convert", str(tmp_path / "out"), f"--raw=x={tmp_path / 'x.mmap'}:float32:-1,10"])
    _check_failed(capsys, tmp_path, code, "x.mmap", "1001")


def test_raw_without_dtype_and_shape_says_how(tmp_path, capsys):
    (tmp_path / "x.mmap").write_bytes(b"\0" * 1000)
    code = main(["convert", str(tmp_path / "out"), f"--field=x={tmp_path / 'x.mmap'}"])
    _check_failed(capsys, tmp_path, code, "--raw", "--dtype")


def test_truncated_hdf5(tmp_path, arrays, capsys):
    h5py = pytest.importorskip("h5py")
    with h5py.File(tmp_path / "data.h5", "w") as f:
        f.create_dataset("image", data=arrays["image"])
    _truncate(tmp_path / "data.h5", os.path.getsize(tmp_path / "data.h5") // 2)
    code = main(["convert", str(tmp_path / "data.h5"), str(tmp_path / "out")])
    _check_failed(capsys, tmp_path, code, "data.h5")


def test_missing_hdf5_dataset(tmp_path, arrays, capsys):
    h5py = pytest.importorskip("h5py")
    with h5py.File(tmp_path / "data.h5", "w") as f:
        f.create_dataset("image", data=arrays["image"])
    code = main(["convert", str(tmp_path / "out"), f"--field=x={tmp_path / 'data.h5'}:/nope"])
    _check_failed(capsys, tmp_path, code, "data.h5:/nope", "no such dataset")


@pytest.mark.parametrize("jobs", [1, 2])
def test_corrupt_image_in_the_middle(tmp_path, capsys, jobs, monkeypatch):
    pytest.importorskip("PIL")
    monkeypatch.setattr(cv.ImageFolderSource, "max_unit_rows", 2)  # several units, so both workers run
    _image_folder(tmp_path / "photos")
    _truncate(tmp_path / "photos" / "cat" / "002.png", 60)
    code = main(["convert", str(tmp_path / "photos"), str(tmp_path / "out"), "--no-progress", "--jobs", str(jobs)])
    _check_failed(capsys, tmp_path, code, "002.png", "not a readable image")


def test_unequal_row_counts(tmp_path, arrays, capsys):
    np.save(tmp_path / "a.npy", arrays["image"])
    np.save(tmp_path / "b.npy", arrays["label"][:-1])
    code = main(["convert", str(tmp_path / "out"), f"--field=a={tmp_path / 'a.npy'}", f"--field=b={tmp_path / 'b.npy'}"])
    _check_failed(capsys, tmp_path, code, "same number of rows", "299", "300")


def test_missing_source_file(tmp_path, capsys):
    code = main(["convert", str(tmp_path / "out"), f"--field=a={tmp_path / 'nope.npy'}"])
    _check_failed(capsys, tmp_path, code, "nope.npy", "no such file")


def test_existing_destination_is_kept_unless_overwrite(tmp_path, arrays, capsys):
    np.save(tmp_path / "label.npy", arrays["label"])
    memseq.save(tmp_path / "out", {"old": np.zeros(3)})
    assert main(["convert", str(tmp_path / "out"), f"--field=label={tmp_path / 'label.npy'}"]) == 1
    assert "already exists" in capsys.readouterr().err
    assert list(memseq.open(tmp_path / "out")) == ["old"]
    assert main(["convert", str(tmp_path / "out"), f"--field=label={tmp_path / 'label.npy'}", "--overwrite", "--no-progress"]) == 0
    _assert_dataset(tmp_path / "out", {"label": arrays["label"]})
    assert not _leftovers(tmp_path)


def test_source_classes_pickle_without_open_files(tmp_path, arrays):
    import pickle

    np.savez(tmp_path / "data.npz", **arrays)
    source = cv.NpzSource(tmp_path / "data.npz")
    source.read(0, 5)
    clone = pickle.loads(pickle.dumps(source))
    assert len(pickle.dumps(source)) < 4096
    np.testing.assert_array_equal(clone.read(3, 9)["weight"], arrays["weight"][3:9])
    source.close()
    clone.close()


@pytest.mark.parametrize(
    "text, message",
    [
        ("image", "NAME=PATH"),
        ("=x.npy", "NAME=PATH"),
        ("bad/name=x.npy", "Field names"),
    ],
)
def test_malformed_field_options(tmp_path, capsys, text, message):
    code = main(["convert", str(tmp_path / "out"), f"--field={text}"])
    _check_failed(capsys, tmp_path, code, message)


def test_parse_shape():
    assert parse_shape("-1,64,64,3") == (-1, 64, 64, 3)
    assert parse_shape("(-1, 8)") == (-1, 8)
    assert parse_shape("10x3") == (10, 3)
    with pytest.raises(memseq.SchemaError, match="comma-separated"):
        parse_shape("a,b")


def test_reshard_an_existing_dataset(tmp_path, arrays):
    memseq.save(tmp_path / "one", arrays)
    assert main(["convert", str(tmp_path / "one"), str(tmp_path / "sharded"), "--shard-rows", "64", "--no-progress", "-j", "2"]) == 0
    ds = _assert_dataset(tmp_path / "sharded", arrays)
    assert ds.num_shards == 5
    memseq.save(tmp_path / "saved", arrays, shard_rows=64)
    assert _tree_bytes(tmp_path / "sharded") == _tree_bytes(tmp_path / "saved")


def test_destination_inside_the_source_is_refused(tmp_path, arrays, capsys):
    memseq.save(tmp_path / "src", arrays)
    code = main(["convert", str(tmp_path / "src"), str(tmp_path / "src" / "out"), "--no-progress"])
    err = capsys.readouterr().err
    assert code == 1 and "is inside the source" in err, err
    assert not any(name.startswith(("out", ".out")) for name in os.listdir(tmp_path / "src"))
    # Converting a dataset onto itself (re-sharding in place) stays possible.
    assert main(["convert", str(tmp_path / "src"), str(tmp_path / "src"), "--shard-rows", "64", "--overwrite", "--no-progress"]) == 0
    assert memseq.open(tmp_path / "src").num_shards == 5
