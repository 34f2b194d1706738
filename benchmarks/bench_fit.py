"""``model.fit(seq)`` against in-RAM arrays and the old Keras path, each case in a fresh process.

Usage:
    python benchmarks/bench_fit.py [--dir DIR] [--rows 200000] [--batches 500] [--epochs 3]
                                   [--models tiny,cnn] [--no-jax]

Builds (once, reused if present) 200,000 rows of 64x64x3 uint8 images (12 KiB rows,
2.46 GB) plus int64 labels, warms the page cache, then trains with batch 256 on the
same ``batches * 256`` rows (a fixed random subset) in every case:

- ``fit(seq)`` threads: ``MemmapSequence(workers=2)``, memseq's adapter;
- ``fit(seq)`` processes: ``workers=2, use_multiprocessing=True``;
- ``fit(seq)`` old path: the same sequence through Keras' own ``PyDatasetAdapter``
  (memseq's adapter switched off), what ``fit(seq)`` ran before;
- in-RAM arrays: ``fit(x, y, batch_size=256)`` on the same rows loaded into RAM;
- ``fit(seq.to_tf_dataset())``;
- model-only ceiling: one cached batch repeated (``from_tensors(...).repeat()``);
- one epoch per ``fit`` call (how Keras tuners and notebooks call it), ``fit(seq)``
  processes against in-RAM arrays: each call timed whole, worker start-up included.

for the tiny model (Rescaling + GlobalAveragePooling2D + Dense(10)) and the demo's
CNN; then under ``KERAS_BACKEND=jax``, ``fit(seq)`` threads and processes against
in-RAM arrays, and the per-epoch start-up of process workers after the first epoch
(median time from ``on_epoch_begin`` to the end of the epoch's first step, processes
minus in-RAM arrays, in seconds).
Every case runs in its own fresh Python process, in one run on the same data;
an epoch is timed from ``on_epoch_begin`` to ``on_epoch_end``, the first epoch
(tracing, compilation) excluded; figures are medians of the remaining epochs.
"""

from __future__ import annotations

import argparse
import os
import statistics
import sys
import tempfile
import time

import numpy as np

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))

import _common  # noqa: E402

ROW_SHAPE, BATCH = _common.ROW_SHAPE, _common.BATCH

CASES = {
    "fit(seq) threads": "seq_threads",
    "fit(seq) processes": "seq_processes",
    "fit(seq) old path (Keras PyDatasetAdapter)": "seq_old_path",
    "in-RAM numpy arrays": "ram",
    "fit(seq.to_tf_dataset())": "tfdata",
    "model-only ceiling": "ceiling",
}
PER_CALL_CASES = {
    "one epoch per fit call: fit(seq) processes": "seq_processes_per_call",
    "one epoch per fit call: in-RAM numpy arrays": "ram_per_call",
}
JAX_CASES = {
    "jax: fit(seq) threads": "seq_threads",
    "jax: fit(seq) processes": "seq_processes",
    "jax: in-RAM numpy arrays": "ram",
}


def run_case(case: str, model_kind: str, path: str, batches: int, epochs: int) -> dict[str, list[float]]:
    """Runs one case in this (fresh) process; returns its epoch times and first-step latencies, in seconds."""
    import keras

    import memseq

    rows = np.sort(np.random.default_rng(2).choice(len(memseq.open(path)), batches * BATCH, replace=False))
    times: list[float] = []
    first_batch: list[float] = []  # from on_epoch_begin to the end of the epoch's first step

    class Timer(keras.callbacks.Callback):
        def on_epoch_begin(self, epoch, logs=None):
            self.start = time.perf_counter()

        def on_train_batch_end(self, batch, logs=None):
            if batch == 0:
                first_batch.append(time.perf_counter() - self.start)

        def on_epoch_end(self, epoch, logs=None):
            times.append(time.perf_counter() - self.start)

    model = _common.make_model(model_kind)
    fit = {"epochs": epochs, "verbose": 0, "callbacks": [Timer()]}

    def sequence(**kwargs):
        return memseq.MemmapSequence(path, x="image", y="label", batch_size=BATCH, seed=0, indices=rows, **kwargs)

    if case.endswith("_per_call"):
        # One epoch per fit call, each call timed whole (worker start-up included).
        seq = sequence(workers=2, use_multiprocessing=True) if case.startswith("seq") else None
        if seq is None:
            ds = memseq.open(path)
            x, y = ds["image"][rows], ds["label"][rows]
        for epoch in range(epochs):
            start = time.perf_counter()
            if seq is not None:
                model.fit(seq, initial_epoch=epoch, epochs=epoch + 1, shuffle=False, verbose=0)
            else:
                model.fit(x, y, batch_size=BATCH, initial_epoch=epoch, epochs=epoch + 1, verbose=0)
            times.append(time.perf_counter() - start)
    elif case == "seq_threads":
        model.fit(sequence(workers=2), shuffle=False, **fit)
    elif case == "seq_processes":
        model.fit(sequence(workers=2, use_multiprocessing=True), shuffle=False, **fit)
    elif case == "seq_old_path":
        from keras.src.trainers import data_adapters

        memseq.MemmapSequence  # noqa: B018 - importing it installs memseq's adapter, undone here
        data_adapters.get_data_adapter = data_adapters.get_data_adapter.__wrapped__
        model.fit(sequence(workers=2), shuffle=False, **fit)
    elif case == "tfdata":
        model.fit(sequence().to_tf_dataset(), **fit)
    elif case in ("ram", "ceiling"):
        ds = memseq.open(path)
        x, y = ds["image"][rows], ds["label"][rows]
        if case == "ram":
            model.fit(x, y, batch_size=BATCH, **fit)
        else:
            import tensorflow as tf

            one = tf.data.Dataset.from_tensors((x[:BATCH], y[:BATCH])).repeat()
            model.fit(one, steps_per_epoch=batches, **fit)
    else:
        raise SystemExit(f"unknown case {case!r}")
    return {"epochs": times, "first_batch": first_batch}


def run(case: str, model_kind: str, args: argparse.Namespace, backend: str) -> dict[str, list[float]]:
    """``case`` in a fresh process: its epoch times and first-step latencies, the first epoch
    (tracing, compilation) excluded."""
    command = [sys.executable, __file__, "--case", case, "--model", model_kind, "--dir", args.dir,
               "--batches", str(args.batches), "--epochs", str(args.epochs)]
    result = _common.run_case(command, f"case {case} ({model_kind}, {backend})", dict(os.environ, KERAS_BACKEND=backend))
    return {key: values[1:] for key, values in result.items()}


def epoch_times(case: str, model_kind: str, args: argparse.Namespace, backend: str) -> list[float]:
    """Epoch times of ``case`` in a fresh process, the first excluded."""
    return run(case, model_kind, args, backend)["epochs"]


def rate(times: list[float], batches: int) -> float:
    """Samples/s: the median epoch."""
    return batches * BATCH / statistics.median(times)


def report(title: str, rates: dict[str, float], baseline: str, ceiling: str | None = None) -> None:
    print(f"\n{title}")
    for name, rate in rates.items():
        ratio = rate / rates[baseline]
        extra = f"   {rate / rates[ceiling]:5.2f}x ceiling" if ceiling and name != ceiling else ""
        print(f"  {name:<44} {rate:9,.0f} samples/s   {ratio:5.2f}x in-RAM{extra}")


def main(argv=None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--dir", default=os.path.join(tempfile.gettempdir(), "memseq-bench-fit"))
    parser.add_argument("--rows", type=int, default=200_000)
    parser.add_argument("--batches", type=int, default=500, help="batches per epoch (>= 500 for the issue's figures)")
    parser.add_argument("--epochs", type=int, default=3, help="epochs per case; the first is excluded")
    parser.add_argument("--models", default="tiny,cnn")
    parser.add_argument("--no-jax", action="store_true")
    parser.add_argument("--case", help=argparse.SUPPRESS)
    parser.add_argument("--model", help=argparse.SUPPRESS)
    args = parser.parse_args(argv)
    if args.case:
        _common.print_result(run_case(args.case, args.model, args.dir, args.batches, args.epochs))
        return 0

    _common.build_images(args.dir, args.rows, random_labels=True)
    _common.warm(_common.data_files(args.dir))
    print(f"dataset {args.dir}: {args.rows} rows of {ROW_SHAPE} uint8; {args.batches} batches of {BATCH} per epoch, "
          f"{args.epochs} epochs per case (first excluded); every case in a fresh process")
    for model_kind in filter(None, args.models.split(",")):
        rates = {name: rate(epoch_times(case, model_kind, args, "tensorflow"), args.batches) for name, case in CASES.items()}
        report(f"{model_kind} model, TensorFlow backend:", rates, "in-RAM numpy arrays", "model-only ceiling")
        rates = {name: rate(epoch_times(case, model_kind, args, "tensorflow"), args.batches) for name, case in PER_CALL_CASES.items()}
        report(f"{model_kind} model, TensorFlow backend, one epoch per fit call:", rates,
               "one epoch per fit call: in-RAM numpy arrays")
    if not args.no_jax:
        runs = {name: run(case, "tiny", args, "jax") for name, case in JAX_CASES.items()}
        report("tiny model, JAX backend:", {name: rate(r["epochs"], args.batches) for name, r in runs.items()},
               "jax: in-RAM numpy arrays")
        # What an epoch pays before its first step, beyond what in-RAM arrays pay: worker
        # start-up, if workers were started per epoch.
        latency = {name: statistics.median(r["first_batch"]) for name, r in runs.items()}
        overhead = latency["jax: fit(seq) processes"] - latency["jax: in-RAM numpy arrays"]
        print(f"  per-epoch start-up of process workers after the first epoch: {overhead:+.3f} s "
              f"(median time to an epoch's first step: processes {latency['jax: fit(seq) processes']:.3f} s, "
              f"in-RAM arrays {latency['jax: in-RAM numpy arrays']:.3f} s)")
    return 0


if __name__ == "__main__":
    sys.exit(main())
