"""The ``memseq`` command: info, verify, convert, bench, demo.

Run ``memseq --help`` or ``python -m memseq --help``; every subcommand has its own
``--help``. :func:`main` takes the arguments as a list and returns the exit code
(0 on success, 1 on an error, 2 on a usage error, 130 on Ctrl-C); errors are printed
as one line, ``memseq: error: ...``, without a traceback (``--traceback`` shows it).

TensorFlow and Keras are imported only by ``bench`` and ``demo``.
"""

from __future__ import annotations

import argparse
import ctypes
import gc
import json
import mmap
import os
import sys
import time
from collections.abc import Callable, Sequence
from typing import Any

import numpy as np

from memseq.errors import MemseqError, SchemaError

__all__ = ["main", "build_parser", "drop_page_cache", "cached_fraction", "run_bench"]

_EPILOG = """\
examples:
  memseq info data/train
  memseq verify data/train
  memseq convert images.npz data/train
  memseq convert data/train --field image=x.npy --field label=y.npy --jobs 4
  memseq convert data/train --raw image=images.mmap:uint8:-1,64,64,3 --raw label=labels.mmap:int64:-1
  memseq convert photos/ data/photos --image-size 64x64 --classes-file photos-classes.json
  memseq bench data/train --batch-size 256 --batches 100
  memseq demo
"""


# --------------------------------------------------------------------------- helpers


def _human_bytes(n: float) -> str:
    for unit in ("B", "kB", "MB", "GB", "TB"):
        # 999.995 rounds up to "1000.00": show it as 1.00 of the next unit instead.
        if abs(n) < (1000 if unit == "B" else 999.995) or unit == "TB":
            return f"{n:,.0f} {unit}" if unit == "B" else f"{n:,.2f} {unit}"
        n /= 1000
    raise AssertionError("unreachable")


def _table(rows: Sequence[Sequence[str]], header: Sequence[str], indent: str = "  ") -> str:
    cells = [list(header)] + [list(r) for r in rows]
    widths = [max(len(r[i]) for r in cells) for i in range(len(header))]
    lines = []
    for r in cells:
        parts = [c.rjust(w) if i and _numeric(c) else c.ljust(w) for i, (c, w) in enumerate(zip(r, widths))]
        lines.append(indent + "  ".join(parts).rstrip())
    return "\n".join(lines)


def _plural(n: int, word: str) -> str:
    return f"{n:,} {word}" + ("" if n == 1 else "s")


def _numeric(text: str) -> bool:
    return bool(text) and (text[0].isdigit() or text[0] == "-" and text[1:2].isdigit())


def _data_files(ds: Any) -> list[str]:
    return [os.path.join(ds.path, entry.path) for shard in ds.manifest.shards for entry in shard.files.values()]


def drop_page_cache(paths: Sequence[str]) -> None:
    """Asks the kernel to drop the cached pages of ``paths`` (for cold-cache timing).

    Uses ``posix_fadvise(POSIX_FADV_DONTNEED)``, which needs no root for clean
    pages; each file is ``fdatasync``-ed first so that dirty pages are written and
    can be dropped too. Pages that a process still has mapped *and touched* stay in
    memory: close datasets (and run ``gc.collect()``) before calling this.
    """
    for path in paths:
        fd = os.open(path, os.O_RDONLY)
        try:
            os.fdatasync(fd)
            os.posix_fadvise(fd, 0, 0, os.POSIX_FADV_DONTNEED)
        finally:
            os.close(fd)


def cached_fraction(paths: Sequence[str]) -> float:
    """The fraction of the bytes of ``paths`` in the page cache (via ``mincore``).

    Returns NaN where ``mincore`` is unavailable.
    """
    try:
        libc = ctypes.CDLL(None, use_errno=True)
        mincore = libc.mincore
    except (OSError, AttributeError):
        return float("nan")
    mincore.argtypes = [ctypes.c_void_p, ctypes.c_size_t, ctypes.c_void_p]
    page = mmap.PAGESIZE
    cached = total = 0
    for path in paths:
        size = os.path.getsize(path)
        if size == 0:
            continue
        with open(path, "rb") as f, mmap.mmap(f.fileno(), size, access=mmap.ACCESS_READ) as m:
            pages = (size + page - 1) // page
            vec = np.zeros(pages, np.uint8)
            # ctypes cannot take the address of a read-only mmap; numpy can. Mapping
            # a file does not read it: mincore reports, it does not fault pages in.
            view = np.frombuffer(m, np.uint8)
            status = mincore(ctypes.c_void_p(view.ctypes.data), ctypes.c_size_t(size), ctypes.c_void_p(vec.ctypes.data))
            del view
            if status != 0:
                return float("nan")
            cached += int(np.count_nonzero(vec & 1)) * page
            total += pages * page
    return cached / total if total else 0.0


# --------------------------------------------------------------------------- info / verify


def _info(args: argparse.Namespace) -> int:
    import memseq
    from memseq import format as fmt

    ds = memseq.open(args.path)
    with open(os.path.join(ds.path, fmt.MANIFEST_NAME), "rb") as f:
        version = json.loads(f.read().decode("utf-8")).get("version")
    files = _data_files(ds)
    data_bytes = sum(os.path.getsize(p) for p in files)
    manifest_bytes = os.path.getsize(os.path.join(ds.path, fmt.MANIFEST_NAME))
    fields = {
        name: {
            "dtype": str(spec.dtype),
            "dtype_str": spec.dtype.str,
            "shape": list(spec.shape),
            "row_bytes": spec.row_nbytes,
            "bytes": spec.row_nbytes * ds.num_rows,
        }
        for name, spec in ds.fields.items()
    }
    info = {
        "path": ds.path,
        "format": fmt.FORMAT_NAME,
        "version": version,
        "rows": ds.num_rows,
        "shards": [s.num_rows for s in ds.manifest.shards],
        "fields": fields,
        "files": len(files) + 1,
        "size_bytes": data_bytes + manifest_bytes,
    }
    if args.json:
        print(json.dumps(info, indent=2))
        return 0
    shard_rows = info["shards"]
    shards = f"{len(shard_rows)}" + (f" (rows per shard: {min(shard_rows):,}..{max(shard_rows):,})" if len(shard_rows) > 1 else "")
    print(f"path:     {ds.path}")
    print(f"format:   {fmt.FORMAT_NAME} version {version}")
    print(f"rows:     {ds.num_rows:,}")
    print(f"shards:   {shards}")
    print(f"size:     {_human_bytes(info['size_bytes'])} on disk ({info['size_bytes']:,} bytes in {info['files']} files)")
    print("fields:")
    rows = [
        (name, f["dtype"], str(tuple(f["shape"])), f"{f['row_bytes']:,}", _human_bytes(f["bytes"]))
        for name, f in fields.items()
    ]
    print(_table(rows, ("name", "dtype", "row shape", "bytes/row", "total")))
    return 0


def _verify(args: argparse.Namespace) -> int:
    import memseq

    t = time.perf_counter()
    ds = memseq.open(args.path)  # checks the manifest, every header and every size
    ds.verify()  # every checksum
    files = _data_files(ds)
    nbytes = sum(os.path.getsize(p) for p in files)
    print(
        f"OK {ds.path}: {_plural(len(files), 'data file')}, {_plural(ds.num_rows, 'row')}, {_human_bytes(nbytes)}: "
        f"sizes and CRC-32 checksums match ({time.perf_counter() - t:.1f} s)"
    )
    return 0


# --------------------------------------------------------------------------- convert


def _parse_image_size(text: str | None) -> tuple[int, int] | None:
    if text is None:
        return None
    parts = text.lower().replace(",", "x").split("x")
    try:
        dims = [int(p) for p in parts]
    except ValueError:
        dims = []
    if len(dims) == 1:
        dims = dims * 2
    if len(dims) != 2 or min(dims) < 1:
        raise SchemaError(f"--image-size takes HEIGHTxWIDTH (e.g. 64x64) or one number. Received: {text!r}")
    return dims[0], dims[1]


def _convert(args: argparse.Namespace) -> int:
    from memseq import convert as cv

    if len(args.paths) > 2:
        raise SchemaError(f"convert takes [SRC] DST. Received {len(args.paths)} paths: {args.paths}")
    src, dst = (args.paths[0], args.paths[1]) if len(args.paths) == 2 else (None, args.paths[0])
    if (args.dtype is None) != (args.shape is None):
        raise SchemaError("--dtype and --shape go together (they describe headerless raw --field files).")
    if src is None and not args.field and not args.raw:
        if os.path.exists(dst):
            raise SchemaError(f"convert takes SRC DST: where should {dst} be converted to? See memseq convert --help.")
        raise SchemaError("Nothing to convert: give SRC, or --field / --raw options. See memseq convert --help.")
    if args.classes_file:
        # Checked before converting, so a bad path never costs a whole conversion.
        root = os.path.abspath(dst)
        target = os.path.abspath(args.classes_file)
        if os.path.commonpath([root, target]) == root:
            raise SchemaError(
                f"--classes-file {args.classes_file}: cannot go inside the dataset directory "
                f"{dst} (the memseq format allows no extra files there); put it beside it."
            )
    sources = []
    if src is not None:
        sources.append(cv.source_for_path(src, image_size=_parse_image_size(args.image_size), color="gray" if args.gray else "rgb"))
    elif args.image_size or args.gray:
        raise SchemaError("--image-size and --gray apply to an image folder given as SRC.")
    for text in args.field:
        sources.append(cv.parse_field_option(text, dtype=args.dtype, shape=args.shape))
    for text in args.raw:
        sources.append(cv.parse_raw_option(text))
    classes = getattr(sources[0], "classes", None) if src is not None else None
    if args.classes_file and classes is None:
        raise SchemaError("--classes-file applies to an image folder given as SRC.")

    t = time.perf_counter()
    ds = cv.convert(
        dst,
        sources,
        shard_rows=args.shard_rows,
        jobs=args.jobs,
        overwrite=args.overwrite,
        progress=False if args.no_progress else None,
    )
    seconds = time.perf_counter() - t
    nbytes = sum(os.path.getsize(p) for p in _data_files(ds))
    print(
        f"wrote {ds.path}: {ds.num_rows:,} rows, {_plural(len(ds.fields), 'field')}, {_plural(ds.num_shards, 'shard')}, "
        f"{_human_bytes(nbytes)} in {seconds:.1f} s (jobs={args.jobs})"
    )
    print(_table([(n, str(s.dtype), str(s.shape)) for n, s in ds.fields.items()], ("field", "dtype", "row shape")))
    if classes is not None:
        print("classes (label: name): " + ", ".join(f"{i}: {c}" for i, c in enumerate(classes)))
        if args.classes_file:
            cv.write_classes(args.classes_file, classes, dst=ds.path)
            print(f"wrote the class names to {os.path.abspath(args.classes_file)}")
    return 0


# --------------------------------------------------------------------------- bench


def _default_fields(ds: Any, x: str | None, y: str | None) -> tuple[str, str | None]:
    names = list(ds.fields)
    if x is None:
        x = next((n for n in names if n != "label"), names[0])
    if y is None:
        y = "label" if "label" in names and x != "label" else None
    elif y == "":
        y = None
    for role, name in (("--x", x), ("--y", y)):
        if name is not None and name not in ds.fields:
            raise SchemaError(f"{role}: no field {name!r}; fields are {names}.")
    return x, y


def _time_batches(batches: Any, count: int) -> tuple[float, int]:
    """Seconds to pull ``count`` batches from an iterator, and the samples pulled."""
    samples = 0
    t = time.perf_counter()
    for _ in range(count):
        batch = next(batches)
        first = batch[0] if isinstance(batch, tuple) else batch
        while isinstance(first, (tuple, list, dict)):
            first = next(iter(first.values())) if isinstance(first, dict) else first[0]
        samples += int(first.shape[0])
    return time.perf_counter() - t, samples


_BENCH_LABELS = {
    "sequence": "MemmapSequence seq[i]",
    "tf_data": "MemmapSequence.to_tf_dataset()",
    "baseline": "baseline: from_generator(np.memmap)",
}


def _bench_method(method: str, path: str, x: str, y: str | None, batch_size: int, num_batches: int,
                  files: list[str], runs: tuple[str, ...]) -> list[tuple[str, float, int, float]]:
    """Runs one method in a fresh process: (cache, seconds, samples, cached fraction) per run.

    A fresh process per method keeps the methods apart: a tf.data pipeline keeps
    its Python functions (and with them the memory maps) alive, so their pages
    could not be dropped for the next cold run; and TensorFlow's from_generator
    changes malloc settings for the whole process.
    """
    import memseq

    def make_sequence() -> Any:
        return memseq.MemmapSequence(path, x=x, y=y, batch_size=batch_size, shuffle=True, seed=0)

    def run_sequence() -> tuple[float, int]:
        seq = make_sequence()
        return _time_batches((seq[i] for i in range(num_batches)), num_batches)

    def run_tf_data() -> tuple[float, int]:
        # A new dataset per run serves the sequence's epoch 0 again: the same rows.
        it = iter(make_sequence().to_tf_dataset().take(num_batches + 1))
        next(it)  # builds the pipeline; not timed
        return _time_batches(it, num_batches)

    def run_baseline() -> tuple[float, int]:
        import tensorflow as tf

        ds = memseq.open(path)
        shard = ds.manifest.shards[0]
        selected = [x] if y is None else [x, y]
        arrays = [np.load(os.path.join(ds.path, shard.files[n].path), mmap_mode="r") for n in selected]
        n = len(arrays[0])

        def rows():
            # The usual recipe's per-epoch permutation (seeded, so that the hot run
            # reads the same rows as the cold one), one row at a time.
            for i in np.random.default_rng(0).permutation(n):
                yield tuple(a[i] for a in arrays) if len(arrays) > 1 else arrays[0][i]

        spec = tuple(tf.TensorSpec(a.shape[1:], a.dtype) for a in arrays)
        dataset = tf.data.Dataset.from_generator(rows, output_signature=spec if len(spec) > 1 else spec[0])
        dataset = dataset.batch(batch_size).prefetch(tf.data.AUTOTUNE)
        count = max(1, min(num_batches, n // batch_size - 1))
        it = iter(dataset.take(count + 1))
        next(it)
        return _time_batches(it, count)

    run = {"sequence": run_sequence, "tf_data": run_tf_data, "baseline": run_baseline}[method]
    results = []
    for cache in runs:
        before = cached_fraction(files)
        seconds, samples = run()
        results.append((cache, seconds, samples, before))
    return results


def run_bench(
    path: str,
    *,
    x: str | None = None,
    y: str | None = None,
    batch_size: int = 256,
    batches: int = 100,
    cold: bool = True,
    methods: Sequence[str] = ("sequence", "tf_data", "baseline"),
    log: Callable[[str], None] | None = None,
) -> list[dict[str, Any]]:
    """Measures read throughput of a dataset, hot and cold; returns one dict per run.

    Methods, each in a fresh process (started with spawn):

    - ``"sequence"``: ``seq[i]`` for ``i`` in ``range(batches)`` on a
      ``MemmapSequence(shuffle=True, seed=0)``, in one thread;
    - ``"tf_data"``: iterating ``seq.to_tf_dataset()`` (skipped if this memseq has
      no ``to_tf_dataset``);
    - ``"baseline"``: the common recipe memseq replaces:
      ``tf.data.Dataset.from_generator`` over ``np.load(..., mmap_mode="r")``
      arrays, yielding one row at a time in a per-epoch permutation order, then
      ``.batch(batch_size).prefetch(AUTOTUNE)`` (first shard only).

    Each method runs cold (the data files' pages dropped from the page cache with
    ``posix_fadvise(POSIX_FADV_DONTNEED)`` just before its process starts), then
    hot (the same batches again, now cached). tf.data pipelines are built and their
    first batch taken before the clock starts.

    Returns:
        Dicts with ``method``, ``cache`` (``"cold"``/``"hot"``), ``batches``,
        ``samples``, ``seconds``, ``samples_per_s``, ``gb_per_s`` and
        ``cached_before`` (fraction of the data files in the page cache when the
        run started, from ``mincore``).
    """
    import multiprocessing
    from concurrent.futures import ProcessPoolExecutor

    import memseq
    from memseq import sequence  # noqa: F401  (fails here, not in a child, if Keras is missing)

    log = log or (lambda message: None)
    if batch_size < 1 or batches < 1:
        raise SchemaError(f"--batch-size and --batches must be >= 1. Received: {batch_size}, {batches}")
    ds = memseq.open(path)
    x, y = _default_fields(ds, x, y)
    files = _data_files(ds)
    row_bytes = sum(ds.fields[n].row_nbytes for n in ([x] if y is None else [x, y]))
    num_batches = max(1, min(batches, len(ds) // batch_size))
    path = ds.path
    del ds
    unknown = [m for m in methods if m not in _BENCH_LABELS]
    if unknown:
        raise SchemaError(f"Unknown bench methods {unknown}; known: {list(_BENCH_LABELS)}.")
    runs = ("cold", "hot") if cold else ("hot",)
    results = []
    for method in methods:
        if method == "tf_data" and not hasattr(memseq.MemmapSequence, "to_tf_dataset"):
            log("skipping to_tf_dataset(): this memseq has no MemmapSequence.to_tf_dataset")
            continue
        gc.collect()
        if cold:
            drop_page_cache(files)
        else:  # hot only: read the files once so that they are cached
            for f in files:
                with open(f, "rb") as fh:
                    while fh.read(16 * 2**20):
                        pass
        log(f"{_BENCH_LABELS[method]}: {' then '.join(runs)} ...")
        with ProcessPoolExecutor(max_workers=1, mp_context=multiprocessing.get_context("spawn")) as pool:
            measured = pool.submit(_bench_method, method, path, x, y, batch_size, num_batches, files, runs).result()
        if cold and measured[0][3] > 0.5:
            log(
                f"warning: {measured[0][3]:.0%} of the data stayed in the page cache after dropping it: the pages "
                "are mapped and touched by a running process (this one?), or the files are on tmpfs. "
                "The cold numbers are not cold."
            )
        for cache, seconds, samples, before in measured:
            results.append(
                {
                    "method": _BENCH_LABELS[method],
                    "cache": cache,
                    "batches": -(-samples // batch_size),
                    "samples": samples,
                    "seconds": seconds,
                    "samples_per_s": samples / seconds,
                    "gb_per_s": samples * row_bytes / seconds / 1e9,
                    "cached_before": before,
                }
            )
    return results


def _bench(args: argparse.Namespace) -> int:
    os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "2")
    methods = ["sequence", "tf_data"] + ([] if args.no_baseline else ["baseline"])

    def log(message: str) -> None:
        print(message, file=sys.stderr, flush=True)

    results = run_bench(
        args.path, x=args.x, y=args.y, batch_size=args.batch_size, batches=args.batches,
        cold=not args.no_cold, methods=methods, log=log,
    )
    print(f"bench {os.path.abspath(args.path)}: batch size {args.batch_size}, shuffled rows")
    rows = [
        (
            r["method"], r["cache"], f"{r['batches']}", f"{r['samples_per_s']:,.0f}", f"{r['gb_per_s']:.3f}",
            f"{r['cached_before']:.0%}",
        )
        for r in results
    ]
    print(_table(rows, ("method", "cache", "batches", "samples/s", "GB/s", "cached at start")))
    if not any(r["method"] == _BENCH_LABELS["tf_data"] for r in results):
        print("  (to_tf_dataset() is not available in this memseq version)")
    return 0


# --------------------------------------------------------------------------- demo


def _demo(args: argparse.Namespace) -> int:
    from memseq.demo import run_demo

    run_demo(
        size_gb=args.size_gb, epochs=args.epochs, keep=args.keep, directory=args.dir,
        batch_size=args.batch_size, workers=args.workers, seed=args.seed,
    )
    return 0


# --------------------------------------------------------------------------- parser


_Formatter = argparse.RawDescriptionHelpFormatter


def build_parser() -> argparse.ArgumentParser:
    """The ``memseq`` argument parser."""
    import memseq

    parser = argparse.ArgumentParser(
        prog="memseq",
        description="Inspect, verify, convert and benchmark memseq datasets; run the demo.",
        epilog=_EPILOG,
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    parser.add_argument("--version", action="version", version=f"memseq {memseq.__version__}")
    parser.add_argument("--traceback", action="store_true", help="show the full traceback of an error")
    sub = parser.add_subparsers(dest="command", metavar="COMMAND", required=True)

    p = sub.add_parser("info", help="rows, fields, size, shards and format version of a dataset",
                       description="Print a dataset's rows, fields (dtype, row shape), size on disk, shards and format version.")
    p.add_argument("path", metavar="PATH", help="the dataset directory")
    p.add_argument("--json", action="store_true", help="print JSON instead of text")
    p.set_defaults(func=_info)

    p = sub.add_parser("verify", help="check every file's size and CRC-32 checksum",
                       description="Check the manifest, every .npy header, every file size and every CRC-32 "
                       "checksum. Exit code 0 if all match; otherwise 1 and the bad file is named.")
    p.add_argument("path", metavar="PATH", help="the dataset directory")
    p.set_defaults(func=_verify)

    p = sub.add_parser(
        "convert",
        help="convert .npy/.npz/raw/HDF5 files or an image folder into a dataset",
        formatter_class=_Formatter,
        usage="memseq convert [-h] [SRC] DST [--field NAME=PATH[:KEY]]... [--raw NAME=PATH:DTYPE:SHAPE]... [options]",
        description="""\
Convert existing data into a memseq dataset at DST, streaming (no source is loaded
into memory whole) and atomically (on any error nothing is left at DST).

Sources (combine several; all need the same number of rows):
  SRC                       an .npz file (all arrays), an HDF5 file (all datasets,
                            'group/x' becomes field 'group.x'), an .npy file (field
                            named after the file), a memseq dataset (to re-shard
                            it), or an image folder (below)
  --field NAME=FILE.npy     one .npy file as field NAME
  --field NAME=FILE.npz[:ARRAY]     array ARRAY (default NAME) of an .npz
  --field NAME=FILE.h5[:/DATASET]   dataset /DATASET (default /NAME) of an HDF5 file
  --field NAME=FILE.mmap --dtype DTYPE --shape=SHAPE
                            a headerless raw file (np.memmap output); write
                            --shape=-1,... with '=' (argparse reads a bare -1,...
                            as an option)
  --raw NAME=FILE:DTYPE:SHAPE[:OFFSET]
                            a headerless raw file with its own dtype and shape,
                            e.g. --raw image=images.mmap:uint8:-1,64,64,3
SHAPE is rows first, comma-separated, with one -1 inferred from the file size.

Image folders: SRC/<class>/<image files>. Fields 'image' (uint8, HxWxC; C=3, or 1
with --gray) and 'label' (int64: the class's index in alphabetical order). Without
--image-size every image must have the first image's size; with it every image is
resized. The class names are printed (and written as a JSON list with
--classes-file, outside DST: the dataset directory holds memseq files only).

--jobs N runs N worker processes that write rows in place into pre-sized files;
the result is byte-identical to --jobs 1 (the layout depends only on the rows and
--shard-rows).""",
    )
    p.add_argument("paths", nargs="+", metavar="PATH", help="[SRC] DST: an optional source, then the dataset directory to create")
    p.add_argument("--field", action="append", default=[], metavar="NAME=PATH[:KEY]", help="add a field from a file (repeatable)")
    p.add_argument("--raw", action="append", default=[], metavar="NAME=PATH:DTYPE:SHAPE[:OFFSET]",
                   help="add a field from a headerless raw file (repeatable)")
    p.add_argument("--dtype", help="dtype of headerless raw --field files, e.g. float32")
    p.add_argument("--shape", help="shape of headerless raw --field files, e.g. --shape=-1,64,64,3")
    p.add_argument("--image-size", metavar="HxW", help="resize images to HxW (default: the first image's size, others must match)")
    p.add_argument("--gray", action="store_true", help="store images as 1-channel grayscale instead of RGB")
    p.add_argument("--classes-file", metavar="FILE", help="also write the image folder's class names (JSON list) to FILE")
    p.add_argument("--shard-rows", type=int, metavar="N", help="start a new shard every N rows (default: one file per field)")
    p.add_argument("--jobs", "-j", type=int, default=1, metavar="N", help="worker processes writing in parallel (default: 1)")
    p.add_argument("--overwrite", action="store_true", help="replace an existing memseq dataset at DST")
    p.add_argument("--no-progress", action="store_true", help="no progress bar (it only shows on a terminal anyway)")
    p.set_defaults(func=_convert)

    p = sub.add_parser(
        "bench",
        help="throughput of seq[i], to_tf_dataset() and a from_generator baseline, hot and cold",
        formatter_class=_Formatter,
        description="""\
Print samples/s and GB/s of reading shuffled batches from PATH three ways:
MemmapSequence seq[i] in a loop, MemmapSequence.to_tf_dataset(), and the common
baseline of tf.data.Dataset.from_generator over np.memmap arrays with a per-epoch
permutation. Each runs cold (the data files' pages dropped from the page cache with
posix_fadvise(DONTNEED), no root needed) and then hot (the same batches again).
Imports TensorFlow.""",
    )
    p.add_argument("path", metavar="PATH", help="the dataset directory")
    p.add_argument("--batch-size", type=int, default=256, metavar="N", help="rows per batch (default: 256)")
    p.add_argument("--batches", type=int, default=100, metavar="N", help="batches per measurement (default: 100)")
    p.add_argument("--x", metavar="FIELD", help="input field (default: the first field that is not 'label')")
    p.add_argument("--y", metavar="FIELD", help="target field (default: 'label' if present; '' for none)")
    p.add_argument("--no-cold", action="store_true", help="hot runs only")
    p.add_argument("--no-baseline", action="store_true", help="skip the from_generator baseline")
    p.set_defaults(func=_bench)

    p = sub.add_parser(
        "demo",
        help="write a ~1 GB synthetic image dataset and train a small CNN on it",
        formatter_class=_Formatter,
        description="""\
Write a synthetic image dataset (64x64x3 uint8 images of 10 learnable classes, int64
labels) with memseq.Writer into a temporary directory, train a small CNN on it
with an augmenting MemmapSequence subclass and worker processes, print samples/s
and peak anonymous memory, and delete the dataset. Imports TensorFlow and Keras.""",
    )
    p.add_argument("--size-gb", type=float, default=1.0, metavar="GB", help="dataset size in GB (default: 1.0)")
    p.add_argument("--epochs", type=int, default=2, metavar="N", help="training epochs (default: 2)")
    p.add_argument("--keep", action="store_true", help="keep the dataset and print its path")
    p.add_argument("--dir", metavar="DIR", help="parent directory of the temporary dataset directory (default: the system temp dir)")
    p.add_argument("--batch-size", type=int, default=256, metavar="N", help="rows per batch (default: 256)")
    p.add_argument("--workers", type=int, default=2, metavar="N", help="Keras worker processes (default: 2)")
    p.add_argument("--seed", type=int, default=0, metavar="N", help="seed of the data, shuffles and augmentation (default: 0)")
    p.set_defaults(func=_demo)
    return parser


def _one_line(error: BaseException) -> str:
    text = str(error).strip() or type(error).__name__
    if not isinstance(error, (MemseqError, OSError)):
        text = f"{type(error).__name__}: {text}"
    lines = [line.strip() for line in text.splitlines() if line.strip()]
    if len(lines) > 1:
        return lines[0] + " (more with --traceback)"
    return lines[0] if lines else type(error).__name__


def main(argv: Sequence[str] | None = None) -> int:
    """Runs the ``memseq`` command with ``argv`` (default: ``sys.argv[1:]``).

    Returns:
        The exit code: 0 on success, 1 on an error, 2 on a usage error, 130 on Ctrl-C.
    """
    parser = build_parser()
    try:
        args = parser.parse_args(argv)
    except SystemExit as e:  # --help, --version, usage errors: argparse already printed
        return e.code if isinstance(e.code, int) else (0 if e.code is None else 2)
    try:
        return int(args.func(args) or 0)
    except KeyboardInterrupt:
        print("memseq: interrupted", file=sys.stderr)
        return 130
    except Exception as e:  # one line, no traceback: the message names file and problem
        if args.traceback:
            raise
        sys.stdout.flush()
        print(f"memseq: error: {_one_line(e)}", file=sys.stderr)
        return 1


if __name__ == "__main__":
    sys.exit(main())
