"""memseq.records / Dataset.records: a thread-safe, picklable random-access record view (no Grain needed)."""

from __future__ import annotations

import json
import pickle
from concurrent.futures import ThreadPoolExecutor

import numpy as np
import pytest
from conftest import assert_same_array

import memseq

N = 2000


@pytest.fixture
def arrays():
    rng = np.random.default_rng(0)
    return {
        "image": rng.integers(0, 255, (N, 8, 8, 3), dtype=np.uint8),
        "label": np.arange(N, dtype=np.int64) % 10,
        "weight": rng.random(N).astype(np.float32),
    }


@pytest.fixture
def ds(tmp_path, arrays):
    memseq.save(tmp_path / "ds", arrays, shard_rows=700)
    return memseq.open(tmp_path / "ds")


def test_item_i_is_row_i_of_every_field(ds, arrays):
    source = ds.records()
    assert len(source) == N
    assert source.fields == ["image", "label", "weight"]
    for i in (0, 699, 700, N - 1, -1):
        item = source[i]
        assert sorted(item) == ["image", "label", "weight"]
        for name in item:
            assert_same_array(item[name], arrays[name][i])


def test_fields_select_and_order(ds, arrays):
    source = ds.records(fields=["label", "image"])
    assert source.fields == ["label", "image"]
    assert list(source[5]) == ["label", "image"]
    assert memseq.records(ds, "label").fields == ["label"]


def test_getitems_returns_the_rows_asked_for_in_order(ds, arrays):
    source = ds.records()
    indices = [1999, 3, 3, 700, 0, 1400, 699]
    items = source._getitems(indices)
    assert len(items) == len(indices)
    for i, item in zip(indices, items):
        for name in arrays:
            assert_same_array(item[name], arrays[name][i])


def test_mapping_of_ndarrays_and_memmaps(tmp_path, arrays):
    path = tmp_path / "image.mmap"
    mm = np.memmap(path, dtype=np.uint8, mode="w+", shape=arrays["image"].shape)
    mm[:] = arrays["image"]
    mm.flush()
    source = memseq.records({"image": np.memmap(path, dtype=np.uint8, mode="r", shape=mm.shape), "label": arrays["label"]})
    assert_same_array(source[17]["image"], arrays["image"][17])
    assert_same_array(source._getitems([5, 2])[1]["label"], arrays["label"][2])
    # The memmap travels as a reference; only the in-memory labels are copied.
    blob = pickle.dumps(source)
    assert len(blob) < arrays["label"].nbytes + 16 * 1024
    copy = pickle.loads(blob)
    assert_same_array(copy[1999]["image"], arrays["image"][1999])
    # A memmap view with an offset into the file keeps its offset.
    view = np.memmap(path, dtype=np.uint8, mode="r", shape=mm.shape)[10:]
    assert_same_array(pickle.loads(pickle.dumps(memseq.records({"image": view})))[0]["image"], arrays["image"][10])


def test_pickles_by_reference(ds, arrays):
    source = ds.records()
    blob = pickle.dumps(source)
    assert len(blob) < 16 * 1024, len(blob)
    copy = pickle.loads(blob)
    assert_same_array(copy[1234]["image"], arrays["image"][1234])


def test_thread_safe_and_deterministic(tmp_path, arrays):
    memseq.save(tmp_path / "fresh", arrays)
    source = pickle.loads(pickle.dumps(memseq.open(tmp_path / "fresh").records()))  # opens on first read, in the threads
    indices = np.random.default_rng(1).integers(0, N, 400)
    with ThreadPoolExecutor(8) as pool:
        got = list(pool.map(lambda i: source[int(i)]["image"], indices))
        batches = list(pool.map(lambda k: source._getitems(indices[k : k + 40]), range(0, 400, 40)))
    for i, image in zip(indices, got):
        assert_same_array(image, arrays["image"][i])
    flat = [item for batch in batches for item in batch]
    for i, item in zip(indices, flat):
        assert_same_array(item["label"], arrays["label"][i])


def test_errors(ds):
    with pytest.raises(memseq.SchemaError, match="no field 'nope'"):
        ds.records(fields=["nope"])
    with pytest.raises(memseq.SchemaError, match="at least one field"):
        ds.records(fields=[])
    with pytest.raises(memseq.SchemaError, match="different|length|rows"):
        memseq.records({"a": np.zeros(3), "b": np.zeros(4)})
    with pytest.raises(memseq.SchemaError, match="mapping"):
        memseq.records([1, 2, 3])
    source = ds.records()
    with pytest.raises(memseq.BatchIndexError, match="out of range"):
        source[N]
    with pytest.raises(memseq.BatchIndexError, match="out of range"):
        source._getitems([0, N])
    with pytest.raises(memseq.BatchIndexError, match="integer"):
        source["3"]
    with pytest.raises(IndexError):  # BatchIndexError is an IndexError
        source[-N - 1]


def test_import_memseq_imports_no_grain_jax_dask_or_tensorflow(run_python):
    result = run_python(
        """
        import json, sys
        import numpy as np
        import memseq
        memseq.save("ds", {"x": np.arange(4)})
        memseq.open("ds").records()[1]
        heavy = sorted({m.split(".")[0] for m in sys.modules} & {"grain", "jax", "dask", "distributed", "zarr", "tensorflow", "keras"})
        print(json.dumps(heavy))
        """
    )
    assert result.returncode == 0, result.stderr
    assert json.loads(result.stdout.strip().splitlines()[-1]) == []
