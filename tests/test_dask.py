"""Dask: memseq.save of Dask arrays (threads, a distributed LocalCluster), failures, reading, convert."""

from __future__ import annotations

import os
import pickle
import subprocess
import sys

import numpy as np
import pytest
from conftest import assert_same_array, subprocess_env

import memseq

da = pytest.importorskip("dask.array", reason="dask[array] (test extra) is not installed")
import dask  # noqa: E402


def _files(root):
    out = {}
    for directory, _, names in os.walk(root):
        for name in names:
            path = os.path.join(directory, name)
            with open(path, "rb") as f:
                out[os.path.relpath(path, root)] = f.read()
    return out


def assert_same_dataset(a, b):
    fa, fb = _files(a), _files(b)
    assert sorted(fa) == sorted(fb)
    for name in fa:
        assert fa[name] == fb[name], name


def _leftovers(tmp_path):
    return sorted(p for p in os.listdir(tmp_path) if "memseq-" in p)


def _images(n=1003):
    # Chunked along the inner axes too: blocks are merged into whole rows before writing.
    return da.random.default_rng(0).random((n, 6, 5), chunks=(97, 6, 2)).astype(np.float32)


@pytest.mark.parametrize("shard_rows", [None, 250, 64])
def test_save_is_byte_identical_to_saving_the_computed_arrays(tmp_path, shard_rows):
    images = _images()
    flags = images[:, 0, 0] > 0.5  # bool, a Dask field with other chunks
    labels = np.arange(len(images)) % 7  # an in-memory field beside them
    memseq.save(tmp_path / "dask", {"image": images, "flag": flags.rechunk(300), "label": labels}, shard_rows=shard_rows)
    computed = {"image": images.compute(), "flag": flags.compute(), "label": labels}
    memseq.save(tmp_path / "numpy", computed, shard_rows=shard_rows)
    assert_same_dataset(tmp_path / "dask", tmp_path / "numpy")
    ds = memseq.open(tmp_path / "dask")
    ds.verify()
    assert_same_array(ds["image"][:], computed["image"])
    assert _leftovers(tmp_path) == []


@pytest.mark.parametrize("scheduler", ["synchronous", "threads"])
def test_save_runs_on_the_scheduler_in_effect(tmp_path, scheduler):
    x = da.arange(5000, chunks=333, dtype=np.int32).reshape(1000, 5).rechunk((111, 5))
    with dask.config.set(scheduler=scheduler):
        memseq.save(tmp_path / "a", {"x": x})
    memseq.save(tmp_path / "b", {"x": x.compute()})
    assert_same_dataset(tmp_path / "a", tmp_path / "b")


def test_empty_and_overwrite(tmp_path):
    memseq.save(tmp_path / "a", {"x": da.zeros((0, 3), chunks=(10, 3), dtype=np.int8)})
    memseq.save(tmp_path / "b", {"x": np.zeros((0, 3), np.int8)})
    assert_same_dataset(tmp_path / "a", tmp_path / "b")
    with pytest.raises(memseq.DatasetExistsError):
        memseq.save(tmp_path / "a", {"x": da.ones((4, 3), chunks=2, dtype=np.int8)})
    memseq.save(tmp_path / "a", {"x": da.ones((4, 3), chunks=2, dtype=np.int8)}, overwrite=True)
    assert memseq.open(tmp_path / "a")["x"][:].sum() == 12


def _fail_on_block(block, block_info=None):
    if block_info[0]["chunk-location"][0] == 5:
        raise RuntimeError("task 5 failed")
    return block


@pytest.mark.parametrize("overwrite", [False, True])
def test_a_failing_task_commits_nothing(tmp_path, overwrite):
    target = tmp_path / "ds"
    if overwrite:
        memseq.save(target, {"x": np.zeros((3, 6, 5), np.float32)})
    bad = _images().map_blocks(_fail_on_block, dtype=np.float32)
    with pytest.raises(RuntimeError, match="task 5 failed"):
        memseq.save(target, {"x": bad}, overwrite=overwrite)
    if overwrite:
        assert len(memseq.open(target)) == 3  # the old dataset is intact
    else:
        assert not target.exists()
    assert _leftovers(tmp_path) == []


def test_unknown_chunk_sizes_are_refused(tmp_path):
    x = da.arange(100, chunks=10)
    x = x[x > 50]
    with pytest.raises(memseq.SchemaError, match="compute_chunk_sizes"):
        memseq.save(tmp_path / "ds", {"x": x})
    assert not (tmp_path / "ds").exists()
    with pytest.raises(memseq.SchemaError, match="rows|length|different"):
        memseq.save(tmp_path / "ds", {"x": da.zeros(10, chunks=5), "y": np.zeros(11)})


@pytest.mark.parametrize("lengths", [(3, 2), (3, 3)], ids=["unequal", "equal"])
def test_variable_length_lists_beside_dask_arrays_are_refused(tmp_path, lengths):
    # Equal lengths once became a fixed-size (2, 3) field here, but a variable-length
    # one through the numpy path; unequal ones raised numpy's ValueError.
    rows = [np.arange(n, dtype=np.uint16) for n in lengths]
    with pytest.raises(memseq.SchemaError, match=r"Field 't': a variable-length field .* cannot be saved beside Dask arrays"):
        memseq.save(tmp_path / "ds", {"x": da.zeros((2, 3), chunks=1), "t": rows})
    assert os.listdir(tmp_path) == []


def test_from_array_of_a_column_pickles_by_reference(tmp_path):
    data = np.random.default_rng(1).random((20000, 16)).astype(np.float32)  # 1.3 MB
    memseq.save(tmp_path / "ds", {"x": data}, shard_rows=7000)
    column = memseq.open(tmp_path / "ds")["x"]
    array = da.from_array(column, chunks=(3000, 16))
    graph = dict(array.__dask_graph__())
    assert len(pickle.dumps(graph)) < 16 * 1024
    assert_same_array(array.compute(), data)
    assert_same_array(array[::7, 3].compute(), data[::7, 3])
    assert_same_array(pickle.loads(pickle.dumps(array)).sum(axis=0).compute(), array.sum(axis=0).compute())


CLUSTER_SCRIPT = """
import sys
import numpy as np
import dask.array as da
from distributed import Client, LocalCluster
import memseq

def work(block):
    return np.sqrt(block) * 2

if __name__ == "__main__":
    root = sys.argv[1]
    x = da.random.default_rng(3).random((4000, 32, 8), chunks=(250, 32, 8)).map_blocks(work).astype(np.float32)
    with LocalCluster(n_workers=2, threads_per_worker=1, processes=True, host="127.0.0.1", dashboard_address=None) as cluster, Client(cluster) as client:
        memseq.save(root + "/cluster", {"x": x, "label": np.arange(4000)}, shard_rows=1500)
        ds = memseq.open(root + "/cluster")
        # Reading through the cluster: the workers reopen the column by path.
        total = client.compute(da.from_array(ds["x"], chunks=(700, 32, 8)).sum()).result()
        pids = client.run(lambda: __import__("os").getpid())
    memseq.save(root + "/numpy", {"x": x.compute(scheduler="synchronous"), "label": np.arange(4000)}, shard_rows=1500)
    print("workers", len(set(pids.values())), "sum", float(total), float(memseq.open(root + "/numpy")["x"][:].sum(dtype=np.float64)))
"""


@pytest.mark.slow
def test_local_cluster_writes_a_byte_identical_dataset(tmp_path, run_python):
    result = run_python(CLUSTER_SCRIPT, str(tmp_path), timeout=300)
    assert result.returncode == 0, result.stderr[-3000:]
    line = result.stdout.strip().splitlines()[-1].split()
    assert line[:2] == ["workers", "2"], result.stdout
    assert float(line[3]) == pytest.approx(float(line[4]), rel=1e-4)
    assert_same_dataset(tmp_path / "cluster", tmp_path / "numpy")
    memseq.open(tmp_path / "cluster").verify()
    assert _leftovers(tmp_path) == []


def _cli(*args, cwd):
    return subprocess.run(
        [sys.executable, "-m", "memseq", "convert", *args, "--no-progress"],
        cwd=cwd, env=subprocess_env(), capture_output=True, text=True, timeout=300,
    )


def test_convert_a_glob_of_npy_files(tmp_path):
    parts = tmp_path / "parts"
    parts.mkdir()
    xs, ys = [], []
    for i in range(11):  # natural order: x-2 before x-10
        xs.append(np.full((5 + i, 3), i, np.int16))
        ys.append(np.arange(5 + i))
        np.save(parts / f"x-{i}.npy", xs[-1])
        np.save(parts / f"y-{i}.npy", ys[-1])
    result = _cli("parts/x-*.npy", "out", "--field", "label=parts/y-*.npy", "--shard-rows", "40", "-j", "2", cwd=tmp_path)
    assert result.returncode == 0, result.stderr
    memseq.save(tmp_path / "expected", {"x": np.concatenate(xs), "label": np.concatenate(ys)}, shard_rows=40)
    assert_same_dataset(tmp_path / "out", tmp_path / "expected")
    result = _cli("parts/nothing-*.npy", "out2", cwd=tmp_path)
    assert result.returncode == 1 and "no file matches" in result.stderr
    np.save(parts / "x-99.npy", np.zeros((2, 4), np.int16))
    result = _cli("parts/x-*.npy", "out3", cwd=tmp_path)
    assert result.returncode == 1 and "same dtype and row shape" in result.stderr
    assert not (tmp_path / "out3").exists()


def test_convert_a_zarr_store(tmp_path):
    zarr = pytest.importorskip("zarr", reason="zarr (test extra) is not installed")
    group = zarr.open_group(str(tmp_path / "store.zarr"), mode="w")
    a = group.create_array("a", shape=(300, 4), chunks=(7, 2), dtype="float32")
    a[:] = np.arange(1200, dtype=np.float32).reshape(300, 4)
    b = group.create_array("sub/b", shape=(300,), chunks=(50,), dtype="uint8")
    b[:] = np.arange(300) % 256
    result = _cli("store.zarr", "out", cwd=tmp_path)
    assert result.returncode == 0, result.stderr
    memseq.save(tmp_path / "expected", {"a": a[:], "sub.b": b[:]})
    assert_same_dataset(tmp_path / "out", tmp_path / "expected")
    result = _cli("out2", "--field", "image=store.zarr:a", "--scheduler", "synchronous", cwd=tmp_path)
    assert result.returncode == 0, result.stderr
    assert_same_array(memseq.open(tmp_path / "out2")["image"][:], a[:])
