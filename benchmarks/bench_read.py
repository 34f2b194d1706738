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

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))

import _common  # noqa: E402

import memseq  # noqa: E402

ROW_SHAPE = _common.ROW_SHAPE
ROW_BYTES = int(np.prod(ROW_SHAPE))
BLOCK = 20  # batches per turn of one method


def rss_anon_kib() -> int:
    """Resident anonymous memory of this process (KiB), from /proc/self/status."""
    with open("/proc/self/status") as f:
        for line in f:
            if line.startswith("RssAnon:"):
                return int(line.split()[1])
    return -1


def touch_mappings(ds: memseq.Dataset, arrays: list[np.ndarray]) -> None:
    """Touches every page of each mapping (the files are in the page cache already).

    Touching the mappings takes the one-off minor page faults (page-table set-up) out of
    the measurement for memseq and numpy alike.
    """
    for col in [ds[name] for name in ds] + arrays:
        step = max(1, (64 << 20) // max(col.nbytes // max(len(col), 1), 1))
        for start in range(0, len(col), step):
            np.array(col[start : start + step])


def timed(fn, batches: np.ndarray) -> tuple[float, int]:
    """Seconds for all batches, and the minor page faults taken meanwhile."""
    faults = resource.getrusage(resource.RUSAGE_SELF).ru_minflt
    start = time.perf_counter()
    for idx in batches:
        fn(idx)
    elapsed = time.perf_counter() - start
    return elapsed, resource.getrusage(resource.RUSAGE_SELF).ru_minflt - faults


def parse_args(argv: list[str] | None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--dir", default=os.path.join(tempfile.gettempdir(), "memseq-bench-read"),
                        help="dataset directory (built once, then reused)")
    parser.add_argument("--size-gb", type=float, default=2.0, help="dataset size in GB (1e9 bytes)")
    parser.add_argument("--rows", type=int, default=None, help="number of rows (overrides --size-gb)")
    parser.add_argument("--batch", type=int, default=256)
    parser.add_argument("--batches", type=int, default=200, help="batches per repeat")
    parser.add_argument("--repeats", type=int, default=7)
    parser.add_argument("--seed", type=int, default=0)
    return parser.parse_args(argv)


class Methods:
    """The ways to read a batch of rows, each a function of the batch's (unsorted) indices."""

    def __init__(self, ds: memseq.Dataset, np_image: np.ndarray, np_label: np.ndarray, batch: int):
        self.ds, self.np_image, self.np_label = ds, np_image, np_label
        self.image_col = ds["image"]
        self.batch_bytes = batch * (ROW_BYTES + 8)
        # memcpy source: larger than any CPU cache, so every copy streams from DRAM.
        self.ram = np.random.default_rng(1).integers(0, 256, (max(512 << 20, 4 * self.batch_bytes),), dtype=np.uint8)
        self.slots = len(self.ram) // self.batch_bytes
        self.dst = np.empty(self.batch_bytes, np.uint8)
        self.reuse = np.empty((batch, *ROW_SHAPE), np.uint8)
        self.reuse_label = np.empty(batch, np.int64)
        self.mapped_file = type(self.image_col.parts()[0])
        self.real_check = self.mapped_file.check_size
        self.counter = iter(range(1 << 62))
        # The same in-RAM bytes seen as rows: what a gather of 12 KiB rows costs without files.
        self.ram_rows = self.ram[: len(self.ram) // ROW_BYTES * ROW_BYTES].reshape(-1, *ROW_SHAPE)

    def table(self) -> dict:
        return {
            "memseq Dataset.take(sorted idx)": self.memseq_sorted,
            "memseq Dataset.take(unsorted idx)": self.memseq_unsorted,
            "memseq Column.take(sorted, out=reused)": self.memseq_reused_out,
            "  same, truncation check off (diagnostic)": self.memseq_reused_out_unchecked,
            "numpy memmap[idx] (unsorted)": self.numpy_fancy,
            "numpy np.take(clip, out=reused)": self.numpy_take_clip_reused,
            "np.copyto from RAM (memory bandwidth)": self.memcpy,
            "numpy np.take from RAM rows (no files)": self.ram_gather,
        }

    def memseq_sorted(self, idx):
        self.ds.take(np.sort(idx))

    def memseq_unsorted(self, idx):
        self.ds.take(idx)

    def memseq_reused_out(self, idx):
        s = np.sort(idx)
        self.image_col.take(s, out=self.reuse)
        self.ds["label"].take(s, out=self.reuse_label)

    def memseq_reused_out_unchecked(self, idx):
        # Diagnostic only: the same gather with the truncation check switched off, to
        # show its whole cost (the fstat call and its side effects on caches).
        self.mapped_file.check_size = lambda self, *args: None
        try:
            self.memseq_reused_out(idx)
        finally:
            self.mapped_file.check_size = self.real_check

    def numpy_fancy(self, idx):
        self.np_image[idx]
        self.np_label[idx]

    def numpy_take_clip_reused(self, idx):
        np.take(self.np_image, idx, axis=0, out=self.reuse, mode="clip")
        np.take(self.np_label, idx, axis=0, out=self.reuse_label, mode="clip")

    def memcpy(self, _idx):
        k = next(self.counter) % self.slots
        np.copyto(self.dst, self.ram[k * self.batch_bytes : (k + 1) * self.batch_bytes])

    def ram_gather(self, idx):
        np.take(self.ram_rows, idx % len(self.ram_rows), axis=0, out=self.reuse, mode="clip")


def measure(methods: dict, rows: int, args: argparse.Namespace) -> tuple[dict, dict, tuple[int, int, int]]:
    """Seconds and minor faults per method and repeat, and RssAnon (KiB) before, peak during and after."""
    batch, nb = args.batch, args.batches
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
    return times, faults, (rss_before, rss_peak, rss_anon_kib())


def check_cost_us(column, repeats: int, calls: int = 20000) -> float:
    """The truncation check: median us of one ``check_sizes()`` (one fstat per file of a column)."""
    checks = []
    for _ in range(repeats):
        t = time.perf_counter()
        for _ in range(calls):
            column.check_sizes()
        checks.append((time.perf_counter() - t) / calls)
    return statistics.median(checks) * 1e6


def report(ds, rows, args, methods: Methods, times, faults, rss, check_us) -> None:
    batch, nb, batch_bytes = args.batch, args.batches, methods.batch_bytes
    medians = {name: statistics.median(ts) for name, ts in times.items()}
    gbps = {name: nb * batch_bytes / t / 1e9 for name, t in medians.items()}
    per_batch_us = {name: t / nb * 1e6 for name, t in medians.items()}
    print()
    print(f"dataset: {rows} rows x ({ROW_BYTES} B image + 8 B label) = {rows * (ROW_BYTES + 8) / 1e9:.2f} GB at {ds.path}")
    print(f"batch {batch} shuffled rows ({batch_bytes / 2**20:.2f} MiB), {nb} batches x {args.repeats} repeats, hot page cache")
    print(f"python {sys.version.split()[0]}, numpy {np.__version__}, memseq {memseq.__version__}, {os.cpu_count()} CPUs")
    print()
    print(f"{'method':40s} {'GB/s':>6s} {'us/batch':>8s} {'batches/s':>9s} {'faults/batch':>12s}  (min..max GB/s)")
    for name in times:
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
    n_files = sum(len(ds[name].parts()) for name in ds)
    gather_us = per_batch_us["memseq Dataset.take(sorted idx)"]
    print(f"truncation check: Column.check_sizes() = {check_us:.2f} us per call (1 file); "
          f"{check_us / gather_us * 100:.3f}% of one batch's gather ({gather_us:.0f} us); "
          f"{n_files} files per Dataset.take = {n_files * check_us / gather_us * 100:.3f}%")
    checked = per_batch_us["memseq Column.take(sorted, out=reused)"]
    unchecked = per_batch_us["  same, truncation check off (diagnostic)"]
    print(f"  whole cost of the check, measured as gather time with it on minus off: "
          f"{checked - unchecked:.1f} us per batch ({(checked - unchecked) / checked * 100:.1f}%)")
    rss_before, rss_peak, rss_after = rss
    print(f"RssAnon: before gather loop {rss_before / 1024:.1f} MiB, peak during {rss_peak / 1024:.1f} MiB, "
          f"after {rss_after / 1024:.1f} MiB (in-RAM memcpy source: {len(methods.ram) / 2**20:.0f} MiB, allocated before)")


def main(argv: list[str] | None = None) -> int:
    args = parse_args(argv)
    rows = args.rows if args.rows is not None else int(args.size_gb * 1e9) // ROW_BYTES
    ds = _common.build_images(args.dir, rows)
    image_path = os.path.join(ds.path, ds.manifest.shards[0].files["image"].path)
    label_path = os.path.join(ds.path, ds.manifest.shards[0].files["label"].path)
    np_image = np.load(image_path, mmap_mode="r")
    np_label = np.load(label_path, mmap_mode="r")

    print("warming the page cache and the mappings ...", flush=True)
    t = time.perf_counter()
    _common.warm([image_path, label_path])
    touch_mappings(ds, [np_image, np_label])
    print(f"  {time.perf_counter() - t:.1f} s", flush=True)

    methods = Methods(ds, np_image, np_label, args.batch)
    times, faults, rss = measure(methods.table(), rows, args)
    check_us = check_cost_us(methods.image_col, args.repeats)
    report(ds, rows, args, methods, times, faults, rss, check_us)
    return 0


if __name__ == "__main__":
    sys.exit(main())
