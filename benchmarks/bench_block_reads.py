"""Where a cold block-shuffled epoch spends its time: the disk, or the reader's CPU.

Usage::

    python benchmarks/bench_block_reads.py [--dir DIR] [--repeats 3]

The same dataset as ``bench_cold.py`` (200,000 rows of 12 KiB, 2.46 GB). Every case
runs in a fresh process, with the page cache emptied first exactly as ``bench_cold.py``
does (and checked with ``mincore``); each round runs every case once, and medians over
the rounds are printed with ratios to the sequential read of the same round.

- ``numpy sequential``: ``memmap[i:i+B]`` copies, the baseline of ``bench_cold.py``.
- ``blocks, no reader``: every 4 MiB block of the file, in random order, read into the
  page cache by 4 threads with ``sendfile`` to ``/dev/null`` (nothing copied, nothing
  mapped): what the disk gives block shuffle's reads when no one uses the data.
- ``seq[i] block + readahead``, cold and hot: one epoch of ``MemmapSequence`` with
  ``shuffle="block"``; besides GB/s, the reading thread's own CPU seconds
  (``time.thread_time``). Hot means the file is in the page cache but not yet mapped
  by the process, so both take the same page faults (counted) and copy the same bytes.
  The sequential read is also timed hot, for the same comparison.
- ``first touch``: pages put in the page cache by those block reads, or by one
  sequential stream, then mapped (``MADV_POPULATE_READ``, so no faults follow) and read
  twice, one load per 64-byte line: the first pass's extra CPU over the second is the
  cost of first touching freshly read pages.
"""

from __future__ import annotations

import argparse
import concurrent.futures
import json
import mmap
import os
import resource
import statistics
import sys
import tempfile
import time

import numpy as np

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))

import _common  # noqa: E402
import bench_cold  # noqa: E402

import memseq  # noqa: E402
from memseq import bench  # noqa: E402

BLOCK = 4 * 2**20
CASES = ("numpy sequential", "numpy sequential, hot", "blocks, no reader", "seq[i] block + readahead", "seq[i] block + readahead, hot",
         "first touch, block reads", "first touch, sequential read")


def _fill_by_blocks(path: str, size: int, threads: int = 4) -> None:
    """Reads every whole block of ``path`` below ``size`` into the page cache, in random order."""
    order = np.random.default_rng(0).permutation(size // BLOCK).tolist()
    null = os.open(os.devnull, os.O_WRONLY)

    def read(block: int) -> None:
        fd = os.open(path, os.O_RDONLY)
        try:
            done = 0
            while done < BLOCK:
                done += os.sendfile(null, fd, block * BLOCK + done, BLOCK - done)
        finally:
            os.close(fd)

    with concurrent.futures.ThreadPoolExecutor(threads) as pool:
        list(pool.map(read, order))
    os.close(null)


def _first_touch(path: str, by_blocks: bool) -> dict:
    """CPU seconds of two no-fault passes over pages just read (see the module docstring)."""
    import ctypes

    size = os.path.getsize(path) // BLOCK * BLOCK
    if by_blocks:
        _fill_by_blocks(path, size)
    else:  # one stream, also through sendfile: a read() would copy, touching every page first
        fd, null, offset = os.open(path, os.O_RDONLY), os.open(os.devnull, os.O_WRONLY), 0
        while offset < size:
            offset += os.sendfile(null, fd, offset, min(8 * BLOCK, size - offset))
        os.close(fd)
        os.close(null)
    fd = os.open(path, os.O_RDONLY)
    mapping = mmap.mmap(fd, size, prot=mmap.PROT_READ)
    os.close(fd)
    data = np.frombuffer(mapping, np.uint8)
    libc = ctypes.CDLL(None, use_errno=True)
    libc.madvise.argtypes = [ctypes.c_void_p, ctypes.c_size_t, ctypes.c_int]
    libc.madvise(data.ctypes.data, size, 22)  # MADV_POPULATE_READ: map every page, so the passes take no faults
    passes = []
    for _ in range(2):
        faults = resource.getrusage(resource.RUSAGE_SELF)
        start = time.thread_time()
        for i in range(0, size, 64 * BLOCK):
            data[i : i + 64 * BLOCK : 64].sum(dtype=np.uint64)
        passes.append(time.thread_time() - start)
        after = resource.getrusage(resource.RUSAGE_SELF)
        # A few faults are numpy's own scratch memory; the file's 600,000 pages are all mapped already.
        assert after.ru_minflt + after.ru_majflt - faults.ru_minflt - faults.ru_majflt < 100, "a pass faulted pages in"
    del data
    mapping.close()
    return {"seconds": passes[0], "bytes": size, "cpu": passes[0] - passes[1]}


def run_case(name: str, directory: str) -> dict:
    """One case, in this (fresh) process; the clock runs from the first read."""
    image = os.path.join(directory, "image.npy")
    if name.startswith("first touch"):
        return _first_touch(image, by_blocks=name.endswith("block reads"))
    faults = resource.getrusage(resource.RUSAGE_SELF)
    if name.startswith("numpy sequential"):
        array = np.load(image, mmap_mode="r")
        start, cpu = time.perf_counter(), time.thread_time()
        nbytes = sum(np.array(array[i : i + bench_cold.BATCH]).nbytes for i in range(0, len(array), bench_cold.BATCH))
    elif name == "blocks, no reader":
        nbytes = os.path.getsize(image) // BLOCK * BLOCK
        start, cpu = time.perf_counter(), time.thread_time()
        _fill_by_blocks(image, nbytes)
    else:
        seq = memseq.MemmapSequence(directory, x="image", batch_size=bench_cold.BATCH, seed=0, shuffle="block",
                                    readahead=True)
        start, cpu = time.perf_counter(), time.thread_time()
        nbytes = sum(seq[i][0].nbytes for i in range(len(seq)))
    seconds, cpu = time.perf_counter() - start, time.thread_time() - cpu
    after = resource.getrusage(resource.RUSAGE_SELF)
    return {"seconds": seconds, "bytes": nbytes, "cpu": cpu, "faults": after.ru_minflt - faults.ru_minflt,
            "major_faults": after.ru_majflt - faults.ru_majflt}


def measure(name: str, directory: str, paths: list[str], device: str) -> dict:
    if name.endswith(", hot"):
        _common.warm(directory)
        cached = bench.cached_fraction(paths)
        assert cached > 0.99, f"{name}: only {cached:.1%} cached"
    else:
        cached = bench_cold.evict(paths)
        assert cached < 0.01, f"{name}: {cached:.1%} cached at start"
    requests0, _ = bench_cold.read_counts(device)
    out = _common.run_json([sys.executable, __file__, "--case", name, "--dir", directory], name)
    out["requests"] = bench_cold.read_counts(device)[0] - requests0
    return out


def main(argv=None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--dir", default=os.path.join(tempfile.gettempdir(), "memseq-bench-fit"))
    parser.add_argument("--rows", type=int, default=200_000)
    parser.add_argument("--repeats", type=int, default=3, help="rounds of every case; medians are reported")
    parser.add_argument("--case", help=argparse.SUPPRESS)
    args = parser.parse_args(argv)
    if args.case:
        print(json.dumps(run_case(args.case, args.dir)))
        return 0

    _common.build_images(args.dir, args.rows, random_labels=True)
    paths = bench.data_files(memseq.open(args.dir))
    device = bench_cold.device_of(paths[0])
    runs: dict[str, list[dict]] = {name: [] for name in CASES}
    for _ in range(args.repeats):
        for name in CASES:
            runs[name].append(measure(name, args.dir, paths, device))

    def median(name: str, key: str) -> float:
        return statistics.median(r[key] for r in runs[name])

    def gbs(name: str) -> float:
        return statistics.median(r["bytes"] / r["seconds"] / 1e9 for r in runs[name])

    base = gbs("numpy sequential")
    print(f"dataset {args.dir}, device {device}; medians of {args.repeats} rounds, every case in a fresh process")
    print(f"  {'case':<32} {'GB/s':>6} {'x seq':>6} {'req/GB':>7} {'thread CPU s':>12} {'faults':>8} {'major':>6}")
    for name in CASES[:5]:
        req = statistics.median(r["requests"] / (r["bytes"] / 1e9) for r in runs[name])
        rate = f"{gbs(name):6.2f} {gbs(name) / base:6.2f}" if not name.endswith("hot") else f"{gbs(name):6.2f} {'':>6}"
        print(f"  {name:<32} {rate} {req:7.0f} {median(name, 'cpu'):12.2f} {median(name, 'faults'):8.0f} "
              f"{median(name, 'major_faults'):6.0f}")
    for what in ("numpy sequential", "seq[i] block + readahead"):
        cold, hot = median(what, "cpu"), median(what + ", hot", "cpu")
        print(f"  {what}: the reading thread's CPU cold / hot (same bytes): {cold:.2f} / {hot:.2f} s = {cold / hot:.1f}x")
    print(f"\n  block reads alone vs the sequential read: {gbs('blocks, no reader') / base:.2f}x; "
          f"seq[i] block + readahead: {gbs('seq[i] block + readahead') / base:.2f}x")
    for name in CASES[5:]:
        gb = runs[name][0]["bytes"] / 1e9
        print(f"  {name}: first pass costs {median(name, 'cpu') / gb * 1e3:.0f} ms of CPU per GB more than the second"
              f" ({median(name, 'seconds') / gb * 1e3:.0f} ms per GB in all)")
    return 0


if __name__ == "__main__":
    sys.exit(main())
