"""One epoch of the demo model on a dataset larger than the machine's memory.

Usage:
    python benchmarks/run_larger_than_ram.py [--dir DIR] [--size-gb AUTO] [--keep]

Writes (with ``memseq.Writer``) synthetic 64x64x3 images, 1.1x the machine's total
memory by default, into a directory that is deleted afterwards (``--keep`` keeps it),
then trains the demo's CNN for one epoch through ``MemmapSequence`` with block
shuffle and readahead and 2 worker processes. Prints samples/s, the peak anonymous
memory of the main process and of its workers (sampled from ``/proc``), the bytes
and requests read from the device (``/proc/diskstats``) and the page-cache state.
"""

from __future__ import annotations

import argparse
import os
import shutil
import sys
import tempfile
import time

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))

import _common  # noqa: E402

import memseq  # noqa: E402
from memseq import bench, demo  # noqa: E402


def total_memory_bytes() -> int:
    with open("/proc/meminfo") as f:
        return int(next(line for line in f if line.startswith("MemTotal:")).split()[1]) * 1024


def main(argv=None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--dir", default=tempfile.gettempdir())
    parser.add_argument("--size-gb", type=float, default=None, help="default: 1.1x the machine's memory")
    parser.add_argument("--batch-size", type=int, default=256)
    parser.add_argument("--keep", action="store_true")
    args = parser.parse_args(argv)

    memory = total_memory_bytes()
    size = int(args.size_gb * 1e9) if args.size_gb else int(memory * 1.1)
    row_bytes = 64 * 64 * 3 + 8
    rows = size // row_bytes
    path = os.path.join(tempfile.mkdtemp(dir=args.dir, prefix="memseq-larger-than-ram-"), "data")
    free = shutil.disk_usage(args.dir).free
    if free < size * 1.05:
        raise SystemExit(f"{args.dir}: {free / 1e9:.1f} GB free, {size / 1e9:.1f} GB needed")
    print(f"machine memory {memory / 2**30:.1f} GiB; writing {rows:,} rows ({size / 1e9:.1f} GB) to {path}", flush=True)
    try:
        start = time.perf_counter()
        demo.write_synthetic_dataset(path, rows, progress=False)
        print(f"written in {time.perf_counter() - start:.0f} s", flush=True)
        train(path, args.batch_size)
    finally:
        if not args.keep:
            shutil.rmtree(os.path.dirname(path), ignore_errors=True)
    return 0


def train(path: str, batch_size: int) -> None:
    import keras

    ds = memseq.open(path)
    paths = bench.data_files(ds)
    image = next(p for p in paths if p.endswith("image.npy"))
    device = _common.device_of(image)
    # No refill: touching 1.1x files larger than memory would exhaust it.
    cached = _common.evict(paths, refill=False)
    seq = demo.augmented_sequence_class()(ds, x="image", y="label", batch_size=batch_size, seed=0,
                                          shuffle="block", workers=2, use_multiprocessing=True)
    model = demo.build_model(keras)
    print(f"training one epoch: {seq!r}; order {seq.plan.order}; readahead {seq.readahead >> 20} MiB; "
          f"cached at start {cached:.1%}", flush=True)
    requests0, sectors0 = _common.read_counts(device)
    with demo.MemorySampler() as sampler:
        start = time.perf_counter()
        model.fit(seq, epochs=1, shuffle=False, verbose=2)
        seconds = time.perf_counter() - start
    requests1, sectors1 = _common.read_counts(device)
    nbytes = (sectors1 - sectors0) * 512
    data_bytes = sum(os.path.getsize(p) for p in paths)
    print(f"one epoch: {seq.num_rows / seconds:,.0f} samples/s ({seconds:.0f} s, {data_bytes / seconds / 1e9:.2f} GB/s of data)")
    print(f"read from {device}: {nbytes / 1e9:.1f} GB in {requests1 - requests0:,} requests "
          f"({nbytes / data_bytes:.2f}x the dataset; {(requests1 - requests0) / (nbytes / 1e9):.0f} requests/GB)")
    print(f"peak anonymous memory: main process {sampler.peak_main_kib / 1024:.0f} MiB (RssAnon), "
          f"workers {sampler.peak_children_kib / 1024:.0f} MiB, all {sampler.peak_total_kib / 1024:.0f} MiB "
          f"(Pss_Anon); up to {sampler.max_children} worker processes; "
          f"page cache holds {bench.cached_fraction(paths):.1%} of the dataset at the end")


if __name__ == "__main__":
    sys.exit(main())
