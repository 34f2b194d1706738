"""How fast memseq serves variable-length rows, against baselines measured in the same run.

Usage:
    python benchmarks/bench_ragged.py [--dir DIR] [--size-gb 2] [--batch 64]
                                      [--batches 200] [--repeats 5] [--keep]

Builds (once; reused when present with the right size) a dataset of uint16 token rows
whose lengths follow a long-tailed (log-normal) distribution with mean ~512 tokens,
plus an int64 label per row, warms the page cache, then measures on a hot cache, with
the same batches of shuffled rows (ascending inside a batch, as MemmapSequence reads):

a. memseq's ragged gather, ``RaggedColumn.gather(rows)`` (values concatenated, and
   lengths), against a hand-written numpy offsets gather over ``np.load(mmap_mode="r")``
   of the same files: ``np.concatenate([values[a:b] for a, b in zip(starts, stops)])``.
   Target: >= 1.0x.
b. memseq's padded batches (``MemmapSequence.get_fields``: tokens padded to the batch's
   longest row, plus the mask), for reference.
c. memseq's ``to_tf_dataset()`` (padded tokens, mask, label) against
   ``tf.data.Dataset.from_generator`` over the same files yielding rows, then
   ``padded_batch`` (the usual tf.data recipe). Target: >= 5x. Measured last: creating a
   ``from_generator`` dataset changes malloc settings for the whole process (DESIGN.md).
d. The padding fraction of a full shuffle and of ``memseq.LengthBuckets``.

Figures are medians over ``--repeats`` runs; ratios are ratios of medians.
"""

from __future__ import annotations

import argparse
import os
import shutil
import statistics
import sys
import tempfile
import time

import numpy as np

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))

import _common  # noqa: E402

import memseq  # noqa: E402

MEAN_LENGTH = 512
SIGMA = 1.0  # log-normal shape: a long tail (p99 ~ 5x the mean)
MAX_LENGTH = 32768


def lengths_for(num_tokens: int, seed: int = 0) -> np.ndarray:
    rng = np.random.default_rng(seed)
    mu = np.log(MEAN_LENGTH) - SIGMA**2 / 2
    n = int(num_tokens / MEAN_LENGTH * 1.05)
    lengths = np.clip(rng.lognormal(mu, SIGMA, n), 1, MAX_LENGTH).astype(np.int64)
    keep = np.searchsorted(np.cumsum(lengths), num_tokens)
    return lengths[: max(1, keep)]


def build(path: str, size_gb: float) -> memseq.Dataset:
    num_tokens = int(size_gb * 2**30 / 2)
    lengths = lengths_for(num_tokens)
    try:
        ds = memseq.open(path)
        if len(ds) == len(lengths) and np.array_equal(ds["tokens"].lengths, lengths):
            print(f"reusing {path} ({len(ds)} rows)", flush=True)
            return ds
    except memseq.MemseqError:
        pass
    print(f"writing {path}: {len(lengths)} rows, {lengths.sum() * 2 / 2**30:.2f} GiB of tokens ...", flush=True)
    rng = np.random.default_rng(1)
    t = time.perf_counter()
    with memseq.Writer(path, fields={"tokens": ("uint16", (None,)), "label": ("int64", ())}, overwrite=True) as w:
        for a in range(0, len(lengths), 20_000):
            chunk = lengths[a : a + 20_000]
            flat = rng.integers(0, 50257, int(chunk.sum()), dtype=np.uint16)
            rows = np.split(flat, np.cumsum(chunk)[:-1])
            w.append({"tokens": rows, "label": np.arange(a, a + len(chunk))})
    print(f"  written in {time.perf_counter() - t:.1f} s", flush=True)
    return memseq.open(path)


def batches_of(num_rows: int, batch: int, count: int, seed: int) -> list[np.ndarray]:
    rng = np.random.default_rng(seed)
    perm = rng.permutation(num_rows)[: batch * count]
    return [np.sort(perm[i * batch : (i + 1) * batch]) for i in range(count)]


def timed(fn, batches: list, repeats: int) -> float:
    """Median batches per second of ``fn(batch)`` over ``repeats`` passes over ``batches``."""
    rates = []
    for _ in range(repeats):
        t = time.perf_counter()
        for rows in batches:
            fn(rows)
        rates.append(len(batches) / (time.perf_counter() - t))
    return statistics.median(rates)


def gathers(ds: memseq.Dataset, path: str, batches: list[np.ndarray], repeats: int) -> dict[str, float]:
    column = ds["tokens"]
    values = np.load(os.path.join(path, "tokens.npy"), mmap_mode="r")
    offsets = np.load(os.path.join(path, "tokens.offsets.npy"), mmap_mode="r")

    def numpy_gather(rows: np.ndarray) -> np.ndarray:
        starts, stops = offsets[rows], offsets[rows + 1]
        return np.concatenate([values[a:b] for a, b in zip(starts, stops)])

    # Same bytes out of both.
    got, _ = column.gather(batches[0])
    assert np.array_equal(got, numpy_gather(batches[0]))
    seq = memseq.MemmapSequence(ds, x=["tokens", "tokens:mask"], y="label", batch_size=len(batches[0]), seed=0)
    rates = {}
    for _ in range(2):  # interleaved turns: drift of the machine hits both alike
        rates.setdefault("numpy", []).append(timed(numpy_gather, batches, repeats))
        rates.setdefault("memseq", []).append(timed(column.gather, batches, repeats))
    rates["padded"] = [timed(lambda i: seq.get_fields(i, 0), list(range(len(batches))), repeats)]
    return {name: max(r) for name, r in rates.items()}


def tf_pipelines(ds: memseq.Dataset, path: str, batch: int, count: int, repeats: int) -> dict[str, float]:
    import tensorflow as tf

    seq = memseq.MemmapSequence(ds, x=["tokens", "tokens:mask"], y="label", batch_size=batch, seed=0,
                                indices=np.arange(batch * count))
    memseq_ds = seq.to_tf_dataset()
    values = np.load(os.path.join(path, "tokens.npy"), mmap_mode="r")
    offsets = np.load(os.path.join(path, "tokens.offsets.npy"), mmap_mode="r")
    labels = np.load(os.path.join(path, "label.npy"), mmap_mode="r")
    order = np.random.default_rng(0).permutation(batch * count)

    def rows():
        for i in order:
            yield np.asarray(values[offsets[i] : offsets[i + 1]]), labels[i]

    gen_ds = tf.data.Dataset.from_generator(
        rows, output_signature=(tf.TensorSpec((None,), tf.uint16), tf.TensorSpec((), tf.int64))
    ).padded_batch(batch).prefetch(tf.data.AUTOTUNE)

    def rate(dataset) -> float:
        runs = []
        for _ in range(repeats):
            t = time.perf_counter()
            n = sum(1 for _ in dataset)
            runs.append(n / (time.perf_counter() - t))
        return statistics.median(runs)

    rate(memseq_ds)  # warm-up: traces the pipeline
    return {"to_tf_dataset": rate(memseq_ds), "from_generator": rate(gen_ds)}


def padding(ds: memseq.Dataset, batch: int) -> dict[str, float]:
    lengths = ds["tokens"].lengths
    out = {}
    for name, shuffle in {"full shuffle": True, "LengthBuckets(64)": memseq.LengthBuckets(lengths, 64)}.items():
        seq = memseq.MemmapSequence(ds, x="tokens", batch_size=batch, seed=0, shuffle=shuffle)
        out[name] = memseq.padding_fraction(lengths, [seq.batch_rows(i) for i in range(len(seq))])
    return out


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--dir", default=None, help="where to build the dataset (default: a temp dir, removed after)")
    parser.add_argument("--size-gb", type=float, default=2.0)
    parser.add_argument("--batch", type=int, default=64)
    parser.add_argument("--batches", type=int, default=200)
    parser.add_argument("--repeats", type=int, default=5)
    parser.add_argument("--keep", action="store_true", help="keep the dataset directory")
    args = parser.parse_args()
    root = args.dir or tempfile.mkdtemp(prefix="bench_ragged_")
    path = os.path.join(root, "tokens_ds")
    print(f"python {sys.version.split()[0]}, numpy {np.__version__}, memseq {memseq.__version__}, {os.cpu_count()} CPUs")
    try:
        ds = build(path, args.size_gb)
        lengths = ds["tokens"].lengths
        print(f"{len(ds)} rows, {ds['tokens'].num_values * 2 / 2**30:.2f} GiB; lengths mean {lengths.mean():.0f}, "
              f"median {np.median(lengths):.0f}, p99 {np.percentile(lengths, 99):.0f}, max {lengths.max()}", flush=True)
        _common.warm(_common.data_files(path))
        batches = batches_of(len(ds), args.batch, args.batches, seed=2)
        g = gathers(ds, path, batches, args.repeats)
        mb = np.mean([lengths[b].sum() * 2 for b in batches]) / 2**20
        print(f"\nhot cache, batches of {args.batch} shuffled rows (~{mb:.2f} MiB of tokens each):")
        print(f"  a. memseq RaggedColumn.gather  {g['memseq']:9.0f} batches/s")
        print(f"     numpy offsets gather        {g['numpy']:9.0f} batches/s")
        print(f"     ratio                       {g['memseq'] / g['numpy']:9.2f}x   (target >= 1.0x)")
        print(f"  b. memseq padded batch + mask  {g['padded']:9.0f} batches/s")
        fractions = padding(ds, args.batch)
        t = tf_pipelines(ds, path, args.batch, args.batches, max(1, args.repeats // 2))
        print(f"  c. memseq to_tf_dataset        {t['to_tf_dataset']:9.0f} batches/s")
        print(f"     from_generator+padded_batch {t['from_generator']:9.0f} batches/s")
        print(f"     ratio                       {t['to_tf_dataset'] / t['from_generator']:9.2f}x   (target >= 5x)")
        print("  d. padding fraction: " + ", ".join(f"{k} {v:.1%}" for k, v in fractions.items()))
    finally:
        if not args.keep and args.dir is None:
            shutil.rmtree(root, ignore_errors=True)


if __name__ == "__main__":
    main()
