"""Grain over memseq, against memseq's own ``seq[i]``, measured in the same run.

Usage:
    python benchmarks/bench_grain.py [--dir DIR] [--size-gb 0.5] [--repeats 5]

Builds (once, reused if present) a dataset of 64x64x3 uint8 images (12 KiB rows)
and int64 labels, warms the page cache (hot cache), then measures samples/s with
batches of 256 shuffled rows:

- ``seq[i]``: memseq's MemmapSequence in the main thread (the reference);
- ``grain records / memmap``: the obvious Grain pipeline,
  ``grain.MapDataset.source(src).shuffle(seed=0).batch(256)`` iterated, over a
  plain ``{field: np.load(mmap_mode="r")[i]}`` source;
- ``grain records / ds.records()``: the same pipeline over ``ds.records()``;
- ``seq.to_grain() main thread``: ``seq.to_grain()[k]`` in the main thread;
- ``seq.to_grain() DataLoader 2 proc``: ``grain.DataLoader`` over ``seq.to_grain()``
  with 2 worker processes (steady state: worker start-up excluded).

Each case runs in a fresh process (``--case``); each figure is the median of
``--repeats`` timings. Targets: ``to_grain`` >= 0.9x ``seq[i]`` and >= 20x the record pipeline.
"""

from __future__ import annotations

import argparse
import os
import statistics
import sys
import tempfile
import time

os.environ.setdefault("KERAS_BACKEND", "jax")  # no TensorFlow: its malloc tuning slows numpy (DESIGN.md)

import numpy as np  # noqa: E402

import memseq  # noqa: E402

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
import _common  # noqa: E402

ROW_SHAPE, BATCH = _common.ROW_SHAPE, _common.BATCH
CASES = {
    "seq": "seq[i]",
    "grain_memmap": "grain records / memmap",
    "grain_records": "grain records / ds.records()",
    "to_grain": "seq.to_grain() main thread",
    "to_grain_loader": "seq.to_grain() DataLoader 2 proc",
}


class MemmapRecords:
    """The plain record source a Grain user writes first: np.load(mmap_mode="r") per field."""

    def __init__(self, path: str):
        self.path = path
        self.arrays = {name: np.load(os.path.join(path, f"{name}.npy"), mmap_mode="r") for name in ("image", "label")}

    def __len__(self) -> int:
        return len(self.arrays["label"])

    def __getitem__(self, i):
        return {name: a[i] for name, a in self.arrays.items()}

    def __reduce__(self):
        return (MemmapRecords, (self.path,))


def _time_batches(next_batch, batches: int, repeats: int, warmup: int = 3) -> list[float]:
    for _ in range(warmup):
        next_batch()
    rates = []
    for _ in range(repeats):
        t = time.perf_counter()
        for _ in range(batches):
            next_batch()
        rates.append(batches * BATCH / (time.perf_counter() - t))
    return rates


def run_case(case: str, path: str, repeats: int) -> list[float]:
    ds = memseq.open(path)
    _common.warm(_common.data_files(path))
    seq = memseq.MemmapSequence(ds, x="image", y="label", batch_size=BATCH, seed=0)
    n = len(seq)
    if case == "seq":
        counter = iter(range(10**9))
        return _time_batches(lambda: seq[next(counter) % n], 300, repeats)
    import grain

    if case in ("grain_memmap", "grain_records"):
        source = MemmapRecords(path) if case == "grain_memmap" else ds.records()
        iterator = iter(grain.MapDataset.source(source).shuffle(seed=0).batch(BATCH).repeat())
        return _time_batches(lambda: next(iterator), 30, repeats)
    if case == "to_grain":
        dataset = seq.to_grain()
        counter = iter(range(10**9))
        return _time_batches(lambda: dataset[next(counter)], 300, repeats)
    if case == "to_grain_loader":
        from absl import flags

        flags.FLAGS.mark_as_parsed()  # grain 0.2.18's DataLoader reads absl flags
        dataset = seq.to_grain()
        loader = grain.DataLoader(
            data_source=dataset,
            sampler=grain.samplers.IndexSampler(num_records=10**7, shuffle=False, num_epochs=1),
            worker_count=2,
        )
        iterator = iter(loader)
        return _time_batches(lambda: next(iterator), 300, repeats, warmup=30)
    raise SystemExit(f"unknown case {case!r}")


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--dir", default=os.path.join(tempfile.gettempdir(), "memseq-bench-grain"))
    parser.add_argument("--size-gb", type=float, default=0.5)
    parser.add_argument("--repeats", type=int, default=5)
    parser.add_argument("--case", choices=sorted(CASES), help=argparse.SUPPRESS)
    args = parser.parse_args()
    path = os.path.join(args.dir, "data")
    if args.case:
        _common.print_result(run_case(args.case, path, args.repeats))
        return
    _common.build_images(path, int(args.size_gb * 1e9) // int(np.prod(ROW_SHAPE)))
    results = {}
    for case, label in CASES.items():
        out = _common.run_case([sys.executable, __file__, "--dir", args.dir, "--repeats", str(args.repeats), "--case", case],
                               label, check=False)
        if out is not None:
            results[case] = statistics.median(out)
    print(f"bench_grain: {args.size_gb} GB of 12 KiB rows, hot cache, batch {BATCH}, median of {args.repeats}")
    base, records = results.get("seq"), results.get("grain_memmap")
    for case, rate in results.items():
        ratio = f"{rate / base:6.2f}x seq[i]" if base else ""
        vs_records = f"{rate / records:7.1f}x grain records/memmap" if records else ""
        print(f"  {CASES[case]:36s} {rate:>10,.0f} samples/s  {ratio}  {vs_records}")
    if base and records:
        for case in ("to_grain", "to_grain_loader"):
            if case in results:
                ok = results[case] >= 0.9 * base and results[case] >= 20 * records
                print(f"  target {CASES[case]}: >= 0.9x seq[i] and >= 20x records: {'met' if ok else 'NOT met'}")


if __name__ == "__main__":
    main()
