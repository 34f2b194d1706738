"""A dataset over a throttled local HTTP server: ``fit(seq)`` from an empty cache, a warm cache, and two hosts.

Usage:
    python benchmarks/bench_remote.py [--dir DIR] [--rows 100000] [--shard-rows 2048]
                                      [--mbps 200] [--latency-ms 20] [--repeats 1]
                                      [--peer-python PEER_VENV/bin/python]

Writes (once, reused) ``rows`` 64x64x3 uint8 images (12 KiB rows; 100,000 rows are
1.2 GB) and int64 labels in shards of ``shard-rows`` rows, and serves the folder from a
local HTTP server in its own process, throttled to ``mbps`` MB/s in all (one token
bucket shared by every connection) and ``latency-ms`` per request. Each case runs in a
fresh process:

- ``remote``: ``memseq.open(url, cache_dir=<empty>)``, ``MemmapSequence(...,
  shuffle=memseq.ShardShuffle(window_shards=4))``, ``fit(seq, shuffle=False)`` (the
  rows are reshuffled by the sequence; see ``case_fit``) for two epochs: epoch 1
  (empty cache) against the rate the bandwidth allows (``mbps`` / row bytes), epoch 2
  (cache warm) against the same ``fit`` over the dataset on local disk, epoch 2 there
  (page cache warm: both read from RAM). Beside it, epoch 1 with ``fit``'s default
  batch shuffle.
- ``hosts``: two hosts (``hosts=(2, h)``), each with its own cache of a quarter of
  the dataset, read two epochs batch by batch; bytes downloaded per host per epoch
  against its share (half the dataset).

- ``loader`` and ``mosaic`` (with ``--peer-python``, a Python with
  ``pip install torch==2.13.0 mosaicml-streaming --no-deps`` and its imports): the data
  path alone, two epochs from an empty cache: memseq's ``seq[i]`` in order, against
  Mosaic Streaming's ``StreamingDataset`` (the same rows as uncompressed MDS shards of
  the same size, written once, ``shuffle=True``) through a torch ``DataLoader`` with 2
  workers, reading the same server through its S3 interface (path-style GETs with byte
  ranges).
"""

from __future__ import annotations

import argparse
import http.server
import json
import os
import shutil
import statistics
import subprocess
import sys
import tempfile
import threading
import time

import numpy as np

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))

try:
    import _common  # noqa: E402
except ImportError:  # the Mosaic Streaming cases run in the peers' Python (--peer-python), without memseq
    _common = None
else:
    ROW_SHAPE, BATCH = _common.ROW_SHAPE, _common.BATCH
    ROW_BYTES = int(np.prod(ROW_SHAPE)) + 8


# --------------------------------------------------------------------------- the throttled server


class _Bucket:
    """A token bucket of ``rate`` bytes per second shared by every connection."""

    def __init__(self, rate: float):
        self.rate, self.lock, self.next_free = rate, threading.Lock(), time.monotonic()

    def take(self, n: int) -> None:
        with self.lock:
            now = time.monotonic()
            start = max(now, self.next_free)
            self.next_free = start + n / self.rate
        delay = self.next_free - time.monotonic()
        if delay > 0:
            time.sleep(delay)


def _serve(root: str, port_file: str, mbps: float, latency: float) -> None:
    bucket = _Bucket(mbps * 1e6)

    class Handler(http.server.SimpleHTTPRequestHandler):
        def log_message(self, *args):
            pass

        def send_head(self):
            time.sleep(latency)
            self.left = None
            path = self.translate_path(self.path)
            ranged = self.headers.get("Range", "").removeprefix("bytes=")
            if not ranged or not os.path.isfile(path):
                return super().send_head()
            # A byte range, as S3 serves one (boto3 downloads large objects in 8 MiB ranges).
            size = os.path.getsize(path)
            first, _, last = ranged.partition("-")
            start, end = int(first), min(size - 1, int(last) if last else size - 1)
            f = open(path, "rb")  # noqa: SIM115 (closed by the handler)
            f.seek(start)
            self.send_response(206)
            self.send_header("Content-Range", f"bytes {start}-{end}/{size}")
            self.send_header("Content-Length", str(end - start + 1))
            self.end_headers()
            self.left = end - start + 1
            return f

        def end_headers(self):
            path = self.translate_path(self.path)
            if os.path.isfile(path):  # S3 clients check that an object's ranges come from one version
                st = os.stat(path)
                self.send_header("ETag", f'"{st.st_size:x}-{st.st_mtime_ns:x}"')
            super().end_headers()

        def copyfile(self, source, outputfile):
            left = self.left if self.left is not None else float("inf")
            while left > 0 and (data := source.read(int(min(256 * 1024, left)))):
                left -= len(data)
                bucket.take(len(data))
                outputfile.write(data)

    server = http.server.ThreadingHTTPServer(("127.0.0.1", 0), lambda *a: Handler(*a, directory=root))
    with open(port_file + ".tmp", "w") as f:
        f.write(str(server.server_address[1]))
    os.replace(port_file + ".tmp", port_file)
    server.serve_forever()


def start_server(root: str, mbps: float, latency_ms: float) -> tuple[subprocess.Popen, str]:
    port_file = os.path.join(tempfile.mkdtemp(prefix="bench-remote-"), "port")
    proc = subprocess.Popen([sys.executable, __file__, "--serve", root, port_file, str(mbps), str(latency_ms / 1000)])
    deadline = time.monotonic() + 30
    while not os.path.exists(port_file):
        if time.monotonic() > deadline or proc.poll() is not None:
            proc.kill()
            raise SystemExit("the throttled server did not start")
        time.sleep(0.05)
    with open(port_file) as f:
        return proc, f"http://127.0.0.1:{int(f.read())}"


# --------------------------------------------------------------------------- the dataset


def build(path: str, rows: int, shard_rows: int) -> None:
    import memseq

    try:
        ds = memseq.open(path)
        if ds.num_rows == rows and ds.manifest.shards[0].num_rows == min(rows, shard_rows):
            print(f"reusing {path}", file=sys.stderr)
            return
    except memseq.MemseqError:
        if os.path.exists(path) and os.listdir(path):
            raise SystemExit(f"{path} exists and is not a benchmark dataset; pass another --dir.") from None
    print(f"writing {rows} rows ({rows * ROW_BYTES / 1e9:.2f} GB) in shards of {shard_rows} to {path} ...", file=sys.stderr)
    rng = np.random.default_rng(0)
    block = rng.integers(0, 256, (4096, *ROW_SHAPE), dtype=np.uint8)
    with memseq.Writer(path, {"image": ("uint8", ROW_SHAPE), "label": ("int64", ())}, overwrite=True,
                       shard_rows=shard_rows) as w:
        for start in range(0, rows, 4096):
            n = min(4096, rows - start)
            w.append({"image": block[:n], "label": np.arange(start, start + n) % 10})


# --------------------------------------------------------------------------- cases (each in a fresh process)


def case_fit(data: str, cache_dir: str, fit_shuffle: bool = False) -> dict:
    """Two epochs of fit(seq, shuffle=fit_shuffle) with the tiny model; seconds per epoch and bytes downloaded.

    ShardShuffle reshuffles the rows every epoch already; fit's own batch shuffle
    (``shuffle=True``, Keras' default) would serve the batches of all windows in a random
    order, so the first batches need shards from all over the dataset.
    """
    import memseq

    ds = memseq.open(data, cache_dir=cache_dir) if cache_dir else memseq.open(data)
    seq = memseq.MemmapSequence(ds, x="image", y="label", batch_size=BATCH, seed=0,
                                shuffle=memseq.ShardShuffle(window_shards=4), workers=2)
    clock, times = _common.epoch_clock()

    model = _common.tiny_model()
    # Tracing and compiling on in-RAM batches of the same shapes: a warm-up on seq would
    # start its downloads before the clock.
    model.fit(np.zeros((2 * BATCH, *ROW_SHAPE), np.uint8), np.zeros(2 * BATCH, np.int64), batch_size=BATCH, verbose=0)
    model.fit(seq, epochs=2, verbose=0, callbacks=[clock], shuffle=fit_shuffle)
    cache = getattr(ds.__dict__.get("_state"), "cache", None)
    return {"seconds": times, "rows": ds.num_rows, "downloaded": 0 if cache is None else cache.bytes_downloaded}


def case_hosts(url: str, cache_root: str, limit: int) -> dict:
    """Two hosts, each with a cache of ``limit`` bytes: bytes each downloads per epoch."""
    import memseq

    per_epoch = []
    seqs = []
    for h in range(2):
        ds = memseq.open(url, cache_dir=os.path.join(cache_root, f"host{h}"), cache_limit=limit)
        seqs.append(memseq.MemmapSequence(ds, x="image", y="label", batch_size=BATCH, seed=0, hosts=(2, h),
                                          shuffle=memseq.ShardShuffle(window_shards=4)))
    for epoch in range(2):
        row = []
        for seq in seqs:
            cache = seq.data.__dict__["_state"].cache
            before = cache.bytes_downloaded
            for b in range(len(seq)):
                seq.get_batch(b, epoch)
            row.append(cache.bytes_downloaded - before)
        per_epoch.append(row)
    return {"per_epoch": per_epoch}


def case_loader(url: str, cache_dir: str) -> dict:
    """Every batch of two epochs, read with ``seq[i]`` in order (no model): the data path alone."""
    import memseq

    ds = memseq.open(url, cache_dir=cache_dir)
    seq = memseq.MemmapSequence(ds, x="image", y="label", batch_size=BATCH, seed=0,
                                shuffle=memseq.ShardShuffle(window_shards=4))
    times = []
    for epoch in range(2):
        seq.on_epoch_begin() if epoch else None
        t = time.perf_counter()
        for b in range(len(seq)):
            seq[b]
        times.append(time.perf_counter() - t)
    return {"seconds": times, "rows": ds.num_rows}


# --------------------------------------------------------------------------- Mosaic Streaming (the peers' Python)


def build_mds(memseq_dir: str, out: str, shard_bytes: int) -> None:
    """The memseq dataset's rows (from its shards' .npy files) as an uncompressed MDS dataset, shards of ~shard_bytes."""
    import glob

    from streaming import MDSWriter

    if os.path.exists(os.path.join(out, "index.json")):
        print(f"reusing {out}", file=sys.stderr)
        return
    images = sorted(glob.glob(os.path.join(memseq_dir, "shard-*", "image.npy")))
    shape = np.load(images[0], mmap_mode="r").shape[1:]
    columns = {"image": f"ndarray:uint8:{','.join(map(str, shape))}", "label": "int64"}
    print(f"writing the same rows as MDS to {out} ...", file=sys.stderr)
    with MDSWriter(out=out, columns=columns, size_limit=shard_bytes) as w:
        for path in images:
            image = np.load(path, mmap_mode="r")
            label = np.load(os.path.join(os.path.dirname(path), "label.npy"), mmap_mode="r")
            for i in range(len(image)):
                w.write({"image": np.asarray(image[i]), "label": int(label[i])})


def case_mosaic(endpoint: str, cache_dir: str, batch: int, workers: int) -> dict:
    """Mosaic Streaming's StreamingDataset over the server's S3 interface, a torch DataLoader, two epochs."""
    os.environ.update(S3_ENDPOINT_URL=endpoint, AWS_ACCESS_KEY_ID="bench", AWS_SECRET_ACCESS_KEY="bench",
                      AWS_DEFAULT_REGION="us-east-1")
    from streaming import StreamingDataset
    from torch.utils.data import DataLoader

    ds = StreamingDataset(remote="s3://mds", local=cache_dir, shuffle=True, shuffle_seed=0, batch_size=batch)
    loader = DataLoader(ds, batch_size=batch, num_workers=workers)
    times, rows = [], 0
    for _ in range(2):
        t, rows = time.perf_counter(), 0
        for b in loader:
            rows += len(b["label"])
        times.append(time.perf_counter() - t)
    return {"seconds": times, "rows": rows}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--dir", default=os.path.join(tempfile.gettempdir(), "memseq-bench-remote"))
    parser.add_argument("--rows", type=int, default=100_000)
    parser.add_argument("--shard-rows", type=int, default=2048)
    parser.add_argument("--mbps", type=float, default=200.0)
    parser.add_argument("--latency-ms", type=float, default=20.0)
    parser.add_argument("--repeats", type=int, default=1)
    parser.add_argument("--peer-python", help="a Python with mosaicml-streaming and torch, for the Mosaic Streaming case")
    parser.add_argument("--case", nargs="+", help=argparse.SUPPRESS)
    parser.add_argument("--serve", nargs=4, help=argparse.SUPPRESS)
    args = parser.parse_args()
    if args.serve:
        root, port_file, mbps, latency = args.serve
        return _serve(root, port_file, float(mbps), float(latency))
    if args.case:
        kind, *rest = args.case
        if kind == "build-mds":
            return build_mds(rest[0], rest[1], int(rest[2]))
        if kind == "mosaic":
            return print(json.dumps(case_mosaic(rest[0], rest[1], int(rest[2]), int(rest[3]))))
        if kind == "fit":
            return _common.print_result(case_fit(rest[0], rest[1] if len(rest) > 1 else "", "fit-shuffle" in rest))
        if kind == "loader":
            return _common.print_result(case_loader(rest[0], rest[1]))
        return _common.print_result(case_hosts(rest[0], rest[1], int(rest[2])))

    www = os.path.join(args.dir, "www")
    local = os.path.join(www, "ds")
    build(local, args.rows, args.shard_rows)
    nbytes = sum(os.path.getsize(os.path.join(d, f)) for d, _, names in os.walk(local) for f in names)
    if args.peer_python:
        shard_bytes = args.shard_rows * ROW_BYTES
        subprocess.run([args.peer_python, __file__, "--case", "build-mds", local, os.path.join(www, "mds"),
                        str(shard_bytes)], check=True)
    server, base = start_server(www, args.mbps, args.latency_ms)
    try:
        results = _run(args, base, local, nbytes)
    finally:
        server.kill()
        server.wait()
    _report(args, results, nbytes)


def _run(args: argparse.Namespace, base: str, local: str, nbytes: int) -> dict[str, list]:
    """Every case once per repeat, each in a fresh process, each with an empty cache of its own."""
    url = f"{base}/ds"
    me = [sys.executable, __file__, "--case"]
    results: dict[str, list] = {"remote": [], "local": [], "fit_shuffle": [], "hosts": [], "loader": [], "mosaic": []}

    def empty_cache() -> str:
        return tempfile.mkdtemp(prefix="bench-remote-cache-", dir=args.dir)

    for _ in range(args.repeats):
        cache = empty_cache()
        results["remote"].append(_common.run_case(me + ["fit", url, cache], "remote fit"))
        shutil.rmtree(cache)
        _common.warm(_common.data_files(local))
        results["local"].append(_common.run_case(me + ["fit", local], "local fit"))
        cache = empty_cache()
        results["fit_shuffle"].append(_common.run_case(me + ["fit", url, cache, "fit-shuffle"], "remote fit, fit's shuffle"))
        shutil.rmtree(cache)
        cache = empty_cache()
        results["hosts"].append(_common.run_case(me + ["hosts", url, cache, str(nbytes // 4)], "two hosts"))
        shutil.rmtree(cache)
        if args.peer_python:
            cache = empty_cache()
            results["loader"].append(_common.run_case(me + ["loader", url, cache], "memseq loader"))
            shutil.rmtree(cache)
            cache = empty_cache()
            mosaic = [args.peer_python, __file__, "--case", "mosaic", base, cache, str(BATCH), "2"]
            results["mosaic"].append(_common.run_case(mosaic, "Mosaic Streaming"))
            shutil.rmtree(cache)
    return results


def _report(args: argparse.Namespace, results: dict, nbytes: int) -> None:
    rows = results["remote"][0]["rows"]
    bound = args.mbps * 1e6 / ROW_BYTES
    cold = statistics.median(rows / r["seconds"][0] for r in results["remote"])
    warm = statistics.median(rows / r["seconds"][1] for r in results["remote"])
    local = statistics.median(rows / r["seconds"][1] for r in results["local"])
    print(f"dataset: {rows:,} rows, {nbytes / 1e9:.2f} GB in shards of {args.shard_rows} rows; server: "
          f"{args.mbps:g} MB/s, {args.latency_ms:g} ms per request; fit(seq, shuffle=False), tiny model, "
          f"batch {BATCH}, ShardShuffle(window_shards=4), workers=2; medians of {args.repeats} run(s)")
    print(f"  epoch 1, empty cache: {cold:,.0f} rows/s = {cold / bound:.2f}x the bandwidth's {bound:,.0f} rows/s "
          f"(downloaded {statistics.median(r['downloaded'] for r in results['remote']) / nbytes:.2f}x the dataset)")
    shuffled = statistics.median(rows / r["seconds"][0] for r in results["fit_shuffle"])
    print(f"  epoch 1, empty cache, fit(seq) with fit's default batch shuffle (shuffle=True): {shuffled:,.0f} rows/s "
          f"= {shuffled / bound:.2f}x the bandwidth")
    print(f"  epoch 2, warm cache:  {warm:,.0f} rows/s = {warm / local:.2f}x local disk ({local:,.0f} rows/s, page cache warm)")
    share = nbytes / 2
    per = [b / share for r in results["hosts"] for epoch in r["per_epoch"] for b in epoch]
    print(f"  two hosts, cache 1/4 of the dataset each: bytes downloaded per host per epoch / its share (half): "
          f"max {max(per):.3f}, all {', '.join(f'{p:.3f}' for p in per)}")
    figures = {"cold_vs_bandwidth": cold / bound, "warm_vs_local": warm / local, "hosts_share_max": max(per)}
    if results["mosaic"]:
        rates = {name: [[r["rows"] / t for t in r["seconds"]] for r in results[name]] for name in ("loader", "mosaic")}
        med = {name: [statistics.median(run[e] for run in runs) for e in (0, 1)] for name, runs in rates.items()}
        for e, what in enumerate(("epoch 1, empty cache", "epoch 2, warm cache ")):
            print(f"  data path alone, {what}: memseq seq[i] {med['loader'][e]:,.0f} rows/s "
                  f"({med['loader'][e] / bound:.2f}x the bandwidth), Mosaic Streaming + DataLoader(num_workers=2) "
                  f"{med['mosaic'][e]:,.0f} rows/s ({med['mosaic'][e] / bound:.2f}x): memseq/Mosaic "
                  f"{med['loader'][e] / med['mosaic'][e]:.2f}x")
        figures.update(memseq_vs_mosaic_cold=med["loader"][0] / med["mosaic"][0],
                       memseq_vs_mosaic_warm=med["loader"][1] / med["mosaic"][1])
    print(json.dumps(figures))


if __name__ == "__main__":
    main()
