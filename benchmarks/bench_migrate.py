"""Migrating in: converting TFRecord, Parquet, Hugging Face and WebDataset data, and what it pays.

Usage:
    python benchmarks/bench_migrate.py [--dir DIR] [--size-gb 1.0 | --rows N] [--jobs 2]
                                       [--sources tfrecord,parquet,hf,webdataset] [--repeats 1] [--passes 1] [--no-fit]

Writes (once, reused if present) the same rows, 64x64x3 uint8 images and int64 labels
(about 1 GB by default), in each source's format with the source's own library:

- ``tfrecord``: 8 TFRecord files of ``tf.train.Example`` (image: raw bytes, label: int64),
  written by ``tf.io.TFRecordWriter``;
- ``parquet``: 8 Parquet files (image: nested fixed-size lists, row groups of 2,048 rows),
  written by pyarrow;
- ``hf``: a Hugging Face ``save_to_disk`` folder (image: ``Array3D``), written by ``datasets``;
- ``webdataset``: 8 tar shards (image: PNG, label: ``.cls``), written by ``webdataset.TarWriter``.

Then, for each source, every case in a fresh Python process with the source files in
the page cache:

- **read alone**: every row read and decoded to numpy by the source's own library
  (``tf.data.TFRecordDataset`` + ``tf.io.parse_example`` + ``decode_raw``; pyarrow
  ``iter_batches``; ``datasets`` ``iter(batch_size=1024)`` in numpy format;
  ``webdataset.WebDataset(...).decode("rgb8")``), rows/s;
- **memseq read**: every row read through the conversion's source (``TFRecordSource``,
  ``ArrowSource``, ``WebDatasetSource``) in the engine's pieces, nothing written, rows/s
  and its ratio to read alone: the reading part of a conversion;
- **convert**: ``memseq.convert.convert`` of the same files with ``jobs=1`` and
  ``jobs=--jobs``, rows/s, and its ratio to read alone (target >= 0.8). The source's
  library is imported before the clock starts, in both cases; the worker processes of
  ``jobs > 1`` import theirs on the clock;
- **the payoff** (unless ``--no-fit``): the tiny model (Rescaling + GlobalAveragePooling2D +
  Dense(10), batch 256) trained two epochs from the source's own pipeline with a 10,000-row
  shuffle buffer (``tf.data`` for TFRecord; ``from_generator`` over pyarrow batches for
  Parquet and over ``webdataset`` samples for WebDataset; ``Dataset.to_tf_dataset(shuffle=True)``
  for Hugging Face), and from the converted dataset with ``fit(MemmapSequence(workers=2))``;
  the second epoch is timed (the first traces and compiles). The converted datasets of all
  sources are checked to hold the same rows (equal checksums), so ``fit(seq)`` runs once.

Figures are medians over ``--repeats`` rounds (cases interleaved); ratios are ratios of medians.
With ``--passes N`` (N > 1), each read and convert case does its work N times in its
process and its figure is the median of passes 2..N: the steady-state rate, without
start-up costs (TensorFlow's first ops, ``tf.data``'s pipeline) that would dominate a
small ``--rows`` run; worker processes of ``jobs > 1`` are still started in every pass.
"""

from __future__ import annotations

import argparse
import io
import json
import os
import shutil
import statistics
import sys
import tempfile
import time

import numpy as np

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))

import _common  # noqa: E402

ROW_SHAPE, BATCH = _common.ROW_SHAPE, _common.BATCH
ROW_BYTES = int(np.prod(ROW_SHAPE)) + 8
SHARDS = 8
SHUFFLE = 10_000
SOURCES = ("tfrecord", "parquet", "hf", "webdataset")
_BLOCK = 4096  # distinct images; row i holds image i % 4096 and label i % 10


def _block() -> np.ndarray:
    return np.random.default_rng(0).integers(0, 256, (_BLOCK, *ROW_SHAPE), dtype=np.uint8)


def _shard_ranges(rows: int) -> list[tuple[int, int]]:
    step = -(-rows // SHARDS)
    return [(a, min(rows, a + step)) for a in range(0, rows, step)]


# --------------------------------------------------------------------------- building the sources


def _build_tfrecord(path: str, rows: int) -> None:
    import tensorflow as tf

    block = _block()
    for k, (a, b) in enumerate(_shard_ranges(rows)):
        with tf.io.TFRecordWriter(os.path.join(path, f"train-{k:02d}.tfrecord")) as w:
            for i in range(a, b):
                ex = tf.train.Example(features=tf.train.Features(feature={
                    "image": tf.train.Feature(bytes_list=tf.train.BytesList(value=[block[i % _BLOCK].tobytes()])),
                    "label": tf.train.Feature(int64_list=tf.train.Int64List(value=[i % 10])),
                }))
                w.write(ex.SerializeToString())


def _image_column(pa, images: np.ndarray):
    h, w, c = ROW_SHAPE
    flat = pa.array(images.reshape(-1))
    return pa.FixedSizeListArray.from_arrays(
        pa.FixedSizeListArray.from_arrays(pa.FixedSizeListArray.from_arrays(flat, c), w), h)


def _build_parquet(path: str, rows: int) -> None:
    import pyarrow as pa
    import pyarrow.parquet as pq

    block = _block()
    for k, (a, b) in enumerate(_shard_ranges(rows)):
        with pq.ParquetWriter(os.path.join(path, f"train-{k:02d}.parquet"), _parquet_schema(pa)) as w:
            for s in range(a, b, 2048):
                e = min(b, s + 2048)
                idx = np.arange(s, e)
                w.write_table(pa.table({"image": _image_column(pa, block[idx % _BLOCK]),
                                        "label": pa.array(idx % 10, pa.int64())}), row_group_size=2048)


def _parquet_schema(pa):
    h, w, c = ROW_SHAPE
    return pa.schema({"image": pa.list_(pa.list_(pa.list_(pa.uint8(), c), w), h), "label": pa.int64()})


def _build_hf(path: str, rows: int) -> None:
    import datasets

    block = _block()
    features = datasets.Features({"image": datasets.Array3D(shape=ROW_SHAPE, dtype="uint8"),
                                  "label": datasets.Value("int64")})

    def gen():
        for s in range(0, rows, 1024):
            idx = np.arange(s, min(rows, s + 1024))
            yield from ({"image": block[i % _BLOCK], "label": int(i % 10)} for i in idx)

    cache = tempfile.mkdtemp(dir=os.path.dirname(path))
    try:
        hf = datasets.Dataset.from_generator(gen, features=features, cache_dir=cache)
        hf.save_to_disk(path + ".tmp", max_shard_size="128MB")
        os.rmdir(path)
        os.rename(path + ".tmp", path)
    finally:
        shutil.rmtree(cache, ignore_errors=True)


def _build_webdataset(path: str, rows: int) -> None:
    import webdataset as wds
    from PIL import Image

    block = _block()
    pngs = []
    for image in block:
        buf = io.BytesIO()
        Image.fromarray(image).save(buf, format="PNG", compress_level=1)
        pngs.append(buf.getvalue())
    for k, (a, b) in enumerate(_shard_ranges(rows)):
        with wds.TarWriter(os.path.join(path, f"train-{k:02d}.tar")) as sink:
            for i in range(a, b):
                sink.write({"__key__": f"{i:08d}", "png": pngs[i % _BLOCK], "cls": str(i % 10).encode()})


def build(directory: str, kind: str, rows: int) -> str:
    """The folder of source ``kind`` with ``rows`` rows, written unless it is there."""
    path = os.path.join(directory, f"src-{kind}")
    marker = path + ".json"
    if os.path.isfile(marker) and json.load(open(marker)).get("rows") == rows:
        print(f"reusing {path} ({rows} rows)", file=sys.stderr, flush=True)
        return path
    shutil.rmtree(path, ignore_errors=True)
    os.makedirs(path)
    print(f"writing {rows} rows as {kind} to {path} ...", file=sys.stderr, flush=True)
    t = time.perf_counter()
    {"tfrecord": _build_tfrecord, "parquet": _build_parquet, "hf": _build_hf, "webdataset": _build_webdataset}[kind](path, rows)
    with open(marker, "w") as f:
        json.dump({"rows": rows}, f)
    print(f"  written in {time.perf_counter() - t:.1f} s", file=sys.stderr, flush=True)
    return path


# --------------------------------------------------------------------------- the cases (each in a fresh process)


def _source(kind: str, path: str):
    from memseq import convert as cv

    if kind == "tfrecord":
        return cv.TFRecordSource(path, {"image": "bytes:uint8:64,64,3", "label": "int64"})
    if kind == "webdataset":
        return cv.WebDatasetSource(path, {"image": "png", "label": "cls"})
    return cv.ArrowSource(path)


def case_read(kind: str, path: str) -> int:
    """Reads every row with the source's own library; returns the rows read."""
    n = 0
    if kind == "tfrecord":
        import tensorflow as tf

        spec = {"image": tf.io.FixedLenFeature([], tf.string), "label": tf.io.FixedLenFeature([], tf.int64)}

        def parse(records):
            ex = tf.io.parse_example(records, spec)
            return tf.reshape(tf.io.decode_raw(ex["image"], tf.uint8), (-1, *ROW_SHAPE)), ex["label"]

        files = sorted(os.path.join(path, f) for f in os.listdir(path))
        for images, labels in tf.data.TFRecordDataset(files).batch(1024).map(parse):
            n += int(images.numpy().shape[0]) + 0 * int(labels.numpy().sum())
    elif kind == "parquet":
        import pyarrow.parquet as pq

        for f in sorted(os.listdir(path)):
            for batch in pq.ParquetFile(os.path.join(path, f)).iter_batches(batch_size=1024):
                images = batch.column("image").flatten().flatten().flatten().to_numpy().reshape(-1, *ROW_SHAPE)
                labels = batch.column("label").to_numpy()
                n += len(images) + 0 * len(labels)
    elif kind == "hf":
        import datasets

        hf = datasets.load_from_disk(path).with_format("numpy")
        for batch in hf.iter(batch_size=1024):
            n += len(batch["image"]) + 0 * len(batch["label"])
    else:
        import webdataset as wds

        urls = sorted(os.path.join(path, f) for f in os.listdir(path))
        for sample in wds.WebDataset(urls, shardshuffle=False, empty_check=False).decode("rgb8").to_tuple("png", "cls"):
            n += int(sample[0].shape == ROW_SHAPE)
    return n


def case_source_read(kind: str, path: str) -> int:
    """Reads every row through memseq's source, in the engine's pieces, writing nothing; returns the rows."""
    source = _source(kind, path)
    step = max(1, 8 * 2**20 // sum(s.row_nbytes for s in source.fields.values()))
    for a in range(0, source.num_rows, step):
        source.read(a, min(source.num_rows, a + step))
    return source.num_rows


def case_convert(kind: str, path: str, dst: str, jobs: int) -> int:
    from memseq import convert as cv

    ds = cv.convert(dst, _source(kind, path), jobs=jobs, overwrite=True)
    return len(ds)


def _pipeline(kind: str, path: str):
    """The source's own training pipeline: shuffled (10,000 rows), batches of 256 (image, label)."""
    import tensorflow as tf

    sig = (tf.TensorSpec((None, *ROW_SHAPE), tf.uint8), tf.TensorSpec((None,), tf.int64))
    if kind == "tfrecord":
        spec = {"image": tf.io.FixedLenFeature([], tf.string), "label": tf.io.FixedLenFeature([], tf.int64)}

        def parse(records):
            ex = tf.io.parse_example(records, spec)
            return tf.reshape(tf.io.decode_raw(ex["image"], tf.uint8), (-1, *ROW_SHAPE)), ex["label"]

        files = sorted(os.path.join(path, f) for f in os.listdir(path))
        return (tf.data.TFRecordDataset(files).shuffle(SHUFFLE, seed=0).batch(BATCH)
                .map(parse, num_parallel_calls=tf.data.AUTOTUNE).prefetch(tf.data.AUTOTUNE))
    if kind == "hf":
        import datasets

        hf = datasets.load_from_disk(path)
        return hf.to_tf_dataset(columns="image", label_cols="label", batch_size=BATCH, shuffle=True)
    if kind == "parquet":
        import pyarrow.parquet as pq

        def gen():
            for f in sorted(os.listdir(path)):
                for batch in pq.ParquetFile(os.path.join(path, f)).iter_batches(batch_size=1024):
                    images = batch.column("image").flatten().flatten().flatten().to_numpy().reshape(-1, *ROW_SHAPE)
                    yield images, batch.column("label").to_numpy()
    else:
        import webdataset as wds

        urls = sorted(os.path.join(path, f) for f in os.listdir(path))

        def gen():
            samples = wds.WebDataset(urls, shardshuffle=False, empty_check=False).decode("rgb8").to_tuple("png", "cls")
            for images, labels in samples.batched(1024, collation_fn=lambda s: (np.stack([x[0] for x in s]),
                                                                                 np.asarray([x[1] for x in s], np.int64))):
                yield images, labels

    return (tf.data.Dataset.from_generator(gen, output_signature=sig).unbatch().shuffle(SHUFFLE, seed=0)
            .batch(BATCH).prefetch(tf.data.AUTOTUNE))


def case_fit(kind: str, path: str) -> float:
    """Trains the tiny model two epochs; returns the second epoch's seconds."""
    clock, times = _common.epoch_clock()
    model = _common.tiny_model()
    if kind == "memseq":
        import memseq

        data = memseq.MemmapSequence(path, x="image", y="label", batch_size=BATCH, seed=0, workers=2)
    else:
        data = _pipeline(kind, path)
    model.fit(data, epochs=2, verbose=0, callbacks=[clock])
    return times[-1]


_LIBRARIES = {"tfrecord": ["tensorflow"], "parquet": ["pyarrow.parquet"], "hf": ["datasets", "pyarrow"],
              "webdataset": ["webdataset", "PIL.Image"], "memseq": []}


def run_case_here(argv: list[str]) -> None:
    import importlib

    op, kind, path = argv[:3]
    # Libraries are imported before the clock starts (TensorFlow alone takes seconds), for
    # reading and converting alike; worker processes of jobs > 1 import theirs on the clock.
    for name in ["memseq.convert"] + _LIBRARIES[kind]:
        importlib.import_module(name)
    if op in ("read", "source", "convert"):
        passes = int(os.environ.get("BENCH_MIGRATE_PASSES", "1"))
        times = []
        for _ in range(passes):
            t = time.perf_counter()
            if op == "convert":
                rows = case_convert(kind, path, argv[3], int(argv[4]))
            else:
                rows = (case_read if op == "read" else case_source_read)(kind, path)
            times.append(time.perf_counter() - t)
        _common.print_result({"rows": rows, "seconds": times[0] if passes == 1 else statistics.median(times[1:])})
    else:
        _common.print_result({"seconds": case_fit(kind, path)})


# --------------------------------------------------------------------------- the parent


def main() -> None:
    if len(sys.argv) > 1 and sys.argv[1] == "--case":
        run_case_here(sys.argv[2:])
        return
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--dir", help="where the sources and datasets go (default: a temporary directory, removed)")
    parser.add_argument("--size-gb", type=float, default=1.0, help="size of each source (default 1.0)")
    parser.add_argument("--rows", type=int, help="rows per source (instead of --size-gb)")
    parser.add_argument("--jobs", type=int, default=2, help="worker processes of the second conversion (default 2)")
    parser.add_argument("--sources", default=",".join(SOURCES), help=f"which sources (default {','.join(SOURCES)})")
    parser.add_argument("--repeats", type=int, default=1, help="rounds; figures are medians (default 1)")
    parser.add_argument("--passes", type=int, default=1,
                        help="passes of each read/convert case in its process; > 1: the median of passes 2.. (default 1)")
    parser.add_argument("--no-fit", action="store_true", help="skip the training payoff")
    args = parser.parse_args()
    if args.passes < 1:
        raise SystemExit(f"--passes: at least 1. Received: {args.passes}")
    os.environ["BENCH_MIGRATE_PASSES"] = str(args.passes)  # read by each case's process
    rows = args.rows or int(args.size_gb * 1e9 / ROW_BYTES)
    kinds = [k for k in args.sources.split(",") if k]
    for k in kinds:
        if k not in SOURCES:
            raise SystemExit(f"--sources: unknown source {k!r}; choose from {', '.join(SOURCES)}")
    directory = args.dir or tempfile.mkdtemp(prefix="memseq-bench-migrate-")
    os.makedirs(directory, exist_ok=True)
    try:
        run(directory, kinds, rows, args)
    finally:
        if args.dir is None:
            shutil.rmtree(directory, ignore_errors=True)


def _walk_files(path: str) -> list[str]:
    return [os.path.join(d, f) for d, _, files in os.walk(path) for f in files]


def run(directory: str, kinds: list[str], rows: int, args: argparse.Namespace) -> None:
    import memseq

    paths = {k: build(directory, k, rows) for k in kinds}
    me = [sys.executable, os.path.abspath(__file__), "--case"]
    cases = []
    for k in kinds:
        cases += [(k, "read"), (k, "source"), (k, "convert1"), (k, f"convert{args.jobs}")]
        if not args.no_fit:
            cases.append((k, "fit"))
    if not args.no_fit:
        cases.append(("memseq", "fit"))
    dst = {k: os.path.join(directory, f"memseq-{k}") for k in kinds}

    def measure(name: str):
        k, op = name.split(":")
        if k == "memseq":
            _common.warm(_walk_files(dst[kinds[0]]))
            return _common.run_case(me + ["fit", "memseq", dst[kinds[0]]], name)
        _common.warm(_walk_files(paths[k]))
        print(f"  {name} ...", file=sys.stderr, flush=True)
        if op in ("read", "source"):
            return _common.run_case(me + [op, k, paths[k]], name)
        if op.startswith("convert"):
            return _common.run_case(me + ["convert", k, paths[k], dst[k], op[len("convert"):]], name)
        return _common.run_case(me + ["fit", k, paths[k]], name)

    names = [f"{k}:{op}" for k, op in cases]
    # Conversions first (fit(seq) needs the converted data), then the rest, each set interleaved over rounds.
    results = _common.rounds([n for n in names if "convert" in n], args.repeats, measure)
    checksums = {}
    for k in kinds:
        with memseq.open(dst[k]) as ds:
            checksums[k] = json.dumps(json.load(open(os.path.join(dst[k], "memseq.json")))["shards"])
            if len(ds) != rows or int(ds["label"][rows - 1]) != (rows - 1) % 10:
                raise SystemExit(f"{dst[k]}: the converted rows are not the source's")
    if len(set(checksums.values())) != 1:
        raise SystemExit("the converted datasets of the sources differ: " + ", ".join(kinds))
    results.update(_common.rounds([n for n in names if "convert" not in n], args.repeats, measure))
    report(kinds, rows, args, results)


def _median_rate(runs: list[dict]) -> float:
    return statistics.median(r["rows"] / r["seconds"] for r in runs)


def report(kinds: list[str], rows: int, args: argparse.Namespace, results: dict[str, list]) -> None:
    steady = f", steady state (median of passes 2..{args.passes} per case)" if args.passes > 1 else ""
    print(f"bench_migrate: {rows:,} rows of {ROW_SHAPE} uint8 + int64 label per source "
          f"({rows * ROW_BYTES / 1e9:.2f} GB of values), hot page cache, medians of {args.repeats} round(s){steady}")
    print(f"{'source':<11} {'read alone':>12} {'memseq read':>12} {'ratio':>6} {'convert j=1':>12} {'ratio':>6} "
          f"{'convert j=' + str(args.jobs):>12} {'ratio':>6}")
    for k in kinds:
        read = _median_rate(results[f"{k}:read"])
        src = _median_rate(results[f"{k}:source"])
        c1 = _median_rate(results[f"{k}:convert1"])
        cj = _median_rate(results[f"{k}:convert{args.jobs}"])
        print(f"{k:<11} {read:>10,.0f}/s {src:>10,.0f}/s {src / read:>5.2f}x {c1:>10,.0f}/s {c1 / read:>5.2f}x "
              f"{cj:>10,.0f}/s {cj / read:>5.2f}x")
    print("(memseq read: the conversion's source reading alone, nothing written; convert: reading, writing the "
          "dataset, CRC-32s, fsync and commit)")
    if args.no_fit:
        return
    seq = statistics.median(r["seconds"] for r in results["memseq:fit"])
    print(f"\none epoch of the tiny model (batch {BATCH}, second epoch timed); fit(seq) on the converted data: {seq:.1f} s")
    print(f"{'source pipeline':<40} {'epoch':>8} {'fit(seq) speedup':>17}")
    for k in kinds:
        own = statistics.median(r["seconds"] for r in results[f"{k}:fit"])
        print(f"{_PIPELINES[k]:<40} {own:>7.1f}s {own / seq:>16.2f}x")


_PIPELINES = {
    "tfrecord": "TFRecord + tf.data, shuffle(10000)",
    "parquet": "pyarrow batches -> tf.data shuffle(10000)",
    "hf": "datasets to_tf_dataset(shuffle=True)",
    "webdataset": "WebDataset -> tf.data shuffle(10000)",
}


if __name__ == "__main__":
    main()
