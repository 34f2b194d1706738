"""Datasets at URLs (issue 24): opened remotely, shards fetched on demand into a verified local cache.

Every server is on 127.0.0.1: moto's S3 server and a local HTTP file server.
"""

from __future__ import annotations

import os
import pickle
import shutil
import tempfile
import warnings

import numpy as np
import pytest
from remote_servers import file_server, moto_s3

import memseq
from memseq.remote import transfer

ROWS, SHARD_ROWS = 1000, 250


def _arrays():
    rng = np.random.default_rng(0)
    return {"x": rng.standard_normal((ROWS, 16)).astype(np.float32), "y": np.arange(ROWS, dtype=np.int64)}


@pytest.fixture
def served(tmp_path):
    """A 4-shard dataset under tmp_path/www/ds, served over HTTP; yields (server, url, arrays)."""
    arrays = _arrays()
    memseq.save(tmp_path / "www" / "ds", arrays, shard_rows=SHARD_ROWS)
    with file_server(str(tmp_path / "www")) as server:
        yield server, f"{server.url}/ds", arrays


@pytest.fixture
def fast_retries(monkeypatch):
    monkeypatch.setattr(transfer, "BACKOFF_S", 0.01)


def _cached_files(cache_dir) -> list[str]:
    return sorted(
        os.path.relpath(os.path.join(d, f), cache_dir) for d, _, names in os.walk(cache_dir) for f in names
        if f.endswith(".npy")
    )


def test_open_over_http_fetches_only_the_shards_read(served, tmp_path):
    server, url, arrays = served
    ds = memseq.open(url, cache_dir=tmp_path / "cache")
    assert len(ds) == ROWS and ds.num_shards == 4 and list(ds) == ["x", "y"]
    assert server.gets(".npy") == {}  # opening reads the manifest only
    np.testing.assert_array_equal(ds["x"][[3, 7, 1]], arrays["x"][[3, 7, 1]])
    # A shard's files are fetched together (a Dataset maps a shard as a whole).
    assert sorted(server.gets(".npy")) == ["/ds/shard-00000/x.npy", "/ds/shard-00000/y.npy"]
    np.testing.assert_array_equal(ds["y"][SHARD_ROWS * 2 + 5], arrays["y"][SHARD_ROWS * 2 + 5])
    assert len(server.gets(".npy")) == 4  # shards 0 and 2
    np.testing.assert_array_equal(ds["x"][:], arrays["x"])
    np.testing.assert_array_equal(ds.take(np.arange(ROWS)[::-1])["y"], arrays["y"][::-1])
    ds.verify()
    assert all(n == 1 for n in server.gets(".npy").values()) and len(server.gets(".npy")) == 8


def test_open_over_s3(tmp_path):
    pytest.importorskip("s3fs")
    import s3fs

    arrays = _arrays()
    memseq.save(tmp_path / "ds", arrays, shard_rows=SHARD_ROWS)
    with moto_s3() as options:
        fs = s3fs.S3FileSystem(**options)
        fs.mkdir("bucket")
        fs.put(str(tmp_path / "ds"), "bucket/train", recursive=True)
        ds = memseq.open("s3://bucket/train", cache_dir=tmp_path / "cache", storage_options=options)
        np.testing.assert_array_equal(ds["x"][SHARD_ROWS + 1 : SHARD_ROWS + 9], arrays["x"][SHARD_ROWS + 1 : SHARD_ROWS + 9])
        assert ds._state.cache.downloads == 2  # shard 1's two files
        np.testing.assert_array_equal(ds["y"][:], arrays["y"])
        ds.verify()
        assert ds._state.cache.downloads == 8
        # Reopened with the same cache: nothing is downloaded again.
        again = memseq.open("s3://bucket/train", cache_dir=tmp_path / "cache", storage_options=options)
        np.testing.assert_array_equal(again["x"][:], arrays["x"])
        assert again._state.cache.downloads == 0


def test_a_pickled_remote_dataset_reads_the_cache_copies(served, tmp_path):
    server, url, arrays = served
    ds = memseq.open(url, cache_dir=tmp_path / "cache")
    ds["y"][:]
    blob = pickle.dumps(ds)
    assert len(blob) < 2000  # the URL and the cache's arguments, never data
    before = sum(server.gets().values())
    copy = pickle.loads(blob)
    np.testing.assert_array_equal(copy["x"][:], arrays["x"])
    assert sum(server.gets().values()) == before  # manifest and files from the cache


def test_a_pickled_copy_refuses_a_dataset_rewritten_at_the_url(served, tmp_path):
    server, url, arrays = served
    ds = memseq.open(url, cache_dir=tmp_path / "cache1")
    blob = pickle.dumps(ds)
    memseq.save(os.path.join(server.root, "ds"), {"x": arrays["x"][:10], "y": arrays["y"][:10]}, overwrite=True)
    copy = pickle.loads(blob)
    copy._state.cache = type(copy._state.cache)(url, tmp_path / "cache2")  # no cached manifest copy
    with pytest.raises(memseq.DatasetReplacedError, match="changed since"):
        copy["y"][0]


def test_a_corrupted_object_is_refused_and_never_cached(served, tmp_path):
    server, url, arrays = served
    path = os.path.join(server.root, "ds", "shard-00001", "x.npy")
    with open(path, "r+b") as f:
        f.seek(-4, os.SEEK_END)
        f.write(b"\xff\xff\xff\xff")
    ds = memseq.open(url, cache_dir=tmp_path / "cache")
    np.testing.assert_array_equal(ds["x"][:SHARD_ROWS], arrays["x"][:SHARD_ROWS])  # shard 0 is intact
    with pytest.raises(memseq.CorruptFileError, match=r"shard-00001/x\.npy.*does not match the manifest's checksum"):
        ds["x"][SHARD_ROWS]
    assert "shard-00001" not in " ".join(_cached_files(tmp_path / "cache"))
    assert not [f for _, _, names in os.walk(tmp_path / "cache") for f in names if ".part-" in f]


def test_server_errors_are_retried_then_a_named_error_names_the_url(served, tmp_path, fast_retries):
    server, url, _ = served
    server.fail.add("shard-00000/x.npy")
    ds = memseq.open(url, cache_dir=tmp_path / "cache")
    with pytest.raises(memseq.RemoteError, match=r"shard-00000/x\.npy: .*failed 5 times") as info:
        ds["x"][0]
    assert isinstance(info.value, OSError) and info.value.filename.endswith("shard-00000/x.npy")
    assert server.gets("shard-00000/x.npy") == {"/ds/shard-00000/x.npy": transfer.ATTEMPTS}
    server.fail.clear()  # the server recovers: the same Dataset reads on
    assert ds["x"][0].shape == (16,)


def test_a_missing_dataset_is_dataset_not_found(served, tmp_path):
    server, _, _ = served
    with pytest.raises(memseq.DatasetNotFoundError, match="memseq.json: manifest does not exist"):
        memseq.open(f"{server.url}/nothing-here", cache_dir=tmp_path / "cache")


def test_url_only_arguments_are_refused_for_a_local_path(tmp_path):
    memseq.save(tmp_path / "ds", {"y": np.arange(3)})
    with pytest.raises(memseq.SchemaError, match="cache_dir apply to URLs only"):
        memseq.open(tmp_path / "ds", cache_dir=tmp_path / "cache")
    with pytest.raises(memseq.SchemaError, match="cache_limit must be"):
        memseq.open("memory://x", cache_limit="lots")


def test_memory_and_file_urls(tmp_path):
    arrays = _arrays()
    memseq.save(tmp_path / "ds", arrays, shard_rows=SHARD_ROWS)
    ds = memseq.open((tmp_path / "ds").as_uri(), cache_dir=tmp_path / "cache")
    np.testing.assert_array_equal(ds["x"][::7], arrays["x"][::7])
    import fsspec

    fs = fsspec.filesystem("memory")
    fs.put(str(tmp_path / "ds"), "/h7-test-ds", recursive=True)
    try:
        mem = memseq.open("memory://h7-test-ds", cache_dir=tmp_path / "cache")
        np.testing.assert_array_equal(mem["y"][:], arrays["y"])
    finally:
        fs.rm("/h7-test-ds", recursive=True)


def test_a_full_cache_disk_is_a_write_error_and_leaves_nothing_partial(tmp_path, small_tmpfs):
    rng = np.random.default_rng(1)
    memseq.save(tmp_path / "www" / "big", {"x": rng.integers(0, 255, (3 * 2**20,), dtype=np.uint8)})
    with file_server(str(tmp_path / "www")) as server:
        ds = memseq.open(f"{server.url}/big", cache_dir=small_tmpfs)
        with pytest.raises(memseq.WriteError, match="no space left"):
            ds["x"][0]
    leftovers = [f for _, _, names in os.walk(small_tmpfs) for f in names if f.endswith(".npy") or ".part-" in f]
    assert leftovers == []


@pytest.mark.slow
def test_two_processes_share_the_cache_and_download_each_file_once(served, tmp_path, run_python):
    server, url, arrays = served
    code = f"""
        import sys, numpy as np, memseq
        ds = memseq.open({url!r}, cache_dir={str(tmp_path / "cache")!r})
        total = float(ds["x"][:].sum()) + float(ds["y"][::-1].sum())
        print(total)
    """
    import subprocess
    import sys
    import textwrap

    from conftest import subprocess_env

    script = tmp_path / "reader.py"
    script.write_text(textwrap.dedent(code))
    procs = [subprocess.Popen([sys.executable, str(script)], env=subprocess_env(), stdout=subprocess.PIPE, text=True)
             for _ in range(2)]
    outs = [p.communicate(timeout=120)[0] for p in procs]
    assert [p.returncode for p in procs] == [0, 0]
    expected = float(arrays["x"].sum()) + float(arrays["y"].sum())
    assert [pytest.approx(float(o)) for o in outs] == [expected, expected]
    gets = server.gets(".npy")
    assert len(gets) == 8 and set(gets.values()) == {1}, gets
    shutil.rmtree(tmp_path / "cache")


@pytest.mark.slow
def test_fit_on_a_remote_dataset(served, tmp_path):
    keras = pytest.importorskip("keras")
    server, url, arrays = served
    ds = memseq.open(url, cache_dir=tmp_path / "cache")
    seq = memseq.MemmapSequence(ds, x="x", y="y", batch_size=100, seed=0)
    model = keras.Sequential([keras.Input((16,)), keras.layers.Dense(1)])
    model.compile("sgd", "mse")
    history = model.fit(seq, epochs=2, verbose=0)
    assert len(history.history["loss"]) == 2 and np.isfinite(history.history["loss"]).all()
    assert len(server.gets(".npy")) == 8 and set(server.gets(".npy").values()) == {1}
    # A URL string works as MemmapSequence's data too (default cache, here redirected).
    os.environ["MEMSEQ_CACHE_DIR"] = str(tmp_path / "cache")
    try:
        seq2 = memseq.MemmapSequence(url, x="x", y="y", batch_size=100, shuffle=False)
        np.testing.assert_array_equal(seq2[1][1], arrays["y"][100:200])
    finally:
        del os.environ["MEMSEQ_CACHE_DIR"]


# --------------------------------------------------------------------------- prefetch and eviction (step 2)

SHARDS = 8


@pytest.fixture
def served8(tmp_path):
    """An 8-shard dataset (125 rows each) served over HTTP; yields (server, url, local path)."""
    arrays = _arrays()
    memseq.save(tmp_path / "www" / "ds", arrays, shard_rows=ROWS // SHARDS)
    with file_server(str(tmp_path / "www")) as server:
        yield server, f"{server.url}/ds", str(tmp_path / "www" / "ds")


def _shard_of(path: str) -> int:
    return int(path.split("shard-")[1][:5])


def _wait_for(predicate, seconds=20.0):
    import time

    deadline = time.monotonic() + seconds
    while not predicate():
        assert time.monotonic() < deadline, "timed out"
        time.sleep(0.02)


def _shard_order(seq, epoch: int) -> list[int]:
    """Shards in the order the batches of ``epoch`` first need them."""
    order = []
    for b in range(len(seq)):
        for s in np.unique(seq.batch_rows(b, epoch) // (ROWS // SHARDS)).tolist():
            if s not in order:
                order.append(s)
    return order


@pytest.mark.slow
def test_shards_are_prefetched_in_the_order_the_epoch_needs_them(served8, tmp_path):
    pytest.importorskip("keras")
    server, url, _ = served8
    one_shard = os.path.getsize(os.path.join(served8[2], "shard-00000", "x.npy")) + os.path.getsize(
        os.path.join(served8[2], "shard-00000", "y.npy"))
    ds = memseq.open(url, cache_dir=tmp_path / "cache", cache_limit=6 * one_shard)
    shuffle = memseq.BlockShuffle(block_rows=ROWS // SHARDS, window_blocks=1)
    seq = memseq.MemmapSequence(ds, x="x", y="y", batch_size=25, shuffle=shuffle, seed=3)
    order = _shard_order(seq, 0)
    assert order != sorted(order)  # a shuffled shard order, so the test tells orders apart
    seq.get_batch(0)
    # Batch 0's shard and the three next in the epoch's order (ahead: half the 6-shard limit).
    _wait_for(lambda: len(server.gets(".npy")) >= 2 * 4)
    import time

    time.sleep(0.3)  # nothing further is asked for
    fetched = {_shard_of(p) for p in server.gets(".npy")}
    assert fetched == set(order[:4]), (fetched, order)


@pytest.mark.slow
def test_eviction_keeps_the_cache_under_its_limit_and_each_shard_is_fetched_once_per_epoch(served8, tmp_path):
    pytest.importorskip("keras")
    server, url, local = served8
    one_shard = os.path.getsize(os.path.join(local, "shard-00000", "x.npy")) + os.path.getsize(
        os.path.join(local, "shard-00000", "y.npy"))
    limit = 3 * one_shard
    ds = memseq.open(url, cache_dir=tmp_path / "cache", cache_limit=limit)
    shuffle = memseq.BlockShuffle(block_rows=ROWS // SHARDS, window_blocks=1)
    seq = memseq.MemmapSequence(ds, x="x", y="y", batch_size=25, shuffle=shuffle, seed=1)
    reference = memseq.MemmapSequence(local, x="x", y="y", batch_size=25, shuffle=shuffle, seed=1)
    cache = ds._state.cache
    for epoch in (0, 1):
        for b in range(len(seq)):
            x, y = seq.get_batch(b, epoch)
            rx, ry = reference.get_batch(b, epoch)
            np.testing.assert_array_equal(x, rx)
            np.testing.assert_array_equal(y, ry)
            assert cache.cached_bytes() <= limit
        gets = server.gets(".npy")
        # At most once per epoch (shards still cached when the next epoch needs them first are not).
        assert len(gets) == 2 * SHARDS and max(gets.values()) <= epoch + 1, gets
        assert sum(gets.values()) > 2 * SHARDS * epoch  # the cache cannot hold an epoch: it was refetched
    assert cache.evictions >= 2 * SHARDS


def test_make_room_evicts_other_versions_then_the_latest_needed(tmp_path):
    from memseq.remote.cache import ShardCache

    cache = ShardCache("memory://nothing", tmp_path / "cache", cache_limit=300)
    current, old = cache.version_dir(1), cache.version_dir(2)
    for folder, name in ((current, "a.npy"), (current, "b.npy"), (current, "c.npy"), (old, "z.npy")):
        os.makedirs(folder, exist_ok=True)
        with open(os.path.join(folder, name), "wb") as f:
            f.write(b"\0" * 100)
    rank = {"a.npy": 1.0, "b.npy": float("inf"), "c.npy": 5.0}.__getitem__
    evicted = cache.make_room(0, rank, current=current)
    assert evicted == [] and not os.path.exists(os.path.join(old, "z.npy"))  # the other version went first
    evicted = cache.make_room(200, rank, current=current)
    assert evicted == ["b.npy", "c.npy"]  # not needed again this epoch, then needed latest
    with pytest.raises(memseq.SchemaError, match="cache_limit is 300 bytes"):
        cache.make_room(301, rank, current=current)


# --------------------------------------------------------------------------- shard-aligned shuffle, several hosts (step 3)


def test_shard_shuffle_serves_each_row_once_and_mixes_only_inside_windows_of_shards():
    from memseq.order import BatchPlan

    part_rows = (5, 0, 7, 3, 9, 4)
    starts = np.cumsum((0, *part_rows))
    indices = np.array([0, 2, 4, 5, 6, 11, 12, 13, 15, 16, 20, 27], np.int64)
    for subset in (None, indices):
        plan = BatchPlan(sum(part_rows), 4, shuffle=memseq.ShardShuffle(window_shards=2, part_rows=part_rows),
                         seed=7, indices=subset)
        for epoch in (0, 1):
            perm = plan.permutation(epoch)
            rows = perm if subset is None else subset[perm]
            assert sorted(rows.tolist()) == (list(range(sum(part_rows))) if subset is None else subset.tolist())
            shard = np.searchsorted(starts, rows, side="right") - 1
            # Each shard's rows are contiguous in a window of two shards: a shard never comes back later.
            runs = [s for k, s in enumerate(shard.tolist()) if s not in shard[:k].tolist()]
            seen_windows = [set(shard[i : i + 1].tolist()) for i in range(len(shard))]
            assert len(runs) == len(set(shard.tolist())) and seen_windows
            for s in set(shard.tolist()):
                where = np.flatnonzero(shard == s)
                window = set(shard[where.min() : where.max() + 1].tolist())
                assert len(window) <= 2, (s, window)
        assert not np.array_equal(plan.permutation(0), plan.permutation(1))
    with pytest.raises(memseq.SchemaError, match="part_rows add up to 28 rows but the data have 29"):
        BatchPlan(29, 4, shuffle=memseq.ShardShuffle(part_rows=part_rows))


def test_hosts_split_each_epoch_into_disjoint_slices_that_cover_every_row_once():
    from memseq.order import BatchPlan

    for shuffle in (True, False, memseq.ShardShuffle(window_shards=3, part_rows=(10,) * 10 + (3,))):
        plans = [BatchPlan(103, 8, shuffle=shuffle, seed=2, hosts=(3, h)) for h in range(3)]
        assert [p.num_rows for p in plans] == [34, 34, 35]
        rows = np.concatenate([p.batch_rows(b, 1) for p in plans for b in range(p.num_batches)])
        assert sorted(rows.tolist()) == list(range(103))
    with pytest.raises(memseq.SchemaError, match="host_index"):
        BatchPlan(10, 2, hosts=(2, 2))


def test_hosts_never_share_a_window_only_the_shard_cut_between_them():
    from memseq.order import BatchPlan

    part_rows = (10,) * 10 + (3,)
    starts = np.cumsum((0, *part_rows))
    for shuffle in (memseq.ShardShuffle(window_shards=4, part_rows=part_rows), memseq.BlockShuffle(10, 4)):
        for num_hosts in (2, 3, 4):
            for epoch in range(4):
                plans = [BatchPlan(103, 8, shuffle=shuffle, seed=epoch, hosts=(num_hosts, h)) for h in range(num_hosts)]
                shards = [set(np.searchsorted(starts, p.permutation(epoch), side="right") - 1) for p in plans]
                # Without aligned windows a host reads the whole window that straddles a cut:
                # up to window_shards - 1 extra shards per cut.
                assert sum(map(len, shards)) <= len(part_rows) + num_hosts - 1, (shuffle, num_hosts, epoch, shards)
                rows = np.concatenate([p.permutation(epoch) for p in plans])
                assert sorted(rows.tolist()) == list(range(103))
    one = BatchPlan(103, 8, shuffle=memseq.ShardShuffle(4, part_rows), seed=3)
    assert np.array_equal(one.permutation(2), memseq.ShardShuffle(4, part_rows).bind(103, 8, None).permutation(103, 3, 2))


@pytest.mark.slow
def test_two_hosts_download_disjoint_halves_and_serve_every_row_once_per_epoch(served8, tmp_path):
    pytest.importorskip("keras")
    server, url, local = served8
    one_shard = sum(os.path.getsize(os.path.join(local, "shard-00000", f)) for f in ("x.npy", "y.npy"))
    seen, downloaded = [], []
    for epoch in (0, 1):
        per_host = []
        for host in (0, 1):
            # Separate caches: two machines. A cache of a quarter of the dataset each.
            ds = memseq.open(url, cache_dir=tmp_path / f"cache{host}", cache_limit=2 * one_shard)
            seq = memseq.MemmapSequence(ds, x="x", y="y", batch_size=25, seed=5, hosts=(2, host),
                                        shuffle=memseq.ShardShuffle(window_shards=1))
            before = ds._state.cache.bytes_downloaded
            ys = np.concatenate([seq.get_batch(b, epoch)[1] for b in range(len(seq))])
            per_host.append(ds._state.cache.bytes_downloaded - before)
            seen.append(ys)
            # Host's shards: exactly the shards of its rows, fetched once each.
            assert ds._state.cache.bytes_downloaded <= 1.05 * len(np.unique(ys // 125)) * one_shard
            assert len(np.unique(ys // 125)) == SHARDS // 2
        downloaded.append(per_host)
        both = np.concatenate(seen[-2:])
        assert sorted(both.tolist()) == list(range(ROWS))  # every row once per epoch, over both hosts
        assert set(np.unique(seen[-2] // 125)).isdisjoint(np.unique(seen[-1] // 125))
    # Each host downloads its share (half) per epoch, not the dataset.
    assert all(b <= 1.05 * SHARDS // 2 * one_shard for per_host in downloaded for b in per_host), downloaded


def test_a_shard_window_larger_than_the_cache_says_what_it_costs(served8, tmp_path):
    pytest.importorskip("keras")
    from memseq.read.remote_prefetch import RemoteCacheWarning

    server, url, local = served8
    one_shard = sum(os.path.getsize(os.path.join(local, "shard-00000", f)) for f in ("x.npy", "y.npy"))
    ds = memseq.open(url, cache_dir=tmp_path / "cache", cache_limit=3 * one_shard)
    with pytest.warns(RemoteCacheWarning, match=r"lower window_shards, or raise cache_limit") as caught:
        memseq.MemmapSequence(ds, x="x", y="y", batch_size=25, shuffle=memseq.ShardShuffle(window_shards=4))
    assert caught[0].filename == __file__  # at the user's line
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        memseq.MemmapSequence(ds, x="x", y="y", batch_size=25, shuffle=memseq.ShardShuffle(window_shards=1))


def test_a_full_shuffle_with_a_cache_smaller_than_the_dataset_says_what_it_costs(served8, tmp_path):
    pytest.importorskip("keras")
    from memseq.batching.hosts import RemoteCacheWarning

    server, url, local = served8
    ds = memseq.open(url, cache_dir=tmp_path / "cache", cache_limit=20_000)
    with pytest.warns(RemoteCacheWarning, match=r"full shuffle .* downloaded again for almost every batch"):
        memseq.MemmapSequence(ds, x="x", y="y", batch_size=25, shuffle=True)
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        # Windows of one shard: two shards in use at a window boundary, within the cache.
        memseq.MemmapSequence(ds, x="x", y="y", batch_size=25, shuffle=memseq.ShardShuffle(window_shards=1))
        memseq.MemmapSequence(memseq.open(url, cache_dir=tmp_path / "c2"), x="x", y="y", batch_size=25)


# --------------------------------------------------------------------------- writing to URLs, info and verify (step 4)


@pytest.fixture
def s3(tmp_path):
    pytest.importorskip("s3fs")
    import s3fs

    with moto_s3() as options:
        s3fs.S3FileSystem(**options).mkdir("bucket")
        yield options


def test_save_to_s3_uploads_the_manifest_last_and_reads_back(s3, tmp_path, monkeypatch):
    from memseq.write import upload as upload_module

    uploaded = []
    real = upload_module.transfer.upload
    monkeypatch.setattr(upload_module.transfer, "upload", lambda src, url, *a: (uploaded.append(url), real(src, url, *a)))
    arrays = _arrays()
    memseq.save("s3://bucket/saved", arrays, shard_rows=300, storage_options=s3)
    assert uploaded[-1] == "s3://bucket/saved/memseq.json" and len(uploaded) == 1 + 2 * 4
    ds = memseq.open("s3://bucket/saved", cache_dir=tmp_path / "cache", storage_options=s3)
    np.testing.assert_array_equal(ds["x"][:], arrays["x"])
    ds.verify()
    with pytest.raises(memseq.DatasetExistsError, match="s3://bucket/saved: a memseq dataset exists there"):
        memseq.save("s3://bucket/saved", arrays, storage_options=s3)


def test_overwriting_a_url_dataset_never_mixes_versions(s3, tmp_path):
    import s3fs

    arrays = _arrays()
    memseq.save("s3://bucket/ds", arrays, shard_rows=500, storage_options=s3)
    old = memseq.open("s3://bucket/ds", cache_dir=tmp_path / "cache", storage_options=s3)
    np.testing.assert_array_equal(old["y"][:3], arrays["y"][:3])  # shard 0 of the old version cached
    new = {"x": arrays["x"][::-1].copy(), "y": arrays["y"][::-1].copy()}
    memseq.save("s3://bucket/ds", new, shard_rows=500, overwrite=True, storage_options=s3)
    np.testing.assert_array_equal(old["y"][:3], arrays["y"][:3])  # the old version's cached shard
    with pytest.raises(memseq.DatasetNotFoundError):  # deleted with the old version: never the new bytes
        old["y"][600]
    fresh = memseq.open("s3://bucket/ds", cache_dir=tmp_path / "cache", storage_options=s3)
    np.testing.assert_array_equal(fresh["y"][:], new["y"])
    names = s3fs.S3FileSystem(**s3).find("bucket/ds")
    assert len(names) == 1 + 4 and all("/d-" in n for n in names if not n.endswith("memseq.json")), names


def test_writer_to_a_url_uploads_on_close_and_nothing_if_the_block_raises(s3, tmp_path):
    import s3fs

    fields = {"y": ("int64", ()), "tokens": ("uint16", (None,))}
    with pytest.raises(RuntimeError, match="boom"):
        with memseq.Writer("s3://bucket/w", fields=fields, storage_options=s3) as w:
            w.append({"y": np.arange(3), "tokens": [np.arange(2), np.arange(5), np.arange(1)]})
            raise RuntimeError("boom")
    assert not s3fs.S3FileSystem(**s3).exists("bucket/w/memseq.json")
    with memseq.Writer("s3://bucket/w", fields=fields, storage_options=s3, shard_rows=2) as w:
        w.append({"y": np.arange(3), "tokens": [np.arange(2), np.arange(5), np.arange(1)]})
    ds = memseq.open("s3://bucket/w", cache_dir=tmp_path / "cache", storage_options=s3)
    assert ds["y"][:].tolist() == [0, 1, 2] and ds["tokens"][1].tolist() == [0, 1, 2, 3, 4]
    ds.verify()


def test_a_server_that_refuses_uploads_is_a_remote_error_and_nothing_is_left(served, tmp_path, fast_retries):
    server, url, arrays = served
    with pytest.raises(memseq.RemoteError, match=r"/new/x\.npy: reading or writing data file 'x\.npy' failed 5 times"):
        memseq.save(f"{server.url}/new", arrays)
    assert not os.path.exists(os.path.join(server.root, "new"))
    assert not [d for d in os.listdir(tempfile.gettempdir()) if d.startswith("memseq-upload-")]


def test_convert_in_python_writes_to_a_url_with_the_manifest_last(tmp_path, monkeypatch):
    from memseq import convert as cv

    monkeypatch.setenv("TMPDIR", str(tmp_path / "tmp"))
    os.makedirs(tmp_path / "tmp")
    tempfile.tempdir = None  # TMPDIR is read again
    try:
        x = np.arange(600, dtype=np.float32).reshape(200, 3)
        np.save(tmp_path / "x.npy", x)
        ds = cv.convert("memory://py-converted", cv.NpySource(str(tmp_path / "x.npy"), "x"), shard_rows=64)
        np.testing.assert_array_equal(ds["x"][:], x)
        assert os.listdir(tmp_path / "tmp") == []  # the staging folder is gone
        with pytest.raises(memseq.DatasetExistsError, match="memory://py-converted"):
            cv.convert("memory://py-converted", cv.NpySource(str(tmp_path / "x.npy"), "x"))
        ds = cv.convert("memory://py-converted", cv.NpySource(str(tmp_path / "x.npy"), "x"), overwrite=True)
        assert [s.num_rows for s in ds.manifest.shards] == [200]
    finally:
        tempfile.tempdir = None


def test_info_verify_and_convert_accept_urls(served, tmp_path, capsys, monkeypatch):
    from memseq.cli import main

    server, url, arrays = served
    monkeypatch.setenv("MEMSEQ_CACHE_DIR", str(tmp_path / "cache"))
    assert main(["info", "--json", url]) == 0
    import json

    info = json.loads(capsys.readouterr().out)
    assert info["path"] == url and info["rows"] == ROWS and info["shards"] == [SHARD_ROWS] * 4
    assert info["size_bytes"] == sum(os.path.getsize(os.path.join(d, f))
                                     for d, _, names in os.walk(os.path.join(server.root, "ds")) for f in names)
    assert main(["verify", url]) == 0
    assert "OK http://" in capsys.readouterr().out
    np.save(tmp_path / "x.npy", arrays["x"])
    assert main(["convert", str(tmp_path / "x.npy"), "memory://h7-converted"]) == 0
    assert "uploaded to memory://h7-converted" in capsys.readouterr().out
    np.testing.assert_array_equal(memseq.open("memory://h7-converted", cache_dir=tmp_path / "c2")["x"][:], arrays["x"])
    # A corrupted object: verify fails naming it.
    with open(os.path.join(server.root, "ds", "shard-00003", "y.npy"), "r+b") as f:
        f.seek(-1, os.SEEK_END)
        f.write(b"\x7f")
    monkeypatch.setenv("MEMSEQ_CACHE_DIR", str(tmp_path / "cache3"))
    assert main(["verify", url]) != 0
    assert "shard-00003/y.npy" in capsys.readouterr().err


@pytest.mark.slow
def test_fit_batch_shuffle_with_a_small_cache_warns_and_fit_without_it_fetches_each_shard_about_once(served8, tmp_path):
    keras = pytest.importorskip("keras")
    from memseq.read.remote_prefetch import RemoteCacheWarning

    server, url, local = served8
    one_shard = sum(os.path.getsize(os.path.join(local, "shard-00000", f)) for f in ("x.npy", "y.npy"))
    model = keras.Sequential([keras.Input((16,)), keras.layers.Dense(1)])
    model.compile("sgd", "mse")
    ds = memseq.open(url, cache_dir=tmp_path / "cache", cache_limit=4 * one_shard)
    seq = memseq.MemmapSequence(ds, x="x", y="y", batch_size=50, seed=0, shuffle=memseq.ShardShuffle(window_shards=1))
    with pytest.warns(RemoteCacheWarning, match=r"pass fit\(\.\.\., shuffle=False\)"):
        model.fit(seq, epochs=1, verbose=0)  # fit's default shuffle=True: batches from anywhere in the epoch
    server.requests.clear()
    ds = memseq.open(url, cache_dir=tmp_path / "cache2", cache_limit=4 * one_shard)
    seq = memseq.MemmapSequence(ds, x="x", y="y", batch_size=50, seed=0, shuffle=memseq.ShardShuffle(window_shards=1),
                                workers=2)
    import warnings

    with warnings.catch_warnings():
        warnings.simplefilter("error", RemoteCacheWarning)
        model.fit(seq, epochs=2, verbose=0, shuffle=False)
    gets = server.gets(".npy")
    # Two epochs, two worker threads at neighbouring batches: about once per shard per epoch.
    assert len(gets) == 2 * SHARDS and sum(gets.values()) <= 1.25 * 2 * 2 * SHARDS, gets


def test_hosts_argument_forms():
    from memseq.batching.hosts import resolve_hosts

    class InputContext:  # what tf.distribute passes to a dataset function
        num_input_pipelines, input_pipeline_id = 4, 3

    assert resolve_hosts(None) == (1, 0)
    assert resolve_hosts((2, 1)) == (2, 1)
    assert resolve_hosts(InputContext()) == (4, 3)
    pytest.importorskip("jax")
    assert resolve_hosts("jax") == (1, 0)  # one JAX process here
    with pytest.raises(memseq.SchemaError, match=r"hosts must be None, \(num_hosts, host_index\)"):
        resolve_hosts(3)
    with pytest.raises(memseq.SchemaError, match="host_index"):
        resolve_hosts((2, 5))


def test_variable_length_rows_fetch_only_their_shards(tmp_path):
    rows = [np.arange(k % 7, dtype=np.uint16) for k in range(400)]
    memseq.save(tmp_path / "www" / "tok", {"tokens": rows, "y": np.arange(400)}, shard_rows=100)
    with file_server(str(tmp_path / "www")) as server:
        ds = memseq.open(f"{server.url}/tok", cache_dir=tmp_path / "cache")
        got = ds["tokens"][[250, 260]]
        assert [r.tolist() for r in got] == [rows[250].tolist(), rows[260].tolist()]
        assert {_shard_of(p) for p in server.gets(".npy")} == {2}
        seq = memseq.MemmapSequence(ds, x="tokens", y="y", batch_size=50, shuffle=False) if _has_keras() else None
        if seq is not None:
            x, y = seq[5]  # rows 250..299: shard 2 only
            assert x.shape[0] == 50 and {_shard_of(p) for p in server.gets(".npy")} == {2}


def _has_keras() -> bool:
    import importlib.util

    return importlib.util.find_spec("keras") is not None
