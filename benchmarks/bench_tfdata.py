#!/usr/bin/env python
"""Benchmark: memseq's tf.data adapter against the usual ways to feed memmaps to TensorFlow.

One shuffled epoch of a ~2 GB dataset (64x64x3 uint8 images + int64 labels, hot page
cache), batch 256, samples/s of:

  (a) memseq     ``seq.to_tf_dataset()``, iterated in Python
  (b) generator  the seed article: ``tf.data.Dataset.from_generator`` over an
                 ``np.memmap`` with a per-epoch ``np.random`` permutation, yielding
                 ``mm[np.sort(perm[i*bs:(i+1)*bs])]`` (plus ``prefetch``)
  (c) keras      Keras' own PyDataset -> tf.data path (``PyDatasetAdapter`` over a
                 MemmapSequence with ``workers=2``, threads), epochs begun and ended
                 as ``fit`` does
  (d) numpy      ``seq.get_batch(i)`` in a plain Python loop, no TensorFlow dataset

and ``model.fit(seq.to_tf_dataset())`` for a tiny model against the model-only ceiling
(the same model fitted on one cached batch repeated).

Every approach runs in its own fresh subprocess (TensorFlow's ``from_generator`` sets
glibc malloc's mmap threshold process-wide, which slows numpy afterwards: the
generator worker also times the numpy loop after it, reported as (d')). Rounds of
subprocesses are interleaved so that noise from other work on the machine hits every
approach alike; the table shows medians over all timed passes.

Usage::

    flock /tmp/memseq-bench.lock python benchmarks/bench_tfdata.py [--dir DIR] [--rounds 3]
"""

from __future__ import annotations

import argparse
import os
import platform
import statistics
import sys
import tempfile
import time

import numpy as np

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))

import _common  # noqa: E402

DEFAULT_DIR = os.path.join(tempfile.gettempdir(), "memseq-bench-tfdata")
ROW_SHAPE = _common.ROW_SHAPE
APPROACHES = ("memseq", "generator", "keras", "numpy")
TARGETS = {  # (numerator, denominator, minimum ratio)
    "memseq / generator": ("memseq", "generator", 5.0),
    "memseq / keras": ("memseq", "keras", 2.0),
    "memseq / numpy": ("memseq", "numpy", 0.8),
    "fit(memseq) / fit(ceiling)": ("fit_memseq", "fit_ceiling", 0.85),
}


def parse_args(argv: list[str] | None = None) -> argparse.Namespace:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--dir", default=DEFAULT_DIR, help=f"dataset directory, built if missing (default {DEFAULT_DIR})")
    p.add_argument("--rows", type=int, default=163_840, help="rows of 64x64x3 uint8 (default 163840, ~2.0 GB)")
    p.add_argument("--batch-size", type=int, default=256)
    p.add_argument("--rounds", type=int, default=3, help="interleaved rounds of one subprocess per approach")
    p.add_argument("--passes", type=int, default=2, help="timed epochs per subprocess")
    p.add_argument("--fit-epochs", type=int, default=3, help="timed fit epochs per model (0 skips the fit part)")
    p.add_argument("--only", choices=APPROACHES, action="append", help="run only these approaches")
    p.add_argument("--worker", help=argparse.SUPPRESS)
    return p.parse_args(argv)


# -- workers (each in its own process)


def _sequence(args, **kwargs):
    import memseq

    return memseq.MemmapSequence(args.dir, x="image", y="label", batch_size=args.batch_size, seed=0, **kwargs)


def _iterate(ds) -> int:
    samples = 0
    for _x, y in ds:
        samples += int(y.shape[0])
    return samples


def _numpy_loop(seq, epoch: int) -> int:
    samples = 0
    for i in range(len(seq)):
        _x, y = seq.get_batch(i, epoch)
        samples += len(y)
    return samples


def _timed(fn) -> float:
    t = time.perf_counter()
    samples = fn()
    return samples / (time.perf_counter() - t)


def _worker_numpy(args) -> dict:
    """(d): no TensorFlow dataset in this process."""
    seq = _sequence(args)
    _numpy_loop(seq, 99)  # warm-up
    return {"numpy": [_timed(lambda e=e: _numpy_loop(seq, e)) for e in range(args.passes)]}


def _worker_memseq(args) -> dict:
    ds = _sequence(args).to_tf_dataset()
    for _ in ds.take(20):  # warm-up: traces the functions, starts the threads
        pass
    return {"memseq": [_timed(lambda: _iterate(ds)) for _ in range(args.passes)]}


def _worker_generator(args) -> dict:
    import tensorflow as tf

    image = np.load(os.path.join(args.dir, "image.npy"), mmap_mode="r")
    label = np.load(os.path.join(args.dir, "label.npy"), mmap_mode="r")
    bs, n = args.batch_size, len(image)

    def gen():
        perm = np.random.permutation(n)
        for i in range(-(-n // bs)):
            idx = np.sort(perm[i * bs : (i + 1) * bs])
            yield image[idx], label[idx]

    ds = tf.data.Dataset.from_generator(
        gen,
        output_signature=(
            tf.TensorSpec((None, *ROW_SHAPE), tf.uint8),
            tf.TensorSpec((None,), tf.int64),
        ),
    ).prefetch(tf.data.AUTOTUNE)
    for _ in ds.take(20):
        pass
    out = {"generator": [_timed(lambda: _iterate(ds)) for _ in range(args.passes)]}
    # The same numpy loop as (d), now in a process that made a from_generator dataset.
    seq = _sequence(args)
    out["numpy_after_generator"] = [_timed(lambda e=e: _numpy_loop(seq, e)) for e in range(args.passes)]
    return out


def _worker_keras(args) -> dict:
    from keras.src.trainers.data_adapters.py_dataset_adapter import PyDatasetAdapter

    adapter = PyDatasetAdapter(_sequence(args, workers=2), shuffle=False)
    ds = adapter.get_tf_dataset()

    def epoch() -> int:
        adapter.on_epoch_begin()
        try:
            return _iterate(ds)
        finally:
            adapter.on_epoch_end()

    epoch()  # warm-up epoch
    return {"keras": [_timed(epoch) for _ in range(args.passes)]}


def _worker_fit(args) -> dict:
    import keras
    import tensorflow as tf

    seq = _sequence(args)
    x0, y0 = seq.get_batch(0, 0)

    def make_model():
        keras.utils.set_random_seed(0)
        return _common.tiny_model()

    inputs = {
        "fit_memseq": seq.to_tf_dataset(),
        # The model-only ceiling: one batch, already in memory, repeated.
        "fit_ceiling": tf.data.Dataset.from_tensors((x0, y0)).repeat(len(seq)),
    }
    models = {key: make_model() for key in inputs}
    for key, ds in inputs.items():  # warm-up: trace and build
        models[key].fit(ds.take(10), epochs=1, verbose=0, shuffle=False)
    out: dict = {key: [] for key in inputs}
    for _ in range(args.fit_epochs):
        for key, ds in inputs.items():
            t = time.perf_counter()
            models[key].fit(ds, epochs=1, verbose=0, shuffle=False)
            out[key].append(seq.num_rows / (time.perf_counter() - t))
    return out


WORKERS = {"numpy": _worker_numpy, "memseq": _worker_memseq, "generator": _worker_generator,
           "keras": _worker_keras, "fit": _worker_fit}


def worker(args) -> dict:
    if args.worker not in WORKERS:
        raise SystemExit(f"unknown worker {args.worker!r}")
    return WORKERS[args.worker](args)


def run_worker(args, name: str) -> dict:
    cmd = [sys.executable, os.path.abspath(__file__), "--worker", name, "--dir", args.dir, "--rows", str(args.rows),
           "--batch-size", str(args.batch_size), "--passes", str(args.passes), "--fit-epochs", str(args.fit_epochs)]
    env = dict(os.environ, TF_CPP_MIN_LOG_LEVEL="2", CUDA_VISIBLE_DEVICES="-1")
    return _common.run_case(cmd, f"worker {name}", env, timeout=1800)


# -- report


def main(argv: list[str] | None = None) -> int:
    args = parse_args(argv)
    if args.worker:
        _common.print_result(worker(args))
        return 0

    _common.build_images(args.dir, args.rows, random_labels=True)
    gb = _common.warm(_common.data_files(args.dir)) / 1e9
    approaches = args.only or list(APPROACHES)
    load_before = os.getloadavg()
    results: dict[str, list[float]] = {}
    t0 = time.perf_counter()
    # Rounds of one subprocess per approach, the order turning each round so no approach always runs first.
    for runs in _common.rounds(approaches, args.rounds, lambda name: run_worker(args, name)).values():
        for out in runs:
            for key, values in out.items():
                results.setdefault(key, []).extend(values)
    if args.fit_epochs > 0 and not args.only:
        for key, values in run_worker(args, "fit").items():
            results.setdefault(key, []).extend(values)
    elapsed = time.perf_counter() - t0

    os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "2")
    import keras
    import tensorflow as tf

    print()
    print(
        f"memseq tf.data benchmark: {args.rows} rows x {ROW_SHAPE} uint8 + int64 label ({gb:.2f} GB, hot page cache), "
        f"batch {args.batch_size}, shuffled"
    )
    print(
        f"python {platform.python_version()}, numpy {np.__version__}, tensorflow {tf.__version__}, keras {keras.__version__}, "
        f"{os.cpu_count()} CPUs, load average {load_before[0]:.2f} before / {os.getloadavg()[0]:.2f} after, "
        f"{args.rounds} rounds x {args.passes} passes, {elapsed:.0f} s"
    )
    labels = {
        "memseq": "(a) seq.to_tf_dataset()",
        "generator": "(b) from_generator over np.memmap (seed article)",
        "keras": "(c) Keras PyDatasetAdapter, workers=2",
        "numpy": "(d) numpy loop, seq.get_batch (own process)",
        "numpy_after_generator": "(d') numpy loop after a from_generator dataset",
        "fit_memseq": "fit(seq.to_tf_dataset()), tiny model",
        "fit_ceiling": "fit(one cached batch repeated), same model",
    }
    print()
    print(f"{'':52s} {'median samples/s':>16s} {'batches/s':>10s}   all passes (k samples/s)")
    for key, label in labels.items():
        if key in results:
            values = results[key]
            med = statistics.median(values)
            print(
                f"{label:52s} {med:16,.0f} {med / args.batch_size:10,.0f}   "
                + " ".join(f"{v / 1e3:.0f}" for v in values)
            )
    print()
    print(f"{'ratio':32s} {'value':>7s} {'target':>8s}")
    for label, (num, den, minimum) in TARGETS.items():
        if num in results and den in results:
            ratio = statistics.median(results[num]) / statistics.median(results[den])
            ok = ratio >= minimum
            print(f"{label:32s} {ratio:7.2f} {'>= ' + str(minimum):>8s}  {'met' if ok else 'MISSED'}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
