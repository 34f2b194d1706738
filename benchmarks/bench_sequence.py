"""How fast MemmapSequence serves and trains, against baselines measured in the same run.

Usage:
    python benchmarks/bench_sequence.py [--dir DIR] [--size-gb 2] [--batches 200]

Builds (once, reused if present) a dataset of 64x64x3 uint8 images (12 KiB rows) and
int64 labels, warms the page cache, then measures with batch 256 of shuffled rows:

1. ``seq[i]`` throughput (GB/s) versus ``np.copyto`` of the same bytes (memory
   bandwidth) and versus a naive PyDataset doing ``memmap[perm[batch]]``;
2. ``model.fit`` throughput (samples/s) of a tiny model (Rescaling +
   GlobalAveragePooling2D + Dense(10)) fed by: MemmapSequence (2 worker threads),
   the same rows as in-RAM numpy arrays, the model-only ceiling (one cached batch
   repeated), and the naive PyDataset (2 worker threads).

Every figure is the median of several repeats; ratios are of medians.
"""

from __future__ import annotations

import argparse
import os
import statistics
import sys
import tempfile
import time

import numpy as np

import memseq

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
import _common  # noqa: E402

ROW_SHAPE, BATCH = _common.ROW_SHAPE, _common.BATCH


def naive_pydataset(ds: memseq.Dataset, rows: np.ndarray | None = None, **kwargs):
    """What users hand-roll: a permutation and fancy indexing on np.load(mmap_mode="r")."""
    import keras

    paths = {name: os.path.join(ds.path, ds.manifest.shards[0].files[name].path) for name in ("image", "label")}

    class NaivePyDataset(keras.utils.PyDataset):
        def __init__(self):
            super().__init__(**kwargs)
            self.x = np.load(paths["image"], mmap_mode="r")
            self.y = np.load(paths["label"], mmap_mode="r")
            rng = np.random.default_rng(0)
            self.perm = rng.permutation(len(self.x)) if rows is None else rng.permutation(rows)

        def __len__(self):
            return len(self.perm) // BATCH

        def __getitem__(self, i):
            idx = self.perm[i * BATCH : (i + 1) * BATCH]
            return self.x[idx], self.y[idx]

    return NaivePyDataset()


def bench_getitem(ds: memseq.Dataset, batches: int, repeats: int) -> dict[str, float]:
    seq = memseq.MemmapSequence(ds, x="image", y="label", batch_size=BATCH, seed=0)
    naive = naive_pydataset(ds)
    nbytes = BATCH * (int(np.prod(ROW_SHAPE)) + 8)
    # The source is far larger than the CPU caches, as the dataset is: memcpy then
    # measures memory bandwidth, the ceiling of any gather from the page cache.
    slots = (1 << 30) // nbytes
    src = np.random.default_rng(1).integers(0, 256, nbytes * slots, dtype=np.uint8)
    dst = np.empty(nbytes, np.uint8)

    def rate_of(dataset):
        start = np.random.default_rng().integers(0, len(dataset) - batches)
        t = time.perf_counter()
        for i in range(start, start + batches):
            dataset[i]
        return batches * nbytes / (time.perf_counter() - t) / 1e9

    def rate_memcpy():
        t = time.perf_counter()
        for k in np.random.default_rng().integers(0, slots, batches):
            np.copyto(dst, src[k * nbytes : (k + 1) * nbytes])
        return batches * nbytes / (time.perf_counter() - t) / 1e9

    rates = {"memcpy": [], "seq[i]": [], "naive": []}
    for _ in range(repeats):  # interleaved, so drift in machine load hits all alike
        rates["memcpy"].append(rate_memcpy())
        rates["seq[i]"].append(rate_of(seq))
        rates["naive"].append(rate_of(naive))
    return {k: statistics.median(v) for k, v in rates.items()}


def fit_rate(make_fit, epochs: int) -> float:
    """Samples/s of fit, median over epochs after the first (which compiles)."""
    import keras

    times = []

    class Timer(keras.callbacks.Callback):
        def on_epoch_begin(self, epoch, logs=None):
            self.t = time.perf_counter()

        def on_epoch_end(self, epoch, logs=None):
            times.append(time.perf_counter() - self.t)

    samples = make_fit(Timer(), epochs)
    return samples / statistics.median(times[1:])


def bench_fit(ds: memseq.Dataset, batches: int, epochs: int) -> dict[str, float]:
    import tensorflow as tf

    rows = np.sort(np.random.default_rng(2).choice(len(ds), batches * BATCH, replace=False))

    def memseq_fit(cb, epochs):
        seq = memseq.MemmapSequence(ds, x="image", y="label", batch_size=BATCH, seed=0, indices=rows, workers=2)
        _common.tiny_model().fit(seq, epochs=epochs, shuffle=False, verbose=0, callbacks=[cb])
        return len(rows)

    def memseq_tfdata_fit(cb, epochs):
        seq = memseq.MemmapSequence(ds, x="image", y="label", batch_size=BATCH, seed=0, indices=rows)
        _common.tiny_model().fit(seq.to_tf_dataset(), epochs=epochs, verbose=0, callbacks=[cb])
        return len(rows)

    x_ram = ds["image"][:]
    y_ram = ds["label"][:]

    def ram_fit(cb, epochs):
        _common.tiny_model().fit(x_ram, y_ram, batch_size=BATCH, steps_per_epoch=batches, epochs=epochs, verbose=0, callbacks=[cb])
        return len(rows)

    def ceiling_fit(cb, epochs):
        one = tf.data.Dataset.from_tensors((x_ram[:BATCH], y_ram[:BATCH])).repeat()
        _common.tiny_model().fit(one, steps_per_epoch=batches, epochs=epochs, verbose=0, callbacks=[cb])
        return len(rows)

    def naive_fit(cb, epochs):
        _common.tiny_model().fit(naive_pydataset(ds, rows, workers=2), epochs=epochs, shuffle=False, verbose=0, callbacks=[cb])
        return len(rows)

    results = {
        "MemmapSequence workers=2": [],
        "in-RAM numpy arrays": [],
        "model-only ceiling": [],
        "naive PyDataset workers=2": [],
        "seq.to_tf_dataset()": [],
    }
    fns = [memseq_fit, ram_fit, ceiling_fit, naive_fit, memseq_tfdata_fit]
    for _ in range(2):
        for name, fn in zip(results, fns):
            results[name].append(fit_rate(fn, epochs))
    return {k: statistics.median(v) for k, v in results.items()}


def main(argv=None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--dir", default=os.path.join(tempfile.gettempdir(), "memseq-bench-2gb"))
    parser.add_argument("--size-gb", type=float, default=2.0)
    parser.add_argument("--batches", type=int, default=200, help="batches per measurement")
    parser.add_argument("--repeats", type=int, default=5)
    parser.add_argument("--epochs", type=int, default=3, help="fit epochs per measurement (first is warm-up)")
    parser.add_argument("--skip-fit", action="store_true")
    args = parser.parse_args(argv)

    ds = _common.build_images(args.dir, int(args.size_gb * 1e9) // int(np.prod(ROW_SHAPE)))
    _common.warm(_common.data_files(args.dir))
    print(f"dataset: {ds}")
    g = bench_getitem(ds, args.batches, args.repeats)
    print(f"\nseq[i], batch {BATCH}, shuffled, hot cache (median of {args.repeats}):")
    for name, rate in g.items():
        print(f"  {name:<28} {rate:7.2f} GB/s")
    print(f"  seq[i] / memcpy            {g['seq[i]'] / g['memcpy']:7.2f}x   (target >= 0.6)")
    print(f"  seq[i] / naive PyDataset   {g['seq[i]'] / g['naive']:7.2f}x   (target >= 1.0)")
    if args.skip_fit:
        return 0
    f = bench_fit(ds, args.batches, args.epochs)
    print(f"\nmodel.fit, tiny model, batch {BATCH}, {args.batches} batches/epoch (median):")
    for name, rate in f.items():
        print(f"  {name:<28} {rate:9.0f} samples/s")
    base = f["in-RAM numpy arrays"]
    print(f"  MemmapSequence / in-RAM    {f['MemmapSequence workers=2'] / base:7.2f}x   (target >= 0.9)")
    print(f"  naive / in-RAM             {f['naive PyDataset workers=2'] / base:7.2f}x")
    print(f"  to_tf_dataset / in-RAM     {f['seq.to_tf_dataset()'] / base:7.2f}x")
    print(f"  to_tf_dataset / ceiling    {f['seq.to_tf_dataset()'] / f['model-only ceiling']:7.2f}x")
    print(f"  in-RAM / ceiling           {base / f['model-only ceiling']:7.2f}x")
    return 0


if __name__ == "__main__":
    sys.exit(main())
