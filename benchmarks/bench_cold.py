"""Cold-cache reading: readahead and block shuffle against sequential and random reads, with I/O counts.

Usage:
    python benchmarks/bench_cold.py [--dir DIR] [--rows 200000] [--repeats 3] [--skip-read] [--skip-train] [--skip-fit]

The dataset is 200,000 rows of 64x64x3 uint8 (12 KiB rows, 2.46 GB) plus labels, the
one ``bench_fit.py`` builds (reused if present). Before every case the page cache
is emptied: the parent holds no mapping of the files, asks the kernel to drop their
pages (``posix_fadvise(DONTNEED)``), touches and frees 1.1x their size of anonymous
memory (this VM hands free memory back to its host; refilling it costs a core,
which must not be charged to the case), and confirms with ``mincore`` that nothing
is resident. Each case then reads one epoch in a fresh process. Around each case the
device's completed read requests and sectors are read from ``/proc/diskstats``.

Printed per case: GB/s, the ratio to the sequential numpy read, read requests per
GB, and the epoch time modelled on an IOPS-limited cloud volume (3,000 requests/s,
125 MB/s): ``max(requests / 3000, bytes / 125 MB/s)`` per GB read. Also the device's
random-read ceiling for these rows (``os.pread`` in random order from 1, 8 and 64
threads), shuffle-quality statistics of full and block shuffle, ``fit(seq)`` cold
against hot, and a training comparison on a label-sorted dataset.
"""

from __future__ import annotations

import argparse
import concurrent.futures
import json
import os
import statistics
import sys
import tempfile
import time

import numpy as np

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))

import _common  # noqa: E402

import memseq  # noqa: E402
from memseq import bench  # noqa: E402

BATCH = _common.BATCH
IOPS, VOLUME_BYTES_PER_S = 3000, 125e6

CASES = {
    "numpy sequential memmap[i:i+B]": ("numpy_sequential", {}),
    "numpy shuffled sorted gather": ("numpy_shuffled", {}),
    "seq[i] full shuffle": ("seq", {"shuffle": True, "readahead": False}),
    "seq[i] full shuffle + readahead": ("seq", {"shuffle": True, "readahead": True}),
    "seq[i] block shuffle": ("seq", {"shuffle": "block", "readahead": False}),
    "seq[i] block shuffle + readahead": ("seq", {"shuffle": "block", "readahead": True}),
    "fit path, workers=4, full + readahead": ("adapter", {"shuffle": True, "readahead": True, "workers": 4}),
    "fit path, workers=4, full, no readahead": ("adapter", {"shuffle": True, "readahead": False, "workers": 4}),
    "fit path, workers=4, block + readahead": ("adapter", {"shuffle": "block", "readahead": True, "workers": 4}),
    "to_tf_dataset(), full + readahead": ("tfdata", {"shuffle": True, "readahead": True}),
    "to_tf_dataset(), block + readahead": ("tfdata", {"shuffle": "block", "readahead": True}),
}


# --------------------------------------------------------------------------- one case, in a fresh process


def run_case(kind: str, options: dict, path: str) -> dict:
    """Reads one epoch; the clock runs from the first read (imports and setup excluded)."""
    n = len(memseq.open(path))
    image = np.load(os.path.join(path, "image.npy"), mmap_mode="r")
    nbytes = 0
    if kind == "numpy_sequential":
        start = time.perf_counter()
        for i in range(0, n, BATCH):
            nbytes += np.array(image[i : i + BATCH]).nbytes
    elif kind == "numpy_shuffled":
        perm = np.random.default_rng(0).permutation(n)
        start = time.perf_counter()
        for i in range(0, n, BATCH):
            nbytes += image[np.sort(perm[i : i + BATCH])].nbytes
    else:
        workers = options.pop("workers", 0)
        seq = memseq.MemmapSequence(path, x="image", batch_size=BATCH, seed=0, workers=workers, **options)
        if kind == "seq":
            start = time.perf_counter()
            for i in range(len(seq)):
                nbytes += seq[i][0].nbytes
        elif kind == "adapter":
            from memseq.adapters.keras.adapter import SequenceAdapter

            batches = SequenceAdapter(seq).get_numpy_iterator()
            start = time.perf_counter()
            for (x,) in batches:
                nbytes += x.nbytes
        else:
            batches = seq.to_tf_dataset().as_numpy_iterator()
            start = time.perf_counter()
            for (x,) in batches:
                nbytes += x.nbytes
    return {"seconds": time.perf_counter() - start, "bytes": nbytes}


def measure(kind: str, options: dict, args: argparse.Namespace, paths: list[str], device: str) -> dict:
    cached = _common.evict(paths)
    requests0, sectors0 = _common.read_counts(device)
    command = [sys.executable, __file__, "--case", json.dumps([kind, options]), "--dir", args.dir]
    out = _common.run_case(command, f"case {kind} {options}")
    requests1, sectors1 = _common.read_counts(device)
    out.update(cached_at_start=cached, requests=requests1 - requests0, disk_bytes=(sectors1 - sectors0) * 512)
    return out


# --------------------------------------------------------------------------- the device's random-read ceiling


def random_read_ceiling(path: str, threads: int, rows: int, row_bytes: int, offset: int) -> float:
    """GB/s of ``os.pread`` of whole rows in random order, from ``threads`` threads (cold)."""
    order = np.random.default_rng(threads).permutation(rows)[: min(rows, 20_000)]
    fd = os.open(path, os.O_RDONLY)
    try:
        def read(chunk):
            for r in chunk:
                os.pread(fd, row_bytes, offset + int(r) * row_bytes)

        start = time.perf_counter()
        with concurrent.futures.ThreadPoolExecutor(threads) as pool:
            list(pool.map(read, np.array_split(order, threads * 8)))
        return len(order) * row_bytes / (time.perf_counter() - start) / 1e9
    finally:
        os.close(fd)


# --------------------------------------------------------------------------- shuffle quality


def shuffle_quality(num_rows: int, row_nbytes: int) -> dict[str, dict[str, float]]:
    """Per order: distinct 4 MiB blocks per batch, and rank correlation of file position and epoch position."""
    from memseq.order import BatchPlan

    block_rows = max(1, 4 * 2**20 // row_nbytes)
    out = {}
    for name, shuffle in (("full shuffle", True), ("block shuffle (defaults)", "block"), ("no shuffle", False)):
        plan = BatchPlan(num_rows, BATCH, shuffle=shuffle, seed=0, row_nbytes=row_nbytes)
        perm = plan.permutation(0).astype(np.int64)
        distinct = [len(np.unique(perm[i : i + BATCH] // block_rows)) for i in range(0, num_rows, BATCH)]
        position = np.empty(num_rows, np.int64)
        position[perm] = np.arange(num_rows)
        corr = float(np.corrcoef(np.arange(num_rows), position)[0, 1])
        out[name] = {"distinct blocks per batch": statistics.median(distinct), "file/epoch position corr": corr}
    return out


# --------------------------------------------------------------------------- fit cold vs hot, and training quality


def fit_case(path: str, cold: bool, batches: int, readahead: bool = True, shuffle: object = True) -> dict:
    """fit(seq) for 2 epochs; the second starts cold (every mapping dropped, cache evicted) or hot."""
    import keras

    seq = memseq.MemmapSequence(path, x="image", y="label", batch_size=BATCH, seed=0, workers=4, shuffle=shuffle,
                                indices=np.arange(batches * BATCH), readahead=readahead)
    paths = bench.data_files(memseq.open(path))
    times = []

    class Epochs(keras.callbacks.Callback):
        def on_epoch_begin(self, epoch, logs=None):
            if epoch == 1 and cold:
                drop_own_mappings(paths)
                _common.evict(paths)
            self.start = time.perf_counter()

        def on_epoch_end(self, epoch, logs=None):
            times.append(time.perf_counter() - self.start)

    model = _common.tiny_model()
    model.fit(seq, epochs=2, shuffle=False, verbose=0, callbacks=[Epochs()])
    return {"seconds": times[1], "bytes": batches * BATCH * 12288}


def drop_own_mappings(paths: list[str]) -> None:
    """``madvise(MADV_DONTNEED)`` on every range of this process mapping one of ``paths``.

    Pages a live mapping maps cannot be evicted; this unmaps their pages (not the
    mappings: the sequence keeps working and faults them in again, from disk).
    """
    import mmap as mmap_module

    from memseq.util import libc

    real = {os.path.realpath(p) for p in paths}
    with open("/proc/self/maps") as f:
        for line in f:
            parts = line.split(maxsplit=5)
            if len(parts) == 6 and os.path.realpath(parts[5].strip()) in real:
                lo, hi = (int(v, 16) for v in parts[0].split("-"))
                try:
                    libc.madvise(lo, hi - lo, mmap_module.MADV_DONTNEED)
                except OSError:
                    pass  # a range whose pages cannot be dropped stays as it is


def train_quality(directory: str) -> dict[str, float]:
    """Validation accuracy after 2 epochs on a label-sorted dataset: full, block and no shuffle."""
    script = f"""
import json, numpy as np, keras, memseq
from memseq import demo
path = {directory!r}
rng = np.random.default_rng(0)
images, labels = demo.synthetic_images(24_000, rng, demo.class_patterns(rng), demo.noise_bank(rng))
order = np.argsort(labels, kind="stable")
memseq.save(path + "/sorted", {{"image": images[order], "label": labels[order]}}, overwrite=True)
val = memseq.MemmapSequence({{"image": images[-4000:], "label": labels[-4000:]}}, x="image", y="label", batch_size=256, shuffle=False)
out = {{}}
for name, shuffle in (("full", True), ("block", memseq.BlockShuffle(block_rows=64, window_blocks=16)), ("none", False)):
    keras.utils.set_random_seed(0)
    model = demo.build_model(keras)
    seq = memseq.MemmapSequence(path + "/sorted", x="image", y="label", batch_size=64, seed=0, shuffle=shuffle,
                                indices=np.arange(20_000))
    model.fit(seq, epochs=2, shuffle=False, verbose=0)
    out[name] = float(model.evaluate(val, verbose=0, return_dict=True).get("accuracy", float("nan")))
print(json.dumps(out))
"""
    return _common.run_case([sys.executable, "-c", script], "training comparison")


# --------------------------------------------------------------------------- report


def per_gb(r: dict) -> tuple[float, float, float]:
    gbs = r["bytes"] / r["seconds"] / 1e9
    requests_per_gb = r["requests"] / max(r["disk_bytes"], 1) * 1e9
    modelled = max(r["requests"] / IOPS, r["disk_bytes"] / VOLUME_BYTES_PER_S) / max(r["bytes"] / 1e9, 1e-9)
    return gbs, requests_per_gb, modelled


def read_report(args: argparse.Namespace, paths: list[str], device: str, image_path: str, row_bytes: int,
                data_offset: int) -> None:
    """The read cases, the random-read ceiling, the targets and the shuffle quality, printed."""

    def one(name: str) -> tuple[float, float, float]:
        kind, options = CASES[name]
        r = measure(kind, dict(options), args, paths, device)
        assert r["cached_at_start"] < 0.01, f"{name}: {r['cached_at_start']:.1%} cached at start"
        return per_gb(r)

    # Rounds: every case once per round, so a slow spell of this shared disk hits all
    # cases alike; each figure is the median over the rounds.
    runs = _common.rounds(list(CASES), args.repeats, one)
    results = {name: tuple(statistics.median(column) for column in zip(*rs)) for name, rs in runs.items()}
    base_gbs, base_rpg, _ = results["numpy sequential memmap[i:i+B]"]
    print(f"\n  median of {args.repeats} rounds; 0.0% of the files cached at the start of every case (mincore)")
    print(f"  {'case':<42} {'GB/s':>6} {'x seq':>6} {'req/GB':>8} {'IOPS-vol s/GB':>13}  GB/s per round")
    for name, (gbs, rpg, modelled) in results.items():
        each = " ".join(f"{r[0]:.2f}" for r in runs[name])
        print(f"  {name:<42} {gbs:6.2f} {gbs / base_gbs:6.2f} {rpg:8.0f} {modelled:13.1f}  {each}")

    print("\nrandom-read ceiling for these rows (os.pread, random order, cold):")
    ceiling = {}
    for threads in (1, 8, 64):
        _common.evict(paths)
        ceiling[threads] = random_read_ceiling(image_path, threads, args.rows, row_bytes, data_offset)
        print(f"  {threads:>2} threads: {ceiling[threads]:.2f} GB/s ({ceiling[threads] / base_gbs:.2f}x sequential)")
    best = max(ceiling.values())
    full_ra = results["seq[i] full shuffle + readahead"][0]
    full_no = results["seq[i] full shuffle"][0]
    block_ra = results["seq[i] block shuffle + readahead"]
    print("\ntargets (medians):")
    print(f"  full shuffle + readahead vs without:       {full_ra / full_no:5.2f}x  (target >= 1.5x)")
    print(f"  full shuffle + readahead vs sequential:    {full_ra / base_gbs:5.2f}x  (target >= 0.65x)")
    print(f"  full shuffle + readahead vs random ceiling:{full_ra / best:6.2f}x  (target >= 0.9x)")
    print(f"  block shuffle + readahead vs sequential:   {block_ra[0] / base_gbs:5.2f}x  (target >= 0.95x)")
    print(f"  block shuffle requests/GB vs sequential:   {block_ra[1] / base_rpg:5.2f}x  (target <= 1.5x)")

    print("\nshuffle quality (one epoch, 4 MiB blocks):")
    for name, stats in shuffle_quality(args.rows, row_bytes + 8).items():
        print(f"  {name:<26} distinct blocks per batch {stats['distinct blocks per batch']:6.1f}   "
              f"file/epoch position correlation {stats['file/epoch position corr']:+.3f}")


def hot_cost(path: str, batch_size: int, shuffle: object, rounds: int = 7, batches: int = 400) -> tuple[float, float]:
    """Median us per ``seq[i]`` with readahead off and on, data in the page cache (interleaved rounds)."""
    seqs = {on: memseq.MemmapSequence(path, x="image", batch_size=batch_size, seed=0, shuffle=shuffle, readahead=on)
            for on in (False, True)}
    n = min(batches, len(seqs[False]))
    times: dict[bool, list[float]] = {False: [], True: []}
    for r in range(rounds + 1):
        for on, seq in seqs.items():
            start = time.perf_counter()
            for i in range(n):
                seq[i]
            if r:  # the first round warms the cache and the buffer pool
                times[on].append((time.perf_counter() - start) / n * 1e6)
    return statistics.median(times[False]), statistics.median(times[True])


def fit_report(args: argparse.Namespace) -> None:
    """fit(seq) hot, cold and cold without readahead, full and block shuffle: medians of ``--repeats`` rounds."""
    modes = ("hot", "cold", "cold-no-readahead")
    print(f"\nfit(seq), tiny model, workers=4 threads, {args.fit_batches} batches (the epoch after a hot one), "
          f"medians of {args.repeats} rounds, every case in a fresh process:")
    for shuffle in ("full", "block"):
        def one(mode: str, shuffle: str = shuffle) -> float:
            command = [sys.executable, __file__, "--fit", mode, "--fit-shuffle", shuffle, "--dir", args.dir,
                       "--fit-batches", str(args.fit_batches)]
            return args.fit_batches * BATCH / _common.run_case(command, f"fit {mode}")["seconds"]

        rates = _common.rounds(modes, args.repeats, one)
        rate = {m: statistics.median(r) for m, r in rates.items()}
        print(f"  {shuffle:>5} shuffle: hot {rate['hot']:,.0f} samples/s, cold + readahead {rate['cold']:,.0f} "
              f"({rate['cold'] / rate['hot']:.2f}x hot; target >= 0.9x), cold without readahead "
              f"{rate['cold-no-readahead']:,.0f} ({rate['cold-no-readahead'] / rate['hot']:.2f}x hot); rounds: "
              + "; ".join(f"{m} " + " ".join(f"{v:,.0f}" for v in r) for m, r in rates.items()))


def main(argv=None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--dir", default=os.path.join(tempfile.gettempdir(), "memseq-bench-fit"))
    parser.add_argument("--rows", type=int, default=200_000)
    parser.add_argument("--fit-batches", type=int, default=500)
    parser.add_argument("--repeats", type=int, default=3, help="rounds of every case; medians are reported")
    parser.add_argument("--skip-train", action="store_true")
    parser.add_argument("--skip-fit", action="store_true")
    parser.add_argument("--skip-read", action="store_true", help="only the fit and training parts")
    parser.add_argument("--case", help=argparse.SUPPRESS)
    parser.add_argument("--fit", help=argparse.SUPPRESS)
    parser.add_argument("--fit-shuffle", default="full", choices=("full", "block"), help=argparse.SUPPRESS)
    args = parser.parse_args(argv)
    if args.case:
        kind, options = json.loads(args.case)
        _common.print_result(run_case(kind, options, args.dir))
        return 0
    if args.fit:
        shuffle = True if args.fit_shuffle == "full" else "block"
        _common.print_result(fit_case(args.dir, args.fit != "hot", args.fit_batches, args.fit != "cold-no-readahead", shuffle))
        return 0

    _common.build_images(args.dir, args.rows, random_labels=True)
    ds = memseq.open(args.dir)
    paths = bench.data_files(ds)
    image_path = os.path.join(args.dir, ds.manifest.shards[0].files["image"].path)
    from memseq.storage.format import read_npy_header

    with open(image_path, "rb") as f:
        _, _, data_offset = read_npy_header(f, image_path)
    row_bytes = ds.fields["image"].row_nbytes
    ds.close()
    device = _common.device_of(image_path)
    print(f"dataset {args.dir}: {args.rows} rows of 12 KiB; device {device}; page cache emptied before every case "
          "(fadvise DONTNEED, 1.1x anonymous memory touched, mincore-checked); one epoch per case, fresh process")

    if not args.skip_read:
        read_report(args, paths, device, image_path, row_bytes, data_offset)
    print("\nreadahead's cost when the data are in RAM (seq[i], medians of 7 interleaved rounds):")
    for shuffle, batch_size in ((True, 32), (True, 256), ("block", 256)):
        off, on = hot_cost(args.dir, batch_size, shuffle)
        print(f"  shuffle={shuffle!r:<7} batch {batch_size:>3}: {off:6.0f} us/batch off, {on:6.0f} us/batch on: "
              f"on/off {on / off:.3f}")
    if not args.skip_fit:
        fit_report(args)
    if not args.skip_train:
        with tempfile.TemporaryDirectory() as tmp:
            acc = train_quality(tmp)
        print("\nlabel-sorted dataset, demo CNN, 2 epochs, validation accuracy: "
              + ", ".join(f"{k} shuffle {v:.3f}" for k, v in acc.items()))
    return 0


if __name__ == "__main__":
    sys.exit(main())
