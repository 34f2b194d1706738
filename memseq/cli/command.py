"""The ``memseq`` command: info, verify, convert, bench, demo.

Run ``memseq --help`` or ``python -m memseq --help``; every subcommand has its own
``--help``. :func:`main` takes the arguments as a list and returns the exit code
(0 on success, 1 on an error, 2 on a usage error, 130 on Ctrl-C); errors are printed
as one line, ``memseq: error: ...``, without a traceback (``--traceback`` shows it).

TensorFlow and Keras are imported only by ``bench`` and ``demo``. This module holds
the argument parser and one handler per subcommand; the work happens elsewhere:
:mod:`memseq.convert` (with the option strings parsed by :mod:`memseq.cli.options`),
:mod:`memseq.bench` and :mod:`memseq.demo`.
"""

from __future__ import annotations

import argparse
import functools
import json
import os
import sys
import time
from collections.abc import Sequence

from memseq.bench import METHOD_LABELS, data_files
from memseq.errors import DatasetExistsError, MemseqError, SchemaError
from memseq.read.remote import remote_files_of
from memseq.remote.transfer import filesystem, retrying
from memseq.remote.urls import is_url
from memseq.write.upload import staged_upload

__all__ = ["main", "build_parser"]

_EPILOG = """\
examples:
  memseq info data/train
  memseq verify data/train
  memseq convert images.npz data/train
  memseq convert data/train --field image=x.npy --field label=y.npy --jobs 4
  memseq convert data/train --raw image=images.mmap:uint8:-1,64,64,3 --raw label=labels.mmap:int64:-1
  memseq convert photos/ data/photos --image-size 64x64 --classes-file photos-classes.json
  memseq convert 'parts/x-*.npy' data/train --field label='parts/y-*.npy' --scheduler tcp://10.0.0.1:8786
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


# --------------------------------------------------------------------------- info / verify


def _info(args: argparse.Namespace) -> int:
    import memseq
    from memseq.storage import format as fmt

    ds = memseq.open(args.path)
    raw = _manifest_of(ds)
    version = json.loads(raw.decode("utf-8")).get("version")
    files = data_files(ds)
    data_bytes = sum(_sizes(ds, files))
    manifest_bytes = len(raw)
    fields = {
        name: {
            "dtype": str(spec.dtype),
            "dtype_str": spec.dtype.str,
            "shape": list(spec.shape),
            "row_bytes": spec.row_nbytes,
            "bytes": spec.row_nbytes * (ds[name].num_values if spec.ragged else ds.num_rows),
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


def _manifest_of(ds) -> bytes:
    """The manifest's bytes, of a local dataset or of one at a URL."""
    from memseq.storage import format as fmt

    remote = remote_files_of(ds)
    if remote is not None:
        return remote.cache.manifest_bytes(remote.fingerprint)
    with open(os.path.join(ds.path, fmt.MANIFEST_NAME), "rb") as f:
        return f.read()


def _sizes(ds, files: list[str]) -> list[int]:
    """The sizes of a dataset's data files: on disk, or as the server reports them for a URL."""
    remote = remote_files_of(ds)
    if remote is None:
        return [os.path.getsize(p) for p in files]
    sizes = []
    for url in files:  # data_files joins the dataset's URL and each file's path
        fs, path = filesystem(url, remote.cache.storage_options)
        sizes.append(int(retrying(url, "data file", functools.partial(fs.size, path))))
    return sizes


def _verify(args: argparse.Namespace) -> int:
    import memseq

    t = time.perf_counter()
    ds = memseq.open(args.path)  # checks the manifest, every header and every size
    ds.verify()  # every checksum (a URL's files are downloaded into the cache and checked there)
    files = data_files(ds)
    nbytes = sum(_sizes(ds, files))
    print(
        f"OK {ds.path}: {_plural(len(files), 'data file')}, {_plural(ds.num_rows, 'row')}, {_human_bytes(nbytes)}: "
        f"sizes and CRC-32 checksums match ({time.perf_counter() - t:.1f} s)"
    )
    return 0


# --------------------------------------------------------------------------- convert


def _convert_sources(args: argparse.Namespace, src: str | None, dst: str) -> list:
    """The sources that ``memseq convert``'s SRC, ``--field`` and ``--raw`` name, checked together."""
    import memseq.cli.options as options
    from memseq import convert as cv

    if (args.dtype is None) != (args.shape is None):
        raise SchemaError("--dtype and --shape go together (they describe headerless raw --field files).")
    if src is None and not args.field and not args.raw and not args.tokens:
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
    if src is not None and options.migration_options(args):
        sources.append(options.migration_source(src, args))
    elif src is not None:
        image_size = options.parse_image_size(args.image_size)
        sources.append(cv.source_for_path(src, image_size=image_size, color="gray" if args.gray else "rgb"))
    elif options.migration_options(args):
        raise SchemaError(f"{', '.join(options.migration_options(args))} apply to a source given as SRC.")
    elif args.image_size or args.gray:
        raise SchemaError("--image-size and --gray apply to an image folder given as SRC.")
    for text in args.field:
        sources.append(options.parse_field_option(text, dtype=args.dtype, shape=args.shape))
    for text in args.raw:
        sources.append(options.parse_raw_option(text))
    for text in args.tokens:
        sources.append(options.parse_tokens_option(text))
    return sources


def _convert(args: argparse.Namespace) -> int:
    from memseq import convert as cv

    if len(args.paths) > 2:
        raise SchemaError(f"convert takes [SRC] DST. Received {len(args.paths)} paths: {args.paths}")
    src, dst = (args.paths[0], args.paths[1]) if len(args.paths) == 2 else (None, args.paths[0])
    if is_url(dst):  # converted in a local staging folder, then uploaded (data files first, manifest last)
        with staged_upload(dst, None, args.overwrite) as local:
            args.paths = [p for p in (src, local) if p is not None]
            _convert(args)
        print(f"uploaded to {dst}")
        return 0
    use_dask = cv.migration_kind(src) is None and cv.is_dask_input(src, args.field)  # a Zarr store or a glob of .npy files: written through Dask
    if use_dask and args.raw:
        raise SchemaError("--raw cannot be combined with a Zarr store or a .npy glob; convert raw files separately.")
    sources = [] if use_dask else _convert_sources(args, src, dst)
    classes = getattr(sources[0], "classes", None) if src is not None and sources else None
    if args.classes_file and classes is None:
        raise SchemaError("--classes-file applies to an image folder given as SRC.")

    t = time.perf_counter()
    if use_dask:
        convert = functools.partial(cv.convert_with_dask, src=src, field_options=args.field, scheduler=args.scheduler)
    elif args.scheduler and cv.migration_kind(src) is not None:
        convert = functools.partial(cv.convert_sources_with_dask, sources=sources, scheduler=args.scheduler)
    else:
        convert = functools.partial(cv.convert, sources=sources)
    try:
        ds = convert(
            dst,
            shard_rows=args.shard_rows,
            jobs=args.jobs,
            overwrite=args.overwrite,
            progress=False if args.no_progress else None,
        )
    except DatasetExistsError as e:
        # The library's message names its keyword argument; the command's user needs the flag.
        raise DatasetExistsError(str(e).replace("pass overwrite=True", "pass --overwrite")) from e
    seconds = time.perf_counter() - t
    nbytes = sum(os.path.getsize(p) for p in data_files(ds))
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


def _bench(args: argparse.Namespace) -> int:
    methods = ["sequence", "tf_data"] + ([] if args.no_baseline else ["baseline"])

    def log(message: str) -> None:
        print(message, file=sys.stderr, flush=True)

    from memseq.bench import run_bench

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
    if not any(r["method"] == METHOD_LABELS["tf_data"] for r in results):
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


def _add_info(sub: argparse._SubParsersAction) -> None:
    """Adds ``memseq info PATH``."""
    p = sub.add_parser("info", help="rows, fields, size, shards and format version of a dataset",
                       description="Print a dataset's rows, fields (dtype, row shape), size on disk, shards and format version.")
    p.add_argument("path", metavar="PATH", help="the dataset directory")
    p.add_argument("--json", action="store_true", help="print JSON instead of text")
    p.set_defaults(func=_info)


def _add_verify(sub: argparse._SubParsersAction) -> None:
    """Adds ``memseq verify PATH``."""
    p = sub.add_parser("verify", help="check every file's size and CRC-32 checksum",
                       description="Check the manifest, every .npy header, every file size and every CRC-32 "
                       "checksum. Exit code 0 if all match; otherwise 1 and the bad file is named.")
    p.add_argument("path", metavar="PATH", help="the dataset directory")
    p.set_defaults(func=_verify)


_CONVERT_DESCRIPTION = """\
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

Through Dask (--scheduler chooses where; --raw does not combine with these):
  SRC = STORE.zarr          a Zarr store: every array of its group ('group/x'
                            becomes field 'group.x')
  SRC = 'x-*.npy'           a glob of .npy files concatenated in natural order
                            (x-2 before x-10), as field 'x' (named after the
                            pattern); quote it so the shell does not expand it
  --field NAME=STORE.zarr[:ARRAY]   one array of a Zarr store as field NAME
  --field NAME='GLOB'       a glob of .npy files as field NAME

Variable-length fields (converted in one process; --jobs does not apply):
  --field NAME=DIR/         a directory of .npy files, one row each (natural
                            file-name order), e.g. --field tokens=docs/
  --tokens NAME=FILE:DTYPE:SEPARATOR
                            a headerless token stream cut into rows after each
                            SEPARATOR token, e.g. --tokens tokens=train.bin:uint16:50256

From other libraries' formats (SRC; see docs/guide/migrate.md):
  SRC = FILE.tfrecord, a directory or a quoted glob of TFRecord files
                            tf.train.Example features, read with TensorFlow; the
                            features are inferred from the first 100 records or
                            given with --feature NAME=SPEC: int64, float32,
                            int64:3, float32:28,28, int64:-1 (any length), bytes
                            (variable-length uint8), bytes:uint8:28,28,1 (raw
                            values, as tf.io.decode_raw); '/' in names becomes '.'
  SRC = FILE.parquet, FILE.arrow (IPC file or stream), a directory or a quoted
        glob of them, or a Hugging Face save_to_disk folder
                            every column, or those of --columns a,b (FIELD=COLUMN
                            renames): numbers, booleans, fixed-size lists (trailing
                            dims), lists and binary (variable-length); strings,
                            dictionaries, dates, structs and nulls are refused
  SRC = SHARD.tar, a directory or a quoted glob of WebDataset shards
                            one row per sample; one field per member extension
                            (or those of --members cls,png; FIELD=EXT renames):
                            .npy arrays, .cls/.txt integers (int64), images at
                            their exact mode (uint8 HxWxC; 16-bit gray: uint16)
  With --scheduler, these sources (fixed fields only) are read by Dask tasks.

Image folders: SRC/<class>/<image files>. Fields 'image' (HxWxC; C=3, or 1 with
--gray) and 'label' (int64: the class's index in alphabetical order). Pixel values
are kept exactly: 8-bit images as uint8, 16-bit grayscale as uint16 (32-bit: int32,
float32); 16-bit colour images (which Pillow reads as 8-bit) are refused. Without
--image-size every image must have the first image's size; with it every image is
resized. The class names are printed (and written as a JSON list with
--classes-file, outside DST: the dataset directory holds memseq files only).

--jobs N runs N worker processes that write rows in place into pre-sized files;
the result is byte-identical to --jobs 1 (the layout depends only on the rows and
--shard-rows)."""


def _add_convert(sub: argparse._SubParsersAction) -> None:
    """Adds ``memseq convert [SRC] DST [--field ...] [--raw ...]``."""
    p = sub.add_parser(
        "convert",
        help="convert .npy/.npz/raw/HDF5 files, Zarr stores, .npy globs, an image folder, TFRecord, "
        "Parquet/Arrow/Hugging Face or WebDataset data into a dataset",
        formatter_class=_Formatter,
        usage="memseq convert [-h] [SRC] DST [--field NAME=PATH[:KEY]]... [--raw NAME=PATH:DTYPE:SHAPE]... [options]",
        description=_CONVERT_DESCRIPTION,
    )
    p.add_argument("paths", nargs="+", metavar="PATH", help="[SRC] DST: an optional source, then the dataset directory to create")
    p.add_argument("--field", action="append", default=[], metavar="NAME=PATH[:KEY]", help="add a field from a file (repeatable)")
    p.add_argument("--raw", action="append", default=[], metavar="NAME=PATH:DTYPE:SHAPE[:OFFSET]",
                   help="add a field from a headerless raw file (repeatable)")
    p.add_argument("--tokens", action="append", default=[], metavar="NAME=PATH:DTYPE:SEPARATOR",
                   help="a raw token stream cut into variable-length rows after each SEPARATOR token (repeatable)")
    p.add_argument("--feature", action="append", default=[], metavar="NAME=SPEC",
                   help="a TFRecord feature to convert, e.g. label=int64, image=bytes:uint8:28,28,1 (repeatable; "
                   "default: all, inferred)")
    p.add_argument("--columns", action="append", default=[], metavar="COL[,COL...]",
                   help="the Parquet/Arrow/Hugging Face columns to convert (FIELD=COLUMN renames; default: all)")
    p.add_argument("--members", action="append", default=[], metavar="EXT[,EXT...]",
                   help="the WebDataset member extensions to convert (FIELD=EXT renames; default: all of the first sample)")
    p.add_argument("--dtype", help="dtype of headerless raw --field files, e.g. float32")
    p.add_argument("--shape", help="shape of headerless raw --field files, e.g. --shape=-1,64,64,3")
    p.add_argument("--image-size", metavar="HxW", help="resize images to HxW (default: the first image's size, others must match)")
    p.add_argument("--gray", action="store_true", help="store images as 1-channel grayscale instead of RGB")
    p.add_argument("--classes-file", metavar="FILE", help="also write the image folder's class names (JSON list) to FILE")
    p.add_argument("--shard-rows", type=int, metavar="N", help="start a new shard every N rows (default: one file per field)")
    p.add_argument("--jobs", "-j", type=int, default=1, metavar="N", help="worker processes writing in parallel (default: 1)")
    p.add_argument("--overwrite", action="store_true", help="replace an existing memseq dataset at DST")
    p.add_argument("--no-progress", action="store_true", help="no progress bar (it only shows on a terminal anyway)")
    p.add_argument("--scheduler", metavar="ADDRESS", help="Zarr stores and .npy globs go through Dask: threads (default), "
                   "processes, or a dask.distributed scheduler address (tcp://host:8786)")
    p.set_defaults(func=_convert)


def _add_bench(sub: argparse._SubParsersAction) -> None:
    """Adds ``memseq bench PATH``."""
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


def _add_demo(sub: argparse._SubParsersAction) -> None:
    """Adds ``memseq demo``."""
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
    for add in (_add_info, _add_verify, _add_convert, _add_bench, _add_demo):
        add(sub)
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
