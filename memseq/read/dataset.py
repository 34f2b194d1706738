"""Reading memseq datasets, by memory map.

``memseq.open(path)`` returns a :class:`Dataset`: a read-only table whose columns
(:class:`~memseq.read.columns.Column`) are memory-mapped ``.npy`` files, presented as one
array across shards. ``memseq.open_raw(path, dtype, shape)`` (:mod:`memseq.read.raw`)
wraps the headerless files that ``np.memmap(..., mode="w+")`` writes in the same
:class:`Column` type.

The promises of the reader, and where they are kept:

- Reads copy only the rows asked for, so resident *anonymous* memory does not grow
  with the size of the data (:mod:`memseq.read.columns`).
- A file that shrinks after it was opened raises :class:`CorruptFileError` on the
  next read instead of killing the process with SIGBUS (:mod:`memseq.read.mapping`).
- No file descriptor stays open: each data file is opened (regular files only,
  never blocking), its header read and checked, mapped, and closed again, so a
  dataset of thousands of shards opens under ``ulimit -n 1024``. ``Dataset.close()``
  or a ``with`` block unmaps the files at once, and a Dataset takes part in no
  reference cycle, so dropping the last reference unmaps them too.
- Pickling stores absolute paths, a fingerprint of the manifest and the identity of
  every data file (device, inode, size, mtime), never array data; the unpickled
  object reopens the files on first use and refuses a replaced, truncated or
  rewritten file (:class:`DatasetReplacedError`, :class:`CorruptFileError`), so a
  worker never serves data its parent did not. A closed Dataset pickles closed.
  Worker processes started by spawn or forkserver therefore start fast, share the
  page cache, and read exactly what the parent reads.

``Column``, ``RawColumn`` and ``open_raw`` are re-exported here, where they lived
before the reader was split into modules.
"""

from __future__ import annotations

import io
import os
import threading
from collections.abc import ItemsView, KeysView, Mapping, ValuesView
from typing import Any, Iterator, Sequence

import numpy as np

from memseq.errors import (
    CorruptFileError,
    DatasetClosedError,
    DatasetReplacedError,
    FormatError,
    MemseqError,
    SchemaError,
)
from memseq.read.columns import Column
from memseq.read.mapping import MappedFile
from memseq.read.ragged import RaggedColumn, RaggedPart, check_offsets
from memseq.read.raw import RawColumn, open_raw
from memseq.storage import files as _fs
from memseq.storage import format as fmt
from memseq.storage import identity as _identity
from memseq.storage.checksum import crc32
from memseq.storage.identity import FileIdentity
from memseq.util import forksafe as _forksafe
from memseq.util.checks import bounded_repr, row_indices

__all__ = ["Column", "Dataset", "DatasetFiles", "RaggedColumn", "RawColumn", "open", "open_raw"]

# How often to start opening a dataset again that was replaced while it was being opened.
_OPEN_ATTEMPTS = 3


class _DatasetColumn(Column):
    """A column of a :class:`Dataset`; pickles as (the dataset's files, field name).

    It refers to the dataset's :class:`DatasetFiles`, not to the Dataset itself, so
    that a Dataset and its columns form no reference cycle, and a column outlives
    a dropped Dataset (keeping the mappings it needs).
    """

    def __init__(self, files: "DatasetFiles", name: str):
        spec = files.manifest.fields[name]
        super().__init__(name, spec.dtype, spec.shape, [s.num_rows for s in files.manifest.shards])
        self._files = files

    def parts(self) -> Sequence[MappedFile]:
        return self._files.mapped()[self.name]

    def __reduce__(self):
        # The column's own metadata travels along, so unpickling does not open the
        # dataset: that happens on first read (like an unpickled Dataset), and a
        # missing or replaced dataset is reported there, not inside unpickling.
        return (_column_of, (self._files, self.name, self.dtype.str, self.row_shape, self._part_rows))

    def __repr__(self) -> str:
        return f"<memseq.Column {self.name!r} of {self._files.path!r} shape={self.shape} dtype={self.dtype}>"


class _DatasetRaggedColumn(RaggedColumn):
    """A variable-length column of a :class:`Dataset`; pickles as (the dataset's files, field name)."""

    def __init__(self, files: "DatasetFiles", name: str):
        spec = files.manifest.fields[name]
        super().__init__(name, spec.dtype, spec.value_shape, [s.num_rows for s in files.manifest.shards])
        self._files = files

    def parts(self) -> Sequence[RaggedPart]:
        return self._files.mapped()[self.name]

    def __reduce__(self):
        return (_ragged_column_of, (self._files, self.name, self.dtype.str, self.value_shape, self._part_rows))


def _ragged_column_of(files: "DatasetFiles", name: str, dtype: str, value_shape: tuple, part_rows: Sequence[int]) -> RaggedColumn:
    column = _DatasetRaggedColumn.__new__(_DatasetRaggedColumn)
    RaggedColumn.__init__(column, name, np.dtype(dtype), value_shape, part_rows)
    column._files = files
    return column


def _column_of(files: "DatasetFiles", name: str, dtype: str, row_shape: tuple[int, ...], part_rows: Sequence[int]) -> Column:
    column = _DatasetColumn.__new__(_DatasetColumn)
    Column.__init__(column, name, np.dtype(dtype), row_shape, part_rows)
    column._files = files
    return column


class DatasetFiles:
    """The opened state of a dataset: manifest and mappings, shared by a Dataset and its columns.

    The files of a local dataset directory; :class:`memseq.read.remote.RemoteDatasetFiles`
    subclasses it for a dataset at a URL (its shards mapped from a verified local cache).

    Opening is lazy after unpickling. Pickles as (path, manifest fingerprint): a
    Dataset and its columns pickled together share one of these in the copy too.
    """

    def __init__(
        self, path: str, fingerprint: int | None = None, identities: Sequence[tuple] | None = None, closed: bool = False
    ):
        self.path = path
        # Where the data files are: the dataset directory (a remote dataset's cache folder).
        self.data_dir = path
        self.fingerprint = fingerprint
        # The identity of every data file (see memseq.storage.identity), in opening order: those
        # this object mapped, or, until it opens, those its pickling process mapped.
        self._identities: list[FileIdentity] | None = None if identities is None else [FileIdentity(*i) for i in identities]
        self._opening: list[FileIdentity] = []
        self._lock = threading.Lock()
        self._manifest: fmt.Manifest | None = None
        self._mapped: dict[str, list[MappedFile]] | None = None
        self._closed = bool(closed)
        _forksafe.register(self)

    def _after_fork_in_child(self) -> None:
        self._lock = threading.Lock()

    def __reduce__(self):
        # The path (absolute), the manifest's fingerprint and each data file's identity:
        # the copy refuses a replaced manifest or data file. A closed dataset stays closed.
        identities = None if self._identities is None else [tuple(i) for i in self._identities]
        return (DatasetFiles, (self.path, self.fingerprint, identities, self._closed))

    @property
    def manifest_path(self) -> str:
        return os.path.join(self.path, fmt.MANIFEST_NAME)

    @property
    def manifest(self) -> fmt.Manifest:
        if self._manifest is None:
            self.open()
        return self._manifest  # type: ignore[return-value]

    def mapped(self) -> dict[str, list[MappedFile]]:
        mapped = self._mapped
        if mapped is None:
            self.open()
            mapped = self._mapped
            if mapped is None:  # closed by another thread meanwhile
                raise self.closed_error()
        return mapped

    def closed_error(self) -> DatasetClosedError:
        """The error of a read after :meth:`close`."""
        return DatasetClosedError(f"{self.path}: the dataset was closed; open it again to read.")

    def open(self) -> None:
        """Maps the dataset (once; later calls return at once).

        Raises:
            DatasetClosedError: After :meth:`close`.
            DatasetReplacedError: If a pickled copy's dataset changed since.
        """
        with self._lock:
            if self._closed:
                raise self.closed_error()
            if self._mapped is None:
                self._map_files()

    def check_fingerprint(self, crc: int) -> None:
        """Raises DatasetReplacedError if ``crc`` (the manifest's now) is not the fingerprint this copy was pickled with."""
        if self.fingerprint is not None and crc != self.fingerprint:
            raise DatasetReplacedError(
                f"{self.manifest_path}: the dataset changed since this Dataset object was pickled; "
                "open it again in the parent process."
            )

    def _map_files(self) -> None:
        """Reads the manifest and maps the files (called by :meth:`open`, under its lock)."""
        # An overwrite swaps the whole directory in one step. If that happens while
        # we read the manifest and open the files one by one, the old manifest could
        # be paired with some of the new files: fingerprint the manifest before and
        # after opening, and start again if it changed.
        for _ in range(_OPEN_ATTEMPTS):
            raw = fmt.read_manifest_bytes(self.path)
            crc = crc32(raw)
            self.check_fingerprint(crc)
            try:
                manifest = fmt.parse_manifest(raw, self.path)
                self._opening = []
                mapped = self._open_all(manifest)
            except MemseqError:
                if _manifest_fingerprint(self.path) != crc:
                    continue  # replaced while opening: the error may be an artefact of that
                raise
            if _manifest_fingerprint(self.path) == crc:
                break
            _close_all(mapped)
        else:
            raise DatasetReplacedError(f"{self.manifest_path}: the dataset kept changing while it was being opened.")
        self._manifest = manifest
        self.fingerprint = crc
        self._identities, self._opening = self._opening, []
        self._mapped = mapped

    def _open_all(self, manifest: fmt.Manifest) -> dict[str, list[MappedFile]]:
        mapped: dict[str, list[MappedFile]] = {name: [] for name in manifest.fields}
        try:
            for shard in manifest.shards:
                for name, spec in manifest.fields.items():
                    mapped[name].append(self._open_data_file(shard, spec))
        except BaseException:
            _close_all(mapped)
            raise
        return mapped

    def _open_data_file(self, shard: fmt.ShardSpec, spec: fmt.FieldSpec) -> Any:
        entry = shard.files[spec.name]
        if not spec.ragged:
            return self._open_checked(entry.path, spec, shard.num_rows)
        values = self._open_checked(entry.path, spec, entry.num_values)
        try:
            offsets_spec = fmt.FieldSpec(f"{spec.name} (offsets)", np.dtype("<i8"), ())
            part = RaggedPart(values, self._open_checked(entry.offsets.path, offsets_spec, shard.num_rows + 1))
        except BaseException:
            values.close()
            raise
        try:
            part.check_ends()
        except BaseException:
            part.close()
            raise
        return part

    def _open_checked(self, rel: str, spec: fmt.FieldSpec, num_rows: int) -> MappedFile:
        """Opens and maps a .npy file of ``num_rows`` rows of ``spec``'s dtype and value shape, checked."""
        path = fmt.resolve_inside(self.data_dir, rel, manifest=self.manifest_path)
        fd, st = _fs.open_regular(path, f"data file of field {spec.name!r}")
        try:
            # One descriptor, for header, size and mapping alike, closed before returning:
            # a file swapped in between could otherwise pass the checks for another.
            with io.FileIO(fd, "rb", closefd=False) as f:
                dtype, shape, offset = fmt.read_npy_header(f, path)
            expected_shape = (num_rows, *spec.value_shape)
            if dtype != spec.dtype:
                raise FormatError(
                    f"{path}: field {spec.name!r} should have dtype {spec.dtype} (manifest) but the file has {dtype}."
                )
            if shape != expected_shape:
                raise FormatError(
                    f"{path}: field {spec.name!r} should have shape {bounded_repr(expected_shape)} (manifest) "
                    f"but the file has {bounded_repr(shape)}."
                )
            expected_size = offset + num_rows * spec.row_nbytes
            if st.st_size != expected_size:
                raise CorruptFileError(
                    f"{path}: expected {expected_size} bytes for {bounded_repr(shape)} of {dtype}, but the file is "
                    f"{st.st_size} bytes ({'truncated' if st.st_size < expected_size else 'has trailing bytes'})."
                )
            # A pickled copy maps the files its parent mapped, or none (the files are
            # opened in manifest order, the same order in every process).
            expected = self._identities
            if expected is not None and len(self._opening) < len(expected):
                _identity.check(path, st, expected[len(self._opening)], "dataset")
            self._opening.append(_identity.identity_of(st))
            return MappedFile(path, fd, st, dtype, shape, offset)
        finally:
            os.close(fd)

    def is_current(self) -> bool:
        """Whether the manifest and every mapped file on disk are still the ones opened."""
        if _manifest_fingerprint(self.path) != self.fingerprint:
            return False
        return all(part.is_current() for parts in self.mapped().values() for part in parts)

    def close(self) -> None:
        with self._lock:
            self._closed = True
            mapped, self._mapped = self._mapped, None
        if mapped is not None:
            _close_all(mapped)


def _close_all(mapped: dict[str, list[MappedFile]]) -> None:
    for files in mapped.values():
        for f in files:
            f.close()


class Dataset(Mapping):
    """A memseq dataset opened for reading: a read-only table of columns.

    Like a pandas DataFrame, ``len(ds)`` is the number of rows, iterating yields
    field names, and ``ds[name]`` is a :class:`Column`. Nothing can be written
    through it. Use :func:`memseq.open` to get one.

    Attributes:
        path: The dataset directory.
        manifest: The parsed :class:`memseq.storage.format.Manifest`.
        fields: Mapping of field name -> :class:`memseq.storage.format.FieldSpec`.

    A Dataset holds no open file descriptor, only memory mappings; :meth:`close`
    (or leaving a ``with memseq.open(path) as ds:`` block) unmaps them at once, and
    so does dropping the last reference to the Dataset and its columns.

    Example:
        >>> ds = memseq.open("data/train")
        >>> len(ds), list(ds)
        (60000, ['image', 'label'])
        >>> batch = ds.take([7, 1, 3])          # {'image': ..., 'label': ...}
    """

    def __init__(
        self,
        path: str | os.PathLike,
        *,
        _fingerprint: int | None = None,
        _lazy: bool = False,
        _files: DatasetFiles | None = None,
    ):
        if _files is None:
            _files = DatasetFiles(os.path.abspath(_fs.check_path(path, "dataset path")), _fingerprint)
        self._state = _files
        self.path = _files.path
        if not _lazy:
            _files.open()

    # -- opening, closing and pickling

    def close(self) -> None:
        """Unmaps every data file now. Reads afterwards raise :class:`DatasetClosedError`.

        Columns taken from this Dataset are closed with it. Arrays already read are
        copies and stay valid. Calling ``close()`` again does nothing.
        """
        self._state.close()

    def __enter__(self) -> "Dataset":
        return self

    def __exit__(self, *exc: Any) -> None:
        self.close()

    def __reduce__(self):
        return (_dataset_of, (self._state,))

    def __getattr__(self, name: str):
        # After unpickling, manifest/fields/_columns appear on first use.
        if name in ("manifest", "fields", "_columns"):
            state = self.__dict__.get("_state")
            if state is None:
                raise AttributeError(name)
            manifest = state.manifest
            self.__dict__.setdefault("manifest", manifest)
            self.__dict__.setdefault("fields", dict(manifest.fields))
            if "_columns" not in self.__dict__:
                self.__dict__["_columns"] = {
                    n: (_DatasetRaggedColumn if spec.ragged else _DatasetColumn)(state, n)
                    for n, spec in manifest.fields.items()
                }
            return self.__dict__[name]
        raise AttributeError(name)

    # -- the table

    def __getitem__(self, name: str) -> Column | RaggedColumn:
        try:
            return self._columns[name]
        except (KeyError, TypeError):
            raise SchemaError(f"{self.path}: no field {bounded_repr(name)}; fields are {bounded_repr(list(self.fields))}.") from None

    def __iter__(self) -> Iterator[str]:
        return iter(self.fields)

    def __len__(self) -> int:
        """The number of rows (not of fields: use ``len(ds.fields)``)."""
        return self.manifest.num_rows

    def __contains__(self, name: object) -> bool:
        return name in self.fields

    def get(self, name: str, default: Any = None) -> Any:
        """``ds[name]`` if the field exists, else ``default``."""
        # Mapping.get catches only KeyError; an unknown field raises SchemaError.
        return self._columns.get(name, default)

    def keys(self) -> KeysView:
        return self._columns.keys()

    def values(self) -> ValuesView:
        return self._columns.values()

    def items(self) -> ItemsView:
        return self._columns.items()

    @property
    def num_rows(self) -> int:
        """The number of rows."""
        return self.manifest.num_rows

    @property
    def num_shards(self) -> int:
        """The number of shards."""
        return len(self.manifest.shards)

    def __repr__(self) -> str:
        fields = ", ".join(f"{n}: {s.dtype}{list(s.shape)}" for n, s in self.fields.items())
        return f"<memseq.Dataset {self.path!r} rows={self.num_rows} shards={self.num_shards} {{{fields}}}>"

    def take(self, indices: Any, fields: Sequence[str] | None = None) -> dict[str, np.ndarray]:
        """Gathers the same rows of several fields at once.

        Rows are read in ascending order and returned in the order asked for.

        Args:
            indices: 1-D integer row indices or a boolean mask.
            fields: Field names to read; all fields by default.

        Returns:
            A dict of field name -> numpy array of shape ``(len(indices), *row_shape)``.

        Raises:
            BatchIndexError: If an index is out of range.
            SchemaError: If a field does not exist.
            CorruptFileError: If a file was truncated since it was opened.

        Example:
            >>> ds.take([3, 1, 2], fields=["label"])
            {'label': array([3, 1, 2])}
        """
        names = list(self.fields) if fields is None else list(fields)
        columns = [self[name] for name in names]
        # Validate and sort the indices once for all fields.
        idx, ascending = row_indices(indices, self.num_rows, what=self.path)
        order = None if ascending else np.argsort(idx, kind="stable")
        sorted_idx = idx if order is None else idx[order]
        out = {}
        for name, col in zip(names, columns):
            if isinstance(col, RaggedColumn):
                out[name] = col.take(idx)
                continue
            out[name] = np.empty((len(idx), *col.row_shape), col.dtype)
            col.take_sorted(sorted_idx, order, out[name])
        return out

    def verify(self) -> None:
        """Checks the bytes this Dataset serves against the manifest's checksums.

        The checksums are computed over the Dataset's own mappings, so they check
        exactly what reads return, even if the files on disk have been replaced since.
        Every file is read once, sequentially, without holding it in memory.

        Raises:
            CorruptFileError: Naming the first file whose size or checksum is wrong,
                or whose offsets (of a variable-length field) are not valid.
            DatasetReplacedError: If everything this Dataset serves is intact, but the
                dataset on disk was replaced since it was opened (open it again to
                verify the new one).
            DatasetClosedError: If the Dataset was closed.
        """
        files = self._state.mapped()
        for s, shard in enumerate(self.manifest.shards):
            for name, entry in shard.files.items():
                part = files[name][s]
                if isinstance(part, RaggedPart):
                    check_offsets(part)  # first: its message says what is wrong, a checksum only that something is
                    _verify_file(part.offsets, name, entry.offsets.checksum)
                    part = part.values
                _verify_file(part, name, entry.checksum)
        if not self._state.is_current():
            raise DatasetReplacedError(
                f"{self.path}: the dataset on disk was replaced after this Dataset opened it. The data this "
                "Dataset serves (the version it opened) are intact; open the path again to read and verify the new one."
            )

    def records(self, fields: Sequence[str] | None = None) -> Any:
        """A Grain-ready record view: item ``i`` is ``{field: row i}`` (see :class:`memseq.Records`).

        Thread-safe, picklable by reference (workers reopen the dataset by path),
        with a batched ``_getitems``. Example:
        ``grain.MapDataset.source(ds.records()).shuffle(seed=0).batch(64)``.
        """
        from memseq.read.records import Records

        return Records(self, fields)


def _verify_file(part: MappedFile, name: str, checksum: str) -> None:
    from memseq.storage.checksum import crc32_of_array

    part.check_size()
    actual = fmt.format_checksum(crc32_of_array(part.data(), between=part.check_size))
    if actual != checksum:
        raise CorruptFileError(
            f"{part.path}: checksum mismatch for field {name!r}: manifest says {checksum}, "
            f"the file has {actual}. The file is corrupt."
        )


def _manifest_fingerprint(directory: str) -> int | None:
    """CRC-32 of the manifest's bytes, or None if it cannot be read (read_manifest reports why)."""
    try:
        return crc32(fmt.read_manifest_bytes(directory))
    except MemseqError:
        return None


def _dataset_of(files: DatasetFiles) -> Dataset:
    return Dataset(files.path, _lazy=True, _files=files)


def open(path: str | os.PathLike) -> Dataset:  # noqa: A001 - mirrors io.open / np.load naming
    """Opens a memseq dataset for reading.

    Validates the manifest, every ``.npy`` header (dtype, row shape, row count)
    and every file's size before returning; reads no data.

    Args:
        path: The dataset directory.

    Returns:
        A read-only :class:`Dataset`.

    Raises:
        DatasetNotFoundError: If the directory, manifest or a data file is missing.
        NotRegularFileError: If the manifest or a data file is a FIFO, socket,
            device or directory.
        DatasetPermissionError, FileAccessError: If a file cannot be opened.
        FormatError: If the manifest or a header is invalid or disagrees with the other.
        UnsafePathError: If the manifest names a file outside the directory.
        CorruptFileError: If a file has the wrong size, or a variable-length field's
            offsets do not start at 0 and end at its number of values.

    Example:
        >>> ds = memseq.open("data/train")
        >>> ds["image"][0:4].shape
        (4, 64, 64, 3)
    """
    return Dataset(path)
