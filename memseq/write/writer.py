"""Writing memseq datasets: streaming, validated, atomic.

A :class:`Writer` streams rows into ``.npy`` files in a temporary directory next
to the target, computes each file's CRC-32 as it writes (no second pass), and
commits with one atomic rename once everything is on disk:

1. data files are written under ``.<name>.memseq-tmp-<id>/`` beside the target,
   each with a header that reserves room for any row count;
2. on commit each file gets its final header and is fsynced, then the manifest is
   written and fsynced *last*, then the directories are fsynced;
3. the temporary directory is renamed onto the target. With ``overwrite=True`` the
   old and the new directory are swapped in one step (``renameat2`` with
   ``RENAME_EXCHANGE``), so the old dataset stays intact and readable until the new
   one is in place; only then is the old one deleted.

A crash at any moment leaves either no dataset (a fresh write), the old dataset or
the new one, never a mix; at worst a ``.<name>.memseq-tmp-*`` directory is left
over, which the next write to the same path removes (a live writer's is locked and
left alone). If the ``with`` block raises, nothing is committed and the temporary
files are removed.

A failure of the filesystem (disk full, file size limit, permission denied) raises
a :class:`~memseq.WriteError` (an ``OSError`` with the errno) or a
:class:`~memseq.DatasetPermissionError` naming the dataset; the Writer is then
aborted: nothing is committed, the temporary directory is removed, and a dataset
being overwritten is left intact.
"""

from __future__ import annotations

import os
import warnings
from typing import Any, BinaryIO, Mapping

import numpy as np

from memseq.errors import MemseqError, SchemaError
from memseq.remote.urls import is_url
from memseq.storage import commit as _commit
from memseq.storage import files as _fs
from memseq.storage import format as fmt
from memseq.storage.checksum import crc32
from memseq.util.checks import check_int, equal_row_counts
from memseq.write import ragged as _ragged_write
from memseq.write.upload import (
    check_remote_target,
    remove_staging,
    staging_dir,
    upload_dataset,
)

__all__ = ["Writer", "check_block", "checked_rows"]

# Appends are written in pieces of about this many bytes per field, so that
# converting a huge input (say a 2 GB memmap handed to save()) never needs a
# whole-field copy in memory.
_WRITE_CHUNK_BYTES = 16 * 2**20


def check_block(dtype: Any, shape: tuple[int, ...], spec: fmt.FieldSpec, num_rows: int | None, where: str) -> None:
    """The one rule for every block of rows memseq writes into a fixed-size field.

    :meth:`Writer.append`, each work unit of :func:`memseq.convert.convert` and each
    computed block of a Dask array given to :func:`memseq.save` pass through it: a
    block must be ``num_rows`` rows (any number if None) of the field's row shape, in
    the field's dtype or one that casts to it safely (``np.can_cast(...,
    casting="safe")``), so that no value wraps, no row shifts and no row is missing.

    Args:
        dtype: The block's dtype.
        shape: The block's shape.
        spec: The field it is written into.
        num_rows: The rows the block must hold, or None.
        where: What the block is (the dataset path, a Dask block), to start messages with.

    Raises:
        SchemaError: Naming ``where``, the field, what was expected and what was received.
    """
    dtype = np.dtype(dtype)
    name = spec.name
    if dtype != spec.dtype and not np.can_cast(dtype, spec.dtype, casting="safe"):
        raise SchemaError(
            f"{where}: field {name!r} has dtype {spec.dtype}; {dtype} does not cast to it safely. "
            f"Convert explicitly (e.g. arr.astype({str(spec.dtype)!r})) if that is what you want."
        )
    rows = "n" if num_rows is None else str(num_rows)
    if len(shape) < 1 or shape[1:] != spec.shape or (num_rows is not None and shape[0] != num_rows):
        expected = "(" + ", ".join([rows, *map(str, spec.shape)]) + ("," if not spec.shape else "") + ")"
        raise SchemaError(
            f"{where}: field {name!r} takes rows of shape {spec.shape}, so arrays of shape {expected}. "
            f"Received shape: {shape}"
        )


def checked_rows(array: Any, spec: fmt.FieldSpec, num_rows: int, where: str) -> np.ndarray:
    """``array`` as C-contiguous rows in ``spec``'s dtype, after :func:`check_block`.

    Raises:
        SchemaError: See :func:`check_block`; also for something that is not an array of numbers.
    """
    if not isinstance(array, np.ndarray):
        array = np.asarray(array)
    check_block(array.dtype, tuple(array.shape), spec, num_rows, where)
    return np.ascontiguousarray(array, dtype=spec.dtype)


def _normalize_fields(fields: Mapping[str, Any]) -> dict[str, fmt.FieldSpec]:
    if not isinstance(fields, Mapping) or not fields:
        raise SchemaError(f"fields must be a non-empty mapping of name -> (dtype, row_shape). Received: {fields!r}")
    specs = {}
    for name, spec in fields.items():
        if isinstance(spec, fmt.FieldSpec):
            specs[name] = fmt.field_spec(name, spec.dtype, spec.shape)
        elif isinstance(spec, (tuple, list)) and len(spec) == 2:
            specs[name] = fmt.field_spec(name, spec[0], spec[1])
        else:
            raise SchemaError(
                f"Field {name!r}: expected (dtype, row_shape), e.g. ('uint8', (64, 64, 3)). Received: {spec!r}"
            )
    for name, spec in specs.items():
        if spec.ragged and _ragged_write.offsets_name(name) in specs:
            raise SchemaError(
                f"Field {_ragged_write.offsets_name(name)!r} would share its file with the offsets of the "
                f"variable-length field {name!r}: rename one of them."
            )
    return specs


class _FieldFile:
    """One .npy file being written: reserved header, running CRC-32, row count."""

    def __init__(self, path: str, spec: fmt.FieldSpec):
        self.path = path
        self.spec = spec
        self.rows = 0
        self.crc = 0
        self.header_length = fmt.reserved_header_length(spec.dtype, spec.shape)
        self.file: BinaryIO = open(path, "xb", buffering=0)
        # Placeholder header; the real one (same length) is written on finish().
        self.file.write(fmt.npy_header(spec.dtype, (0, *spec.shape), self.header_length))

    def write(self, rows: np.ndarray) -> None:
        if rows.nbytes:
            data = memoryview(rows.reshape(-1).view(np.uint8))
            self.crc = crc32(data, self.crc)
            while data:
                n = self.file.write(data)
                data = data[n:]
        self.rows += len(rows)

    def finish(self) -> str:
        """Writes the final header, fsyncs and closes; returns the checksum string."""
        self.file.seek(0)
        self.file.write(fmt.npy_header(self.spec.dtype, (self.rows, *self.spec.shape), self.header_length))
        os.fsync(self.file.fileno())
        self.file.close()
        return fmt.format_checksum(self.crc)

    def close(self) -> None:
        self.file.close()

    def entry(self, root: str) -> fmt.FileEntry:
        """Finishes the file; its manifest entry (path relative to ``root``)."""
        rel = os.path.relpath(self.path, root).replace(os.sep, "/")
        return fmt.FileEntry(rel, self.finish())


class _RaggedFile:
    """A variable-length field of one shard: a values file and an int64 offsets file."""

    def __init__(self, values_path: str, offsets_path: str, spec: fmt.FieldSpec):
        self.spec = spec
        self.values = _FieldFile(values_path, fmt.FieldSpec(spec.name, spec.dtype, spec.value_shape))
        self.offsets = _FieldFile(offsets_path, fmt.FieldSpec(spec.name, _ragged_write.OFFSETS_DTYPE, ()))
        self.offsets.write(np.zeros(1, _ragged_write.OFFSETS_DTYPE))
        self.rows = 0

    def write_rows(self, rows: Any) -> None:
        """Appends rows (a sequence of arrays already checked), in pieces of bounded size."""
        for values, lengths in _ragged_write.flat_pieces(rows, self.spec.dtype, self.spec.row_nbytes, _WRITE_CHUNK_BYTES):
            self.offsets.write((self.values.rows + np.cumsum(lengths)).astype(_ragged_write.OFFSETS_DTYPE))
            self.values.write(values)
            self.rows += len(lengths)

    def entry(self, root: str) -> fmt.FileEntry:
        """Finishes both files; the field's manifest entry."""
        num_values = self.values.rows
        values, offsets = self.values.entry(root), self.offsets.entry(root)
        return fmt.FileEntry(values.path, values.checksum, num_values, offsets)

    def close(self) -> None:
        self.values.close()
        self.offsets.close()


class Writer:
    """Streams rows into a new memseq dataset and commits it atomically.

    Use it as a context manager: the dataset is committed when the block ends
    normally and discarded if it raises. Without ``with``, call :meth:`close` to
    commit or :meth:`abort` to discard.

    Args:
        path: The dataset directory to create, or a URL (any fsspec URL that can be
            written, e.g. ``s3://``): the dataset is written in a local staging folder
            (``$TMPDIR``) and uploaded on :meth:`close`, data files first, the manifest last.
        fields: Mapping of field name -> ``(dtype, row_shape)``; dtypes must be
            bool or numeric, ``row_shape`` is ``()`` for scalar rows. A ``None``
            first dimension declares a variable-length field: ``("uint16", (None,))``
            for token sequences, ``("float32", (None, 80))`` for 80-band frames.
        overwrite: Replace an existing memseq dataset at ``path``. The old one stays
            intact and readable until the new one is committed.
        shard_rows: Start a new shard (sub-directory) every this many rows. By
            default everything goes into one file per field.
        progress: Show a tqdm progress bar of rows written.
        total_rows: The expected number of rows, for the progress bar only.
        storage_options: For a URL: keyword arguments of its fsspec filesystem.

    Raises:
        DatasetExistsError: If ``path`` exists and ``overwrite`` is False, or it
            exists and is not a memseq dataset (memseq never replaces other data).
        SchemaError: If a field name, dtype or shape is invalid.

    Example:
        >>> fields = {"image": ("uint8", (64, 64, 3)), "label": ("int64", ())}
        >>> with memseq.Writer("data/train", fields=fields) as w:
        ...     for images, labels in chunks:
        ...         w.append({"image": images, "label": labels})
    """

    def __init__(
        self,
        path: str | os.PathLike,
        fields: Mapping[str, Any],
        *,
        overwrite: bool = False,
        shard_rows: int | None = None,
        progress: bool = False,
        total_rows: int | None = None,
        storage_options: dict[str, Any] | None = None,
    ):
        # A URL: the dataset is written in a local staging folder, then uploaded on close().
        self.url = path.rstrip("/") if is_url(path) else None
        self._staging = None
        if self.url is not None:
            check_remote_target(self.url, storage_options, bool(overwrite))
            self._staging = staging_dir()
            path = os.path.join(self._staging, "ds")
        self._storage_options = storage_options
        self.path = os.path.abspath(_fs.check_path(path, "dataset path"))
        self.fields = _normalize_fields(fields)
        self.shard_rows = fmt.check_shard_rows(shard_rows)
        total_rows = None if total_rows is None else check_int(total_rows, "total_rows")
        self.overwrite = bool(overwrite)
        self._closed = True  # until the temporary directory exists: __del__ has nothing to clean
        try:
            _commit.check_target(self.path, self.overwrite)
            self._tmp = _commit.make_temp_dir(self.path)
        except OSError as e:
            if isinstance(e, MemseqError):
                raise
            raise _fs.os_error(e, self.path, "dataset", writing=True) from e
        self._shards: list[fmt.ShardSpec] = []
        self._shard_rows_done = 0  # rows in self._shards
        self._current: dict[str, _FieldFile] | None = None
        self._current_dir = ""
        self._closed = False
        self._bar = None
        if progress:
            from tqdm.auto import tqdm

            self._bar = tqdm(total=total_rows, unit="rows", desc=f"writing {os.path.basename(self.path)}", unit_scale=True)

    @property
    def num_rows(self) -> int:
        """Rows appended so far."""
        done = self._shard_rows_done
        if self._current:
            done += next(iter(self._current.values())).rows
        return done

    # -- appending

    def _validate(self, batch: Mapping[str, Any]) -> tuple[dict[str, Any], int]:
        if self._closed:
            raise MemseqError(f"{self.path}: this Writer is closed; append before close().")
        if not isinstance(batch, Mapping):
            raise SchemaError(f"append() takes a mapping of field name -> array. Received: {type(batch).__name__}")
        missing = sorted(set(self.fields) - set(batch))
        extra = sorted(set(batch) - set(self.fields))
        if missing or extra:
            raise SchemaError(
                f"{self.path}: append() needs exactly the fields {sorted(self.fields)}. "
                f"Missing: {missing}; unknown: {extra}."
            )
        arrays: dict[str, Any] = {}
        lengths = {}
        for name, spec in self.fields.items():
            arr = batch[name]
            if spec.ragged:
                arrays[name] = _ragged_write.ragged_rows(arr, spec.dtype, spec.value_shape, f"{self.path}: field {name!r}")
                lengths[name] = len(arrays[name])
                continue
            if not hasattr(arr, "dtype") or not hasattr(arr, "shape"):
                arr = np.asarray(arr)
            check_block(arr.dtype, tuple(arr.shape), spec, None, self.path)
            arrays[name] = arr
            lengths[name] = arr.shape[0]
        return arrays, equal_row_counts(lengths, where=self.path)

    def append(self, batch: Mapping[str, Any]) -> None:
        """Appends rows: the same number of rows for every field.

        Args:
            batch: Mapping of every field name -> array (ndarray, memmap or any
                array-like with ``shape``, ``dtype`` and slicing) of shape
                ``(n, *row_shape)`` and the field's dtype or one that casts to it
                safely. A variable-length field takes a list (or tuple) of ``n``
                arrays of shape ``(length, *trailing)``, or a ragged column.

        Raises:
            SchemaError: For missing or unknown fields, a dtype that does not cast
                safely, a wrong row shape, or unequal row counts. Nothing of the
                batch is written then.
        """
        arrays, n = self._validate(batch)
        try:
            self._write(arrays, n)
        except OSError as e:
            # A partial write leaves the files inconsistent with their checksums: give up.
            self.abort()
            raise _fs.os_error(e, self.path, "dataset", writing=True) from e

    def _write(self, arrays: Mapping[str, Any], n: int) -> None:
        first = self.num_rows
        for shard, start, stop in fmt.shard_layout(first + n, self.shard_rows, first):
            files = self._shard_files(shard)
            for name, spec in self.fields.items():
                if spec.ragged:
                    files[name].write_rows(arrays[name][start - first : stop - first])
                    continue
                step = max(1, _WRITE_CHUNK_BYTES // max(spec.row_nbytes, 1))
                for a in range(start - first, stop - first, step):
                    b = min(stop - first, a + step)
                    files[name].write(np.ascontiguousarray(arrays[name][a:b], dtype=spec.dtype))
            if self.shard_rows is not None and stop == (shard + 1) * self.shard_rows:
                self._finish_shard()  # full
        if self._bar is not None:
            self._bar.update(n)

    def _shard_files(self, shard: int) -> dict[str, _FieldFile]:
        """The open files of shard ``shard`` (the one after the finished shards), opened on first use."""
        if self._current is None:
            self._current_dir = fmt.shard_directory(shard, self.shard_rows)
            if self._current_dir:
                os.mkdir(os.path.join(self._tmp, self._current_dir))
            self._current = {name: self._open_field(shard, spec) for name, spec in self.fields.items()}
        return self._current

    def _open_field(self, shard: int, spec: fmt.FieldSpec) -> Any:
        path = os.path.join(self._tmp, fmt.shard_file(shard, spec.name, self.shard_rows))
        if not spec.ragged:
            return _FieldFile(path, spec)
        offsets = fmt.shard_file(shard, _ragged_write.offsets_name(spec.name), self.shard_rows)
        return _RaggedFile(path, os.path.join(self._tmp, offsets), spec)

    def _finish_shard(self) -> None:
        files, self._current = self._current, None
        if files is None:
            return
        entries = {}
        rows = 0
        for name, f in files.items():
            entries[name] = f.entry(self._tmp)
            rows = f.rows
        if self._current_dir:
            _commit.fsync_dir(os.path.join(self._tmp, self._current_dir))
        self._shards.append(fmt.ShardSpec(rows, entries))
        self._shard_rows_done += rows

    # -- committing

    def close(self) -> None:
        """Commits the dataset: final headers, fsync, manifest last, atomic rename.

        Raises:
            DatasetExistsError: If ``path`` appeared meanwhile and ``overwrite`` is False.
        """
        if self._closed:
            return
        try:
            if self._current is not None or not self._shards:
                self._shard_files(len(self._shards))  # an empty dataset still has one (empty) shard
                self._finish_shard()
            manifest = fmt.Manifest(sum(s.num_rows for s in self._shards), dict(self.fields), tuple(self._shards))
            _commit.write_manifest(self._tmp, manifest)
            _commit.publish(self._tmp, self.path, self.overwrite)
            if self.url is not None:
                try:
                    upload_dataset(self.path, self.url, self._storage_options, overwrite=self.overwrite)
                finally:
                    remove_staging(self._staging)
        except OSError as e:
            self.abort()
            if isinstance(e, MemseqError):
                raise
            raise _fs.os_error(e, self.path, "dataset", writing=True) from e
        except BaseException:
            self.abort()
            raise
        self._closed = True
        if self._bar is not None:
            self._bar.close()

    def abort(self) -> None:
        """Discards everything written; the target path is left as it was."""
        if self._closed:
            return
        self._closed = True
        for f in (self._current or {}).values():
            try:
                f.close()
            except OSError:
                pass  # closing a file whose write failed may fail again (ENOSPC): it goes anyway
        self._current = None
        _commit.remove_temp_dir(self._tmp)
        if self._staging is not None:
            remove_staging(self._staging)
        if self._bar is not None:
            self._bar.close()

    def __enter__(self) -> "Writer":
        return self

    def __exit__(self, exc_type, exc, tb) -> None:
        if exc_type is None:
            self.close()
        else:
            self.abort()

    def __del__(self):
        if not getattr(self, "_closed", True):
            # Clean up first: with warnings turned into errors, warn() raises here.
            self.abort()
            warnings.warn(
                f"memseq.Writer for {self.path} was garbage-collected without close(); nothing was committed.",
                ResourceWarning,
                stacklevel=2,
            )

    def __repr__(self) -> str:
        state = "closed" if self._closed else "open"
        return f"<memseq.Writer {self.path!r} rows={self.num_rows} {state}>"
