"""The conversion engine: combine the sources, check them, write them with the parallel writer.

:func:`convert` checks that the sources fit together (distinct fields, equal row
counts, a destination outside every source) and hands them to
:func:`memseq.write.parallel.write_rows`, which pre-sizes the files, writes the rows
in worker processes and commits atomically (see there). A conversion with a
variable-length field streams through one :class:`memseq.Writer` instead
(:func:`memseq.convert._ragged.convert_streaming`). Any error leaves nothing at the
destination.
"""

from __future__ import annotations

import os
from collections.abc import Iterable

from memseq.convert._base import Source
from memseq.convert._ragged import convert_streaming
from memseq.errors import SchemaError
from memseq.read.dataset import Dataset
from memseq.read.dataset import open as open_dataset
from memseq.read.opener import open as open_any
from memseq.remote.urls import is_url
from memseq.storage import format as fmt
from memseq.util.checks import check_int, equal_row_counts
from memseq.write.parallel import write_rows
from memseq.write.upload import staged_upload

__all__ = ["convert"]


def _combine_sources(sources: Iterable[Source]) -> tuple[list[Source], dict[str, fmt.FieldSpec], dict[str, int]]:
    sources = list(sources)
    if not sources:
        raise SchemaError("Nothing to convert: give at least one source.")
    fields: dict[str, fmt.FieldSpec] = {}
    owner: dict[str, int] = {}
    for i, source in enumerate(sources):
        for name, spec in source.fields.items():
            if name in fields:
                raise SchemaError(
                    f"Field {name!r} comes from two sources ({sources[owner[name]].description} and "
                    f"{source.description}); give each field a distinct name."
                )
            fields[name] = spec
            owner[name] = i
    equal_row_counts({f"{s.description} ({', '.join(s.fields)})": s.num_rows for s in sources}, "sources")
    return sources, fields, owner


def _check_not_inside_a_source(dst: str, sources: list[Source]) -> None:
    """Refuses a destination inside a source directory: replacing that source later would delete it.

    (Converting a dataset onto itself, ``dst == src`` with ``overwrite=True``, stays
    allowed: every row is read before the new directory takes the old one's place.)
    """
    real_dst = os.path.realpath(dst)
    for source in sources:
        path = getattr(source, "path", None)
        if path is None:
            continue
        real_src = os.path.realpath(os.fspath(path))
        if real_dst.startswith(real_src.rstrip(os.sep) + os.sep):
            raise SchemaError(
                f"{dst}: the destination is inside the source {path}; a later conversion or overwrite of "
                "the source would delete it. Choose a destination outside the source."
            )


def convert(
    dst: str | os.PathLike,
    sources: Source | Iterable[Source],
    *,
    shard_rows: int | None = None,
    jobs: int = 1,
    overwrite: bool = False,
    progress: bool | None = False,
    storage_options: dict | None = None,
) -> Dataset:
    """Converts sources into a memseq dataset at ``dst``, atomically.

    Args:
        dst: The dataset directory to create, or an fsspec URL (``s3://...``): then
            the dataset is converted in a local staging folder (``$TMPDIR``) and
            uploaded, data files first and the manifest last.
        sources: One source or several with equal row counts and distinct fields.
        shard_rows: Start a new shard every this many rows (one file per field by
            default). The output does not depend on ``jobs``.
        jobs: Worker processes writing in parallel (1: in this process). A
            conversion with a variable-length field runs in this process.
        overwrite: Replace an existing memseq dataset at ``dst``.
        progress: Show a tqdm progress bar (None: only on a terminal).
        storage_options: For a URL: passed to its fsspec filesystem (credentials,
            endpoint), and to :func:`memseq.open` for the returned dataset.

    Returns:
        The new dataset, opened (at a URL: with the default cache directory).

    Raises:
        DatasetExistsError: If ``dst`` exists (and ``overwrite`` is False, or it is
            not a memseq dataset).
        SchemaError: For conflicting fields, unequal row counts or bad arguments.
        DatasetNotFoundError, FormatError, CorruptFileError: For a missing,
            unreadable, truncated or corrupt source. Nothing is left at ``dst``.

    Example:
        >>> from memseq.convert import NpySource, convert
        >>> convert("data/train", [NpySource("x.npy", "image"), NpySource("y.npy", "label")], jobs=4)
    """
    if is_url(dst):
        with staged_upload(str(dst), storage_options, overwrite) as local:
            convert(local, sources, shard_rows=shard_rows, jobs=jobs, progress=progress)
        return open_any(str(dst), storage_options=storage_options)
    dst = os.path.abspath(os.fspath(dst))
    sources, fields, owner = _combine_sources([sources] if isinstance(sources, Source) else sources)
    _check_not_inside_a_source(dst, sources)
    jobs = check_int(jobs, "jobs", 1)
    shard_rows = fmt.check_shard_rows(shard_rows)
    if any(spec.ragged for spec in fields.values()):
        # Variable-length rows cannot go into pre-sized files: one streaming Writer, here.
        convert_streaming(dst, sources, fields, owner, shard_rows=shard_rows, overwrite=overwrite, progress=progress)
        return open_dataset(dst)
    write_rows(dst, sources, fields, owner, shard_rows=shard_rows, jobs=jobs, overwrite=overwrite, progress=progress,
               desc=f"converting {os.path.basename(dst)}")
    return open_dataset(dst)
