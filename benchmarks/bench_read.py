"""How fast memseq gathers shuffled rows, against baselines measured in the same run.

Usage:
    python benchmarks/bench_read.py [--dir DIR] [--size-gb 2] [--rows N] [--batch 256]
                                    [--batches 200] [--repeats 7]

Builds (once; reused when present with the right size) a dataset of 64x64x3 uint8
images (12 KiB rows) and int64 labels, warms the page cache and this process's
mappings, then measures with batches of shuffled row indices on a hot cache:

a. memseq's row gather as a training loop does it: ``Dataset.take`` on each batch's
   indices sorted ascending (MemmapSequence sorts the rows of a batch); also
   ``Dataset.take`` on the unsorted indices and ``Column.take`` into a reused buffer;
b. plain numpy: ``arr[idx]`` on ``np.load(..., mmap_mode="r")`` with the same
   unsorted indices (image and label);
c. ``np.copyto`` of the same number of bytes from an in-RAM array (larger than the
   CPU caches) into a preallocated buffer: the memory-bandwidth limit.

It also measures the per-batch truncation check (one ``fstat`` per file,
``Column.check_sizes()``) and prints resident anonymous memory (RssAnon) before,
during (peak) and after the gather loop: reads must not grow it.

Every figure is the median over ``--repeats`` runs of ``--batches`` batches each;
ratios are ratios of medians. Targets: gather >= 1.0x numpy, >= 0.6x memcpy.
"""

from __future__ import annotations

import argparse
import os
import resource
import statistics
import sys
import tempfile
import time

import numpy as np

import memseq

ROW_SHAPE = (64, 64, 3)
ROW_BYTES = int(np.prod(ROW_SHAPE))
BLOCK = 20  # batches per turn of one method


def rss_anon_kib() -> int:
    """Resident anonymous memory of this process (KiB), from /proc/self/status."""
    with open("/proc/self/status") as f:
        for line in f:
            if line.startswith("RssAnon:"):
                return int(line.split()[1])
    return -1


def build(path: str, rows: int) -> memseq.Dataset:
    try:
        ds = memseq.open(path)
        if len(ds) == rows and ds.fields["image"].shape == ROW_SHAPE and ds.num_shards == 1:
            print(f"reusing {path} ({rows} rows)", flush=True)
            return ds
    except (memseq.MemseqError, KeyError):
        pass
    print(f"writing {rows} rows ({rows * ROW_BYTES / 1e9:.2f} GB) to {path} ...", flush=True)
    rng = np.random.default_rng(0)
    chunk = 4096
    block = rng.integers(0, 256, (chunk, *ROW_SHAPE), dtype=np.uint8)
    start_time = time.perf_counter()
    with memseq.Writer(path, {"image": ("uint8", ROW_SHAPE), "label": ("int64", ())}, overwrite=True) as w:
        for start in range(0, rows, chunk):
            n = min(chunk, rows - start)
            w.append({"image": block[:n], "label": np.arange(start, start + n)})
    print(f"  written in {time.perf_counter() - start_time:.1f} s", flush=True)
    return memseq.open(path)


def warm(paths: list[str], ds: memseq.Dataset, arrays: list[np.ndarray]) -> None:
    """Reads every file once (page cache), then touches every page of each mapping.

    Touching the mappings takes the one-off minor page faults (page-table set-up) out of
    the measurement for memseq and numpy alike.
    """
    buf = bytearray(64 << 20)
    for path in paths:
        with open(path, "rb", buffering=0) as f:
            while f.readinto(buf):
                pass
    for name in ds:
        col = ds[name]
        step = max(1, (64 << 20) // max(col.nbytes // max(len(col), 1), 1))
        for start in range(0, len(col), step):
            col[start : start + step]
    for arr in arrays:
        step = max(1, (64 << 20) // max(arr.nbytes // max(len(arr), 1), 1))
        for start in range(0, len(arr), step):
            np.array(arr[start : start + step])


def timed(fn, batches: np.ndarray) -> tuple[float, int]:
    """Seconds for all batches, and the minor page faults taken meanwhile."""
    faults = resource.getrusage(resource.RUSAGE_SELF).ru_minflt
    start = time.perf_counter()
    for idx in batches:
        fn(idx)
    elapsed = time.perf_counter() - start
    return elapsed, resource.getrusage(resource.RUSAGE_SELF).ru_minflt - faults


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--dir", default=os.path.join(tempfile.gettempdir(), "memseq-bench-read"),
                        help="dataset directory (built once, then reused)")
    parser.add_argument("--size-gb", type=float, default=2.0, help="dataset size in GB (1e9 bytes)")
    parser.add_argument("--rows", type=int, default=None, help="number of rows (overrides --size-gb)")
    parser.add_argument("--batch", type=int, default=256)
    parser.add_argument("--batches", type=int, default=200, help="batches per repeat")
    parser.add_argument("--repeats", type=int, default=7)
    parser.add_argument("--seed", type=int, default=0)
    args = parser.parse_args(argv)

    rows = args.rows if args.rows is not None else int(args.size_gb * 1e9) // ROW_BYTES
    ds = build(args.dir, rows)
    image_path = os.path.join(ds.path, ds.manifest.shards[0].files["image"].path)
    label_path = os.path.join(ds.path, ds.manifest.shards[0].files["label"].path)
    np_image = np.load(image_path, mmap_mode="r")
    np_label = np.load(label_path, mmap_mode="r")
    image_col = ds["image"]

    print("warming the page cache and the mappings ...", flush=True)
    t = time.perf_counter()
    warm([image_path, label_path], ds, [np_image, np_label])
    print(f"  {time.perf_counter() - t:.1f} s", flush=True)

    batch, nb = args.batch, args.batches
    batch_bytes = batch * (ROW_BYTES + 8)
    # memcpy source: larger than any CPU cache, so every copy streams from DRAM.
    ram = np.random.default_rng(1).integers(0, 256, (max(512 << 20, 4 * batch_bytes),), dtype=np.uint8)
    slots = len(ram) // batch_bytes
    dst = np.empty(batch_bytes, np.uint8)
    reuse = np.empty((batch, *ROW_SHAPE), np.uint8)
    reuse_label = np.empty(batch, np.int64)

    def memseq_sorted(idx):
        ds.take(np.sort(idx))

    def memseq_unsorted(idx):
        ds.take(idx)

    def memseq_reused_out(idx):
        s = np.sort(idx)
        image_col.take(s, out=reuse)
        ds["label"].take(s, out=reuse_label)

    mapped_file = type(image_col._parts()[0])
    real_check = mapped_file.check_size

    def memseq_reused_out_unchecked(idx):
        # Diagnostic only: the same gather with the truncation check switched off, to
        # show its whole cost (the fstat call and its side effects on caches).
        mapped_file.check_size = lambda self: None
        try:
            memseq_reused_out(idx)
        finally:
            mapped_file.check_size = real_check

    def numpy_fancy(idx):
        np_image[idx]
        np_label[idx]

    def numpy_take_clip_reused(idx):
        np.take(np_image, idx, axis=0, out=reuse, mode="clip")
        np.take(np_label, idx, axis=0, out=reuse_label, mode="clip")

    counter = iter(range(1 << 62))

    def memcpy(_idx):
        k = next(counter) % slots
        np.copyto(dst, ram[k * batch_bytes : (k + 1) * batch_bytes])

    # The same in-RAM bytes seen as rows: what a gather of 12 KiB rows costs without files.
    ram_rows = ram[: len(ram) // ROW_BYTES * ROW_BYTES].reshape(-1, *ROW_SHAPE)

    def ram_gather(idx):
        np.take(ram_rows, idx % len(ram_rows), axis=0, out=reuse, mode="clip")

    methods = {
        "memseq Dataset.take(sorted idx)": memseq_sorted,
        "memseq Dataset.take(unsorted idx)": memseq_unsorted,
        "memseq Column.take(sorted, out=reused)": memseq_reused_out,
        "  same, truncation check off (diagnostic)": memseq_reused_out_unchecked,
        "numpy memmap[idx] (unsorted)": numpy_fancy,
        "numpy np.take(clip, out=reused)": numpy_take_clip_reused,
        "np.copyto from RAM (memory bandwidth)": memcpy,
        "numpy np.take from RAM rows (no files)": ram_gather,
    }
    rng = np.random.default_rng(args.seed)
    times: dict[str, list[float]] = {name: [] for name in methods}
    faults: dict[str, list[int]] = {name: [] for name in methods}
    rss_before = rss_anon_kib()
    rss_peak = rss_before
    for r in range(args.repeats):
        # Shuffled epoch order, as MemmapSequence serves it (several epochs if the data are small).
        order = np.concatenate([rng.permutation(rows) for _ in range(-(-nb * batch // rows))])
        batches = order[: nb * batch].reshape(nb, batch)
        elapsed = dict.fromkeys(methods, 0.0)
        minflt = dict.fromkeys(methods, 0)
        # Methods take turns in blocks of batches, in a rotating order, so that bursts of
        # load on a noisy machine hit all of them alike. A block reads 60 MiB, more than
        # the CPU caches hold: the next method does not find the same rows still cached.
        for b, lo in enumerate(range(0, nb, BLOCK)):
            names = list(methods)
            k = (r + b) % len(names)
            for name in names[k:] + names[:k]:
                seconds, faults_taken = timed(methods[name], batches[lo : lo + BLOCK])
                elapsed[name] += seconds
                minflt[name] += faults_taken
            rss_peak = max(rss_peak, rss_anon_kib())
        for name in methods:
            times[name].append(elapsed[name])
            faults[name].append(minflt[name])
    rss_after = rss_anon_kib()

    # The truncation check: one fstat per file of a column, on every read.
    calls = 20000
    checks = []
    for _ in range(args.repeats):
        t = time.perf_counter()
        for _ in range(calls):
            image_col.check_sizes()
        checks.append((time.perf_counter() - t) / calls)
    check_us = statistics.median(checks) * 1e6

    medians = {name: statistics.median(ts) for name, ts in times.items()}
    gbps = {name: nb * batch_bytes / t / 1e9 for name, t in medians.items()}
    per_batch_us = {name: t / nb * 1e6 for name, t in medians.items()}

    print()
    print(f"dataset: {rows} rows x ({ROW_BYTES} B image + 8 B label) = {rows * (ROW_BYTES + 8) / 1e9:.2f} GB at {ds.path}")
    print(f"batch {batch} shuffled rows ({batch_bytes / 2**20:.2f} MiB), {nb} batches x {args.repeats} repeats, hot page cache")
    print(f"python {sys.version.split()[0]}, numpy {np.__version__}, memseq {memseq.__version__}, {os.cpu_count()} CPUs")
    print()
    print(f"{'method':40s} {'GB/s':>6s} {'us/batch':>8s} {'batches/s':>9s} {'faults/batch':>12s}  (min..max GB/s)")
    for name in methods:
        rates = [nb * batch_bytes / t / 1e9 for t in times[name]]
        fpb = statistics.median(faults[name]) / nb
        print(f"{name:40s} {gbps[name]:6.2f} {per_batch_us[name]:8.0f} {1e6 / per_batch_us[name]:9.0f} {fpb:12.1f}"
              f"  ({min(rates):.2f}..{max(rates):.2f})")
    print()
    gather = gbps["memseq Dataset.take(sorted idx)"]
    numpy_rate = gbps["numpy memmap[idx] (unsorted)"]
    memcpy_rate = gbps["np.copyto from RAM (memory bandwidth)"]
    print(f"gather/numpy  = {gather / numpy_rate:.2f}x   (target >= 1.0)   "
          f"[unsorted take: {gbps['memseq Dataset.take(unsorted idx)'] / numpy_rate:.2f}x]")
    print(f"gather/memcpy = {gather / memcpy_rate:.2f}x   (target >= 0.6)   "
          f"[in-RAM numpy gather/memcpy: {gbps['numpy np.take from RAM rows (no files)'] / memcpy_rate:.2f}x]")
    n_files = sum(len(ds[name]._parts()) for name in ds)
    gather_us = per_batch_us["memseq Dataset.take(sorted idx)"]
    print(f"truncation check: Column.check_sizes() = {check_us:.2f} us per call (1 file); "
          f"{check_us / gather_us * 100:.3f}% of one batch's gather ({gather_us:.0f} us); "
          f"{n_files} files per Dataset.take = {n_files * check_us / gather_us * 100:.3f}%")
    checked = per_batch_us["memseq Column.take(sorted, out=reused)"]
    unchecked = per_batch_us["  same, truncation check off (diagnostic)"]
    print(f"  whole cost of the check, measured as gather time with it on minus off: "
          f"{checked - unchecked:.1f} us per batch ({(checked - unchecked) / checked * 100:.1f}%)")
    print(f"RssAnon: before gather loop {rss_before / 1024:.1f} MiB, peak during {rss_peak / 1024:.1f} MiB, "
          f"after {rss_after / 1024:.1f} MiB (in-RAM memcpy source: {len(ram) / 2**20:.0f} MiB, allocated before)")
    return 0


if __name__ == "__main__":
    sys.exit(main())
