"""Zarr stores and globs of ``.npy`` files, converted through Dask.

``memseq convert`` sends these inputs here instead of to the process-pool engine:
they become Dask arrays, and :func:`memseq.save` writes Dask arrays with every
chunk in parallel on the chosen Dask scheduler (see :mod:`memseq.write.dask`): local
threads or processes, or a ``dask.distributed`` cluster whose workers see the
same filesystem.

- A **Zarr store** (a directory with ``zarr.json``, ``.zarray`` or ``.zgroup``):
  one field for an array (named after the store, ``x.zarr`` -> ``x``), or every
  array of a group (``group/x`` becomes field ``group.x``, as for HDF5).
- A **glob of .npy files** (``'parts/x-*.npy'``, quoted so the shell leaves it
  alone): the files in natural sort order (``x-2`` before ``x-10``), concatenated
  along the rows into one field, named after the pattern (``x-*.npy`` -> ``x``) or
  given as ``--field NAME=GLOB``. Each file is read by reference (its path), so
  no data travels through the task graph.

Dask and Zarr are imported only when such an input is converted.
"""

from __future__ import annotations

import glob
import os
import re
from collections.abc import Sequence
from typing import Any

import numpy as np

from memseq.convert._npy import NpySource
from memseq.errors import DatasetNotFoundError, MemseqError, SchemaError
from memseq.read.dataset import Dataset
from memseq.read.dataset import open as open_dataset
from memseq.storage import format as fmt

__all__ = ["is_dask_input", "dask_arrays", "convert_with_dask"]

_LOCAL_SCHEDULERS = ("threads", "processes", "synchronous", "sync", "single-threaded")
_GLOB_CHARS = re.compile(r"[*?\[]")
_ZARR_MARKERS = ("zarr.json", ".zarray", ".zgroup")
# Blocks of rows are about this large: big enough that per-task overhead vanishes,
# small enough that every worker gets several.
_BLOCK_BYTES = 64 * 2**20


def _is_zarr(path: str) -> bool:
    return os.path.isdir(path) and any(os.path.isfile(os.path.join(path, m)) for m in _ZARR_MARKERS)


def _is_glob(path: str) -> bool:
    return not os.path.exists(path) and bool(_GLOB_CHARS.search(path))


def _split_field(text: str) -> tuple[str, str]:
    name, sep, rest = text.partition("=")
    if not sep or not name or not rest:
        raise SchemaError(f"--field takes NAME=PATH, e.g. --field image='parts/x-*.npy'. Received: {text!r}")
    return name, rest


def is_dask_input(src: str | None, field_options: Sequence[str] = ()) -> bool:
    """Whether ``memseq convert``'s SRC or a ``--field NAME=PATH`` is a Zarr store or a ``.npy`` glob."""
    paths = [] if src is None else [src]
    for text in field_options:
        _, sep, rest = text.partition("=")
        if sep:
            paths.append(rest.split(":", 1)[0] if _is_zarr(rest.split(":", 1)[0]) else rest)
    return any(_is_zarr(p) or _is_glob(p) for p in paths)


def _natural_key(path: str) -> list[Any]:
    return [int(part) if part.isdigit() else part for part in re.split(r"(\d+)", path)]


def _glob_name(pattern: str) -> str:
    stem = os.path.basename(pattern)
    stem = stem[:-4] if stem.endswith(".npy") else stem
    stem = re.sub(r"\[[^\]]*\]|[*?]", "", stem).strip("-_. ")
    if not stem:
        raise SchemaError(f"{pattern}: cannot name a field after this pattern; use --field NAME={pattern}.")
    return stem


def _npy_glob(pattern: str, name: str) -> Any:
    import dask
    import dask.array as da

    paths = sorted(glob.glob(pattern), key=_natural_key)
    if not paths:
        raise DatasetNotFoundError(f"{pattern}: no file matches this pattern.")
    pieces = []
    first = None
    for path in paths:
        source = NpySource(path, name)  # validates the header and the file size
        spec = source.fields[name]
        if first is None:
            first = (path, spec)
        elif (spec.dtype, spec.shape) != (first[1].dtype, first[1].shape):
            raise SchemaError(
                f"{path}: rows of {spec.dtype} {spec.shape}, but {first[0]} has {first[1].dtype} {first[1].shape}; "
                "the files of a glob are concatenated and need the same dtype and row shape."
            )
        step = max(1, _BLOCK_BYTES // max(spec.row_nbytes, 1))
        for start in range(0, source.num_rows, step):
            stop = min(source.num_rows, start + step)
            rows = dask.delayed(_read_rows, pure=True)(source, name, start, stop)
            pieces.append(da.from_delayed(rows, shape=(stop - start, *spec.shape), dtype=spec.dtype))
    if not pieces:  # only empty files
        return da.zeros((0, *first[1].shape), dtype=first[1].dtype)
    return da.concatenate(pieces, axis=0)


def _read_rows(source: NpySource, name: str, start: int, stop: int) -> Any:
    """Runs in a Dask worker: rows ``[start, stop)`` of a ``.npy`` file (opened by path)."""
    try:
        return source.read(start, stop)[name]
    finally:
        source.close()


def _zarr_arrays(path: str, key: str | None, name: str | None) -> dict[str, Any]:
    import dask.array as da

    try:
        import zarr
    except ImportError as e:
        raise MemseqError(f"{path}: reading Zarr stores needs zarr: pip install zarr") from e
    node = zarr.open(path, mode="r")
    if key:
        node = node[key]
    if isinstance(node, zarr.Array):
        field = name or (key.strip("/").replace("/", ".") if key else os.path.splitext(os.path.basename(path.rstrip("/")))[0])
        component = key.strip("/") if key else None
        return {field: _blocked(da.from_zarr(path, component=component))}
    if name is not None:
        raise SchemaError(f"--field {name}={path}: a Zarr group holds several arrays; name one: {name}={path}:ARRAY.")
    arrays = {}
    members = node.members(max_depth=None) if hasattr(node, "members") else node.arrays()  # zarr 3 / zarr 2
    for array_path, _ in sorted((kv for kv in members if isinstance(kv[1], zarr.Array)), key=lambda kv: kv[0]):
        arrays[array_path.replace("/", ".")] = _blocked(da.from_zarr(path, component=(f"{key.strip('/')}/" if key else "") + array_path))
    if not arrays:
        raise SchemaError(f"{path}: the Zarr group holds no arrays.")
    return arrays


def _blocked(array: Any) -> Any:
    """Merges small Zarr chunks into row blocks of about ``_BLOCK_BYTES`` (fewer, larger tasks)."""
    if array.ndim == 0 or array.shape[0] == 0:
        return array
    row_nbytes = max(1, array.dtype.itemsize * int(np.prod(array.shape[1:], dtype=np.int64)))
    rows = max(1, _BLOCK_BYTES // row_nbytes)
    if max(array.chunks[0]) < rows // 2:
        array = array.rechunk({0: rows})
    return array


def dask_arrays(src: str | None, field_options: Sequence[str] = ()) -> dict[str, Any]:
    """The Dask arrays that SRC and ``--field NAME=PATH[:ARRAY]`` options name (Zarr stores, .npy globs, .npy files).

    Raises:
        SchemaError: For an input that cannot go through Dask (an HDF5, .npz or raw
            file beside a Zarr store or glob: convert those separately), or a duplicate field.
        DatasetNotFoundError: For a missing file or a glob that matches nothing.
    """
    arrays: dict[str, Any] = {}

    def add(new: dict[str, Any]) -> None:
        for field, array in new.items():
            if field in arrays:
                raise SchemaError(f"Field {field!r} is given twice; give each field a distinct name.")
            fmt.check_field_name(field)
            arrays[field] = array

    if src is not None:
        if _is_zarr(src):
            add(_zarr_arrays(src, None, None))
        elif _is_glob(src) or src.endswith(".npy"):
            add({_glob_name(src): _npy_glob(src, _glob_name(src))})
        else:
            raise SchemaError(f"{src}: beside a Zarr store or a .npy glob, SRC must be a Zarr store or .npy files too.")
    for text in field_options:
        name, rest = _split_field(text)
        store, _, key = rest.partition(":")
        if _is_zarr(store):
            add(_zarr_arrays(store, key or None, name))
        elif _is_glob(rest) or rest.endswith(".npy"):
            add({name: _npy_glob(rest, name)})
        else:
            raise SchemaError(
                f"--field {text}: beside a Zarr store or a .npy glob, fields must be Zarr stores or .npy files too."
            )
    return arrays


def convert_with_dask(
    dst: str | os.PathLike,
    src: str | None,
    field_options: Sequence[str] = (),
    *,
    shard_rows: int | None = None,
    jobs: int = 1,
    scheduler: str | None = None,
    overwrite: bool = False,
    progress: bool | None = False,
) -> Dataset:
    """Converts Zarr stores and ``.npy`` globs into a memseq dataset through Dask, atomically.

    Args:
        dst: The dataset directory to create.
        src: A Zarr store or a ``.npy`` glob (or None with ``field_options`` only).
        field_options: ``NAME=PATH[:ARRAY]`` strings (``--field``).
        shard_rows: Start a new shard every this many rows.
        jobs: Threads of the local scheduler (1: Dask's default, one per core).
        scheduler: ``"threads"`` (default), ``"processes"``, ``"synchronous"``, or the
            address of a ``dask.distributed`` scheduler (``tcp://host:8786``) whose
            workers see ``dst``'s filesystem.
        overwrite: Replace an existing memseq dataset at ``dst``.
        progress: Show Dask's progress bar (None: only on a terminal).

    Returns:
        The new dataset, opened.
    """
    arrays = dask_arrays(src, field_options)
    return write_on_scheduler(dst, arrays, scheduler=scheduler, jobs=jobs, shard_rows=shard_rows,
                              overwrite=overwrite, progress=progress)


def write_on_scheduler(dst: str | os.PathLike, arrays: dict[str, Any], *, scheduler: str | None, jobs: int,
                       shard_rows: int | None, overwrite: bool, progress: bool | None) -> Dataset:
    """Writes Dask ``arrays`` to ``dst`` on ``scheduler`` (a local one by name, or a
    ``dask.distributed`` address), with ``jobs`` local workers; returns the dataset, opened."""
    import sys

    import dask

    from memseq.write.dask import write_dask

    show = sys.stderr.isatty() if progress is None else bool(progress)
    options: dict[str, Any] = {}
    client = None
    if scheduler is not None and scheduler not in _LOCAL_SCHEDULERS:  # a dask.distributed address
        from distributed import Client

        client = Client(scheduler)
    else:
        options["scheduler"] = scheduler or "threads"
        if jobs > 1:
            options["num_workers"] = jobs
    try:
        with dask.config.set(**options):
            write_dask(dst, arrays, shard_rows=shard_rows, overwrite=overwrite, progress=show and client is None)
    finally:
        if client is not None:
            client.close()
    return open_dataset(dst)
