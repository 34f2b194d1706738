"""Converting existing data into memseq datasets: streaming, parallel, atomic.

Sources
-------
Each source kind reads rows ``[start, stop)`` on demand and never loads a whole
file into memory:

- :class:`NpySource`: one ``.npy`` file per field, memory-mapped (``np.save`` output).
- :class:`NpzSource`: the arrays of an ``.npz`` archive. Stored members (``np.savez``)
  are read in place with ``pread``; compressed members (``np.savez_compressed``) are
  decompressed as a stream (a job that starts in the middle of a compressed member
  has to decompress everything before its rows, so compressed archives gain little
  from ``jobs > 1``).
- :class:`RawSource`: headerless files as ``np.memmap(..., mode="w+")`` writes them,
  opened with :func:`memseq.open_raw` (the dtype and shape must be given).
- :class:`HDF5Source`: datasets of an HDF5 file, read by ``h5py`` slicing (needs the
  optional ``h5py``: ``pip install "memseq[convert]"``).
- :class:`ImageFolderSource`: a folder with one sub-folder per class, giving the
  fields ``image`` (``uint8``, ``(height, width, channels)``) and ``label``
  (``int64``, the index of the class in alphabetical order). Images are decoded one
  at a time with Pillow (optional: ``pip install "memseq[convert]"``).

Several sources can be combined (say images from an ``.npy`` file and labels from
an HDF5 file) as long as they have the same number of rows and distinct field names.

Output
------
:func:`convert` writes the same bytes as :func:`memseq.save` would for the same
arrays and ``shard_rows``: the layout (which rows go into which shard file)
depends only on the number of rows and ``shard_rows``, never on ``jobs``, so
``jobs=1`` and ``jobs=8`` produce byte-identical datasets.

How ``jobs > 1`` stays atomic: the parent validates every source, creates a
temporary directory beside the destination and pre-sizes every data file in it
with its final ``.npy`` header. The rows are cut into work units (a few MiB each,
never straddling a shard), and a pool of worker processes writes each unit's rows
at their final offsets with ``pwrite``, returning the CRC-32 of each piece. The
parent combines the pieces' CRC-32s in file order (``crc32_combine``, no second
read), fsyncs the files, writes the manifest *last*, and renames the directory
into place. Any error (a corrupt image, a truncated file, a worker killed, Ctrl-C)
removes the temporary directory: nothing appears at the destination.
"""

from __future__ import annotations

import dataclasses
import functools
import json
import multiprocessing
import os
import shutil
import struct
import uuid
import zipfile
import zlib
from collections.abc import Callable, Iterable, Mapping, Sequence
from typing import Any

import numpy as np

from memseq import _commit
from memseq import format as fmt
from memseq.dataset import Dataset, open_raw
from memseq.dataset import open as open_dataset
from memseq.errors import (
    CorruptFileError,
    DatasetNotFoundError,
    FormatError,
    MemseqError,
    SchemaError,
)

__all__ = [
    "Source",
    "NpySource",
    "NpzSource",
    "RawSource",
    "HDF5Source",
    "ImageFolderSource",
    "MemseqSource",
    "convert",
    "source_for_path",
    "parse_field_option",
    "parse_raw_option",
    "parse_shape",
    "write_classes",
    "crc32_combine",
    "IMAGE_EXTENSIONS",
]

# A work unit holds about this many bytes of rows (all fields together): large
# enough that per-unit overhead (a pickle round trip, a CRC combine) is negligible,
# small enough that the progress bar moves and jobs balance.
_UNIT_BYTES = 32 * 2**20
# Inside a unit, rows are read and written in pieces of about this many bytes.
_CHUNK_BYTES = 8 * 2**20
_NPY_MAGIC = b"\x93NUMPY"
_ZIP_MAGIC = b"PK\x03\x04"
_HDF5_MAGIC = b"\x89HDF\r\n\x1a\n"
_HDF5_EXTENSIONS = (".h5", ".hdf5", ".hdf", ".he5")
#: File name extensions (lower case) that :class:`ImageFolderSource` reads.
IMAGE_EXTENSIONS = (".png", ".jpg", ".jpeg", ".bmp", ".gif", ".tif", ".tiff", ".webp", ".ppm", ".pgm", ".pbm")


# --------------------------------------------------------------------------- sources


class Source:
    """Base class of conversion sources: a table of rows read on demand.

    Subclasses set ``fields`` (name -> :class:`memseq.format.FieldSpec`),
    ``num_rows`` and ``description`` in their constructor, after validating the
    input, and implement :meth:`read`. A source is pickled to worker processes: it
    must hold paths and small metadata only, and reopen files lazily.

    Attributes:
        fields: The fields this source provides.
        num_rows: Its number of rows.
        description: A short human-readable description (for messages).
        max_unit_rows: Largest number of rows per work unit, or None for no limit
            (sources that decode rows one by one, like images, set a small one).
    """

    fields: dict[str, fmt.FieldSpec]
    num_rows: int
    description: str
    max_unit_rows: int | None = None

    def read(self, start: int, stop: int) -> dict[str, np.ndarray]:
        """Returns rows ``[start, stop)`` of every field."""
        raise NotImplementedError

    def close(self) -> None:
        """Releases open files (they are reopened on the next read)."""

    def _set_table(self, fields: dict[str, fmt.FieldSpec], rows: dict[str, int], what: str) -> None:
        """Sets ``fields`` and ``num_rows`` of a container of several arrays, which need equal row counts."""
        if len(set(rows.values())) > 1:
            raise SchemaError(f"{self.path}: the {what} have different numbers of rows: {rows}.")
        self.fields = fields
        self.num_rows = next(iter(rows.values()))
        self.description = self.path

    def __getstate__(self) -> dict[str, Any]:
        state = self.__dict__.copy()
        for key in list(state):
            if key.startswith("_open"):
                state[key] = None
        return state

    def __repr__(self) -> str:
        return f"<{type(self).__name__} {self.description} rows={self.num_rows} fields={list(self.fields)}>"


def _missing(path: str, what: str) -> DatasetNotFoundError:
    if os.path.isdir(path):
        return DatasetNotFoundError(f"{path}: is a directory, expected {what}.")
    return DatasetNotFoundError(f"{path}: no such file ({what}).")


def _check_file(path: str, what: str) -> str:
    path = os.fspath(path)
    if not os.path.isfile(path):
        raise _missing(path, what)
    return path


def _spec(name: str, dtype: Any, row_shape: Sequence[int], where: str) -> fmt.FieldSpec:
    try:
        return fmt.field_spec(name, dtype, tuple(row_shape))
    except SchemaError as e:
        raise SchemaError(f"{where}: {e}") from e


class NpySource(Source):
    """A ``.npy`` file as one field, memory-mapped and read a chunk at a time.

    Args:
        path: The ``.npy`` file (C order, bool or numeric dtype, at least 1-D).
        name: The field name; the file's stem by default.

    Raises:
        DatasetNotFoundError: If the file does not exist.
        FormatError: If it is not a readable C-order ``.npy`` file.
        CorruptFileError: If it is shorter (truncated) or longer than its header says.
        SchemaError: For an unsupported dtype, a 0-d array or an invalid name.
    """

    def __init__(self, path: str | os.PathLike, name: str | None = None):
        self.path = _check_file(os.fspath(path), "a .npy file")
        name = os.path.splitext(os.path.basename(self.path))[0] if name is None else name
        with open(self.path, "rb") as f:
            dtype, shape, offset = fmt.read_npy_header(f, self.path)
            size = os.fstat(f.fileno()).st_size
        if not shape:
            raise SchemaError(f"{self.path}: a 0-d array has no rows; memseq fields need shape (rows, ...).")
        spec = _spec(name, dtype, shape[1:], self.path)
        expected = offset + shape[0] * spec.row_nbytes
        if size != expected:
            raise CorruptFileError(
                f"{self.path}: the .npy header says shape {shape} of {dtype} ({expected} bytes with the header) "
                f"but the file is {size} bytes ({'truncated' if size < expected else 'has trailing bytes'})."
            )
        self.offset = offset
        self.shape = shape
        self.fields = {name: spec}
        self.num_rows = shape[0]
        self.description = self.path
        self._open_column = None

    def read(self, start: int, stop: int) -> dict[str, np.ndarray]:
        if self._open_column is None:
            spec = next(iter(self.fields.values()))
            self._open_column = open_raw(self.path, spec.dtype, self.shape, offset=self.offset)
        (name,) = self.fields
        return {name: self._open_column[start:stop]}

    def close(self) -> None:
        self._open_column = None


class RawSource(Source):
    """A headerless raw file (``np.memmap(..., mode="w+")`` output) as one field.

    Args:
        path: The raw file.
        name: The field name.
        dtype: The element dtype, e.g. ``"float32"``.
        shape: The full shape, rows first; one ``-1`` is inferred from the file size.
        offset: Bytes to skip at the start of the file.

    Raises:
        DatasetNotFoundError: If the file does not exist.
        CorruptFileError: If the file size does not fit ``dtype`` and ``shape``.
        SchemaError: For an invalid name, dtype or shape.
    """

    def __init__(self, path: str | os.PathLike, name: str, dtype: Any, shape: Sequence[int] | int, offset: int = 0):
        self.path = _check_file(os.fspath(path), "a raw array file")
        fmt.check_field_name(name)
        column = open_raw(self.path, dtype, shape, offset=offset)
        self.dtype = column.dtype
        self.shape = column.shape
        self.offset = int(offset)
        self.fields = {name: _spec(name, column.dtype, column.shape[1:], self.path)}
        self.num_rows = column.shape[0]
        self.description = self.path
        self._open_column = column

    def read(self, start: int, stop: int) -> dict[str, np.ndarray]:
        if self._open_column is None:
            self._open_column = open_raw(self.path, self.dtype, self.shape, offset=self.offset)
        (name,) = self.fields
        return {name: self._open_column[start:stop]}

    def close(self) -> None:
        self._open_column = None


def _read_npy_header_stream(f: Any, where: str) -> tuple[np.dtype, tuple[int, ...]]:
    try:
        version = np.lib.format.read_magic(f)
        if version == (1, 0):
            shape, fortran, dtype = np.lib.format.read_array_header_1_0(f)
        elif version in ((2, 0), (3, 0)):
            shape, fortran, dtype = np.lib.format.read_array_header_2_0(f)
        else:
            raise ValueError(f"unsupported .npy version {version}")
    except (ValueError, SyntaxError, struct.error, EOFError, OSError, zipfile.BadZipFile, zlib.error) as e:
        raise FormatError(f"{where}: not a readable .npy member ({e}).") from e
    if fortran:
        raise FormatError(f"{where}: Fortran-order arrays are not supported; save C-order arrays.")
    return dtype, tuple(shape)


@dataclasses.dataclass
class _NpzMember:
    key: str                 # member name without ".npy"
    compressed: bool
    dtype: np.dtype
    shape: tuple[int, ...]
    data_offset: int         # stored members: absolute offset of the array data in the .npz file
    header_length: int       # compressed members: bytes of .npy header inside the member


class NpzSource(Source):
    """Arrays of an ``.npz`` archive (``np.savez`` or ``np.savez_compressed``) as fields.

    Args:
        path: The ``.npz`` file.
        keys: Which arrays to take: a mapping of field name -> array name in the
            archive, a list of array names (used as field names), or None for all.

    Raises:
        DatasetNotFoundError: If the file does not exist.
        FormatError: If it is not a readable zip archive of ``.npy`` members.
        CorruptFileError: If a member's size does not match its header.
        SchemaError: For an unknown array name, an unsupported dtype or invalid names.
    """

    def __init__(self, path: str | os.PathLike, keys: Mapping[str, str] | Sequence[str] | None = None):
        self.path = _check_file(os.fspath(path), "an .npz file")
        try:
            zf = zipfile.ZipFile(self.path)
        except (zipfile.BadZipFile, OSError) as e:
            raise FormatError(f"{self.path}: not a readable .npz (zip) archive ({e}); truncated or not an .npz?") from e
        with zf:
            available = [i.filename[:-4] for i in zf.infolist() if i.filename.endswith(".npy")]
            if keys is None:
                selection = {k: k for k in available}
            elif isinstance(keys, Mapping):
                selection = dict(keys)
            else:
                selection = {k: k for k in keys}
            if not selection:
                raise FormatError(f"{self.path}: the archive holds no .npy arrays.")
            self.members: dict[str, _NpzMember] = {}
            fields = {}
            rows = {}
            for name, key in selection.items():
                if key not in available:
                    raise SchemaError(f"{self.path}: no array {key!r} in the archive; arrays are {available}.")
                member = self._inspect(zf, zf.getinfo(key + ".npy"), key)
                if not member.shape:
                    raise SchemaError(f"{self.path}[{key!r}]: a 0-d array has no rows.")
                fields[name] = _spec(name, member.dtype, member.shape[1:], f"{self.path}[{key!r}]")
                self.members[name] = member
                rows[name] = member.shape[0]
        self._set_table(fields, rows, "arrays")
        self._open_fd = None
        self._open_zip = None
        self._open_streams = None

    def _inspect(self, zf: zipfile.ZipFile, info: zipfile.ZipInfo, key: str) -> _NpzMember:
        where = f"{self.path}[{key!r}]"
        try:
            with zf.open(info) as f:
                dtype, shape = _read_npy_header_stream(f, where)
                header_length = f.tell()
        except (zipfile.BadZipFile, zlib.error, OSError, EOFError) as e:
            raise CorruptFileError(f"{where}: cannot read the member ({e}).") from e
        nbytes = int(np.prod(shape, dtype=np.int64)) * dtype.itemsize
        if info.file_size != header_length + nbytes:
            raise CorruptFileError(
                f"{where}: the header says shape {shape} of {dtype} ({header_length + nbytes} bytes) "
                f"but the member holds {info.file_size} bytes."
            )
        compressed = info.compress_type != zipfile.ZIP_STORED
        data_offset = 0
        if not compressed:
            # The member's bytes start after its local file header (30 bytes plus
            # the name and the extra field, whose lengths sit at bytes 26..29).
            with open(self.path, "rb") as f:
                f.seek(info.header_offset)
                local = f.read(30)
            if len(local) != 30 or local[:4] != _ZIP_MAGIC:
                raise CorruptFileError(f"{where}: bad local zip header.")
            name_len, extra_len = struct.unpack("<HH", local[26:30])
            data_offset = info.header_offset + 30 + name_len + extra_len + header_length
            if os.path.getsize(self.path) < data_offset + nbytes:
                raise CorruptFileError(f"{where}: the archive is truncated.")
        return _NpzMember(key, compressed, dtype, shape, data_offset, header_length)

    def read(self, start: int, stop: int) -> dict[str, np.ndarray]:
        out = {}
        for name, member in self.members.items():
            spec = self.fields[name]
            buf = np.empty((stop - start, *spec.shape), spec.dtype)
            view = memoryview(buf.reshape(-1).view(np.uint8)) if buf.size else memoryview(b"")
            if not member.compressed:
                if self._open_fd is None:
                    self._open_fd = os.open(self.path, os.O_RDONLY | getattr(os, "O_CLOEXEC", 0))
                _pread_exact(self._open_fd, view, member.data_offset + start * spec.row_nbytes, f"{self.path}[{member.key!r}]")
            else:
                self._read_compressed(name, member, start, view)
            out[name] = buf
        return out

    def _read_compressed(self, name: str, member: _NpzMember, start: int, view: memoryview) -> None:
        where = f"{self.path}[{member.key!r}]"
        if self._open_zip is None:
            self._open_zip = zipfile.ZipFile(self.path)
            self._open_streams = {}
        streams = self._open_streams
        target = member.header_length + start * self.fields[name].row_nbytes
        try:
            stream = streams.get(name)
            if stream is None or stream.tell() > target:
                if stream is not None:
                    stream.close()
                stream = streams[name] = self._open_zip.open(member.key + ".npy")
            # Forward seeks decompress and discard: sequential units cost nothing extra.
            if stream.tell() != target:
                stream.seek(target)
            got = 0
            while got < len(view):
                n = stream.readinto(view[got:])
                if not n:
                    raise CorruptFileError(f"{where}: the compressed member ends early (truncated archive?).")
                got += n
        except (zipfile.BadZipFile, zlib.error, EOFError) as e:
            raise CorruptFileError(f"{where}: corrupt compressed data ({e}).") from e

    def close(self) -> None:
        for stream in (self._open_streams or {}).values():
            stream.close()
        if self._open_zip is not None:
            self._open_zip.close()
        if self._open_fd is not None:
            os.close(self._open_fd)
        self._open_fd = self._open_zip = self._open_streams = None


def _pread_exact(fd: int, view: memoryview, offset: int, where: str) -> None:
    got = 0
    while got < len(view):
        n = os.preadv(fd, [view[got:]], offset + got)
        if n == 0:
            raise CorruptFileError(f"{where}: the file ends early (truncated while converting?).")
        got += n


def _import_h5py() -> Any:
    try:
        import h5py
    except ImportError as e:
        raise MemseqError('HDF5 sources need h5py: pip install "memseq[convert]" (or pip install h5py).') from e
    return h5py


def _h5_field_name(dataset_path: str) -> str:
    return dataset_path.strip("/").replace("/", ".")


class HDF5Source(Source):
    """Datasets of an HDF5 file as fields, read by ``h5py`` slicing (needs h5py).

    Args:
        path: The HDF5 file.
        datasets: A mapping of field name -> dataset path in the file (``"/x"`` or
            ``"group/x"``), a list of dataset paths (field names are the paths with
            ``/`` turned into ``.``), or None for every dataset in the file.

    Raises:
        DatasetNotFoundError: If the file does not exist.
        FormatError: If it is not a readable HDF5 file or a path is not a dataset.
        SchemaError: For a missing dataset, unsupported dtype or unequal lengths.
        MemseqError: If h5py is not installed.
    """

    def __init__(self, path: str | os.PathLike, datasets: Mapping[str, str] | Sequence[str] | None = None):
        self.path = _check_file(os.fspath(path), "an HDF5 file")
        h5py = _import_h5py()
        try:
            f = h5py.File(self.path, "r")
        except OSError as e:
            raise FormatError(f"{self.path}: not a readable HDF5 file ({e}).") from e
        with f:
            if datasets is None:
                found: list[str] = []
                f.visititems(lambda name, obj: found.append("/" + name) if isinstance(obj, h5py.Dataset) else None)
                if not found:
                    raise FormatError(f"{self.path}: the file holds no datasets.")
                selection = {_h5_field_name(p): p for p in found}
            elif isinstance(datasets, Mapping):
                selection = dict(datasets)
            else:
                selection = {_h5_field_name(p): p for p in datasets}
            self.datasets: dict[str, str] = {}
            fields = {}
            rows = {}
            for name, dpath in selection.items():
                where = f"{self.path}:{dpath}"
                try:
                    obj = f[dpath]
                except (KeyError, ValueError) as e:
                    raise SchemaError(f"{where}: no such dataset in the file.") from e
                if not isinstance(obj, h5py.Dataset):
                    raise FormatError(f"{where}: is a {type(obj).__name__}, not a dataset.")
                if obj.shape is None or len(obj.shape) == 0:
                    raise SchemaError(f"{where}: a scalar dataset has no rows.")
                fields[name] = _spec(name, obj.dtype, obj.shape[1:], where)
                self.datasets[name] = dpath
                rows[name] = int(obj.shape[0])
        self._set_table(fields, rows, "datasets")
        self._open_file = None

    def read(self, start: int, stop: int) -> dict[str, np.ndarray]:
        if self._open_file is None:
            self._open_file = _import_h5py().File(self.path, "r")
        out = {}
        for name, dpath in self.datasets.items():
            spec = self.fields[name]
            buf = np.empty((stop - start, *spec.shape), spec.dtype)
            try:
                if stop > start:
                    self._open_file[dpath].read_direct(buf, np.s_[start:stop])
            except (OSError, ValueError, TypeError) as e:
                raise CorruptFileError(f"{self.path}:{dpath}: cannot read rows {start}:{stop} ({e}).") from e
            out[name] = buf
        return out

    def close(self) -> None:
        if self._open_file is not None:
            self._open_file.close()
        self._open_file = None


class MemseqSource(Source):
    """An existing memseq dataset (to re-shard it, or to combine it with other sources).

    Args:
        path: The dataset directory.
        fields: Field names to take; all by default.

    Raises:
        DatasetNotFoundError, FormatError, CorruptFileError: From :func:`memseq.open`.
        SchemaError: For an unknown field.
    """

    def __init__(self, path: str | os.PathLike, fields: Sequence[str] | None = None):
        self.path = os.fspath(path)
        dataset = open_dataset(self.path)
        names = list(dataset.fields) if fields is None else list(fields)
        for name in names:
            dataset[name]  # SchemaError naming the fields if unknown
        self.fields = {name: dataset.fields[name] for name in names}
        self.num_rows = dataset.num_rows
        self.description = self.path
        self._open_dataset = dataset

    def read(self, start: int, stop: int) -> dict[str, np.ndarray]:
        if self._open_dataset is None:
            self._open_dataset = open_dataset(self.path)
        return {name: self._open_dataset[name][start:stop] for name in self.fields}

    def close(self) -> None:
        self._open_dataset = None


def _import_pil() -> Any:
    try:
        from PIL import Image
    except ImportError as e:
        raise MemseqError('Image folders need Pillow: pip install "memseq[convert]" (or pip install pillow).') from e
    return Image


class ImageFolderSource(Source):
    """A folder of images with one sub-folder per class: fields ``image`` and ``label``.

    Classes are the sub-folder names in alphabetical order; ``label`` is the index
    of the class in :attr:`classes`. Rows follow the classes, and inside a class the
    file names, in alphabetical order. Hidden files and folders (``.name``) and files
    whose extension is not in :data:`IMAGE_EXTENSIONS` are ignored. memseq's format
    has no place for class names: keep :attr:`classes` yourself (``memseq convert``
    prints them and can write them to a JSON file with ``--classes-file``).

    Args:
        path: The folder.
        image_size: ``(height, width)`` to resize every image to (bilinear). By
            default the first image's size is used and every other image must have
            it (a differently sized image is an error, not silently resized).
        color: ``"rgb"`` (3 channels) or ``"gray"`` (1 channel); images are
            converted to it.

    Raises:
        DatasetNotFoundError: If the folder does not exist.
        FormatError: If it has no class sub-folders or a class has no images.
        CorruptFileError: If the first image cannot be read (others fail on reading).
        MemseqError: If Pillow is not installed.
    """

    max_unit_rows = 256

    def __init__(self, path: str | os.PathLike, image_size: Sequence[int] | int | None = None, color: str = "rgb"):
        self.path = os.fspath(path)
        if not os.path.isdir(self.path):
            raise DatasetNotFoundError(f"{self.path}: no such folder (an image folder with one sub-folder per class).")
        _import_pil()
        if color not in ("rgb", "gray"):
            raise SchemaError(f"color must be 'rgb' or 'gray'. Received: {color!r}")
        self.color = color
        classes = sorted(e.name for e in os.scandir(self.path) if e.is_dir() and not e.name.startswith("."))
        if not classes:
            raise FormatError(f"{self.path}: no class sub-folders; expected {self.path}/<class name>/<image files>.")
        files: list[str] = []
        labels: list[int] = []
        for label, cls in enumerate(classes):
            folder = os.path.join(self.path, cls)
            names = sorted(
                e.name
                for e in os.scandir(folder)
                if e.is_file() and not e.name.startswith(".") and os.path.splitext(e.name)[1].lower() in IMAGE_EXTENSIONS
            )
            if not names:
                raise FormatError(
                    f"{folder}: class folder {cls!r} has no images (extensions {', '.join(IMAGE_EXTENSIONS)})."
                )
            files += [os.path.join(folder, n) for n in names]
            labels += [label] * len(names)
        self.classes = classes
        self.files = files
        self.labels = np.asarray(labels, dtype=np.int64)
        self.resize = image_size is not None
        if image_size is None:
            first = self._decode(files[0], None)
            height, width = first.shape[:2]
        else:
            height, width = _image_size(image_size)
        channels = 3 if color == "rgb" else 1
        self.image_size = (height, width)
        self.fields = {
            "image": fmt.field_spec("image", np.uint8, (height, width, channels)),
            "label": fmt.field_spec("label", np.int64, ()),
        }
        self.num_rows = len(files)
        self.description = f"{self.path} ({len(classes)} classes)"

    def _decode(self, path: str, size: tuple[int, int] | None) -> np.ndarray:
        Image = _import_pil()
        try:
            with Image.open(path) as im:
                im = im.convert("RGB" if self.color == "rgb" else "L")
                if size is not None and im.size != (size[1], size[0]):
                    if not self.resize:
                        raise SchemaError(
                            f"{path}: the image is {im.size[1]}x{im.size[0]} (height x width) but the dataset's "
                            f"images are {size[0]}x{size[1]} (the size of the first image, {self.files[0]}). "
                            "Pass an image size (--image-size HxW) to resize every image."
                        )
                    im = im.resize((size[1], size[0]), Image.BILINEAR)
                array = np.asarray(im, dtype=np.uint8)
        except MemseqError:
            raise
        except (OSError, ValueError, SyntaxError, Image.DecompressionBombError) as e:
            raise CorruptFileError(f"{path}: not a readable image ({e}).") from e
        return array[:, :, None] if array.ndim == 2 else array

    def read(self, start: int, stop: int) -> dict[str, np.ndarray]:
        images = np.empty((stop - start, *self.fields["image"].shape), np.uint8)
        for i in range(start, stop):
            images[i - start] = self._decode(self.files[i], self.image_size)
        return {"image": images, "label": self.labels[start:stop].copy()}


def _image_size(value: Sequence[int] | int) -> tuple[int, int]:
    if isinstance(value, (int, np.integer)) and not isinstance(value, bool):
        dims = (int(value), int(value))
    else:
        dims = tuple(value)  # type: ignore[arg-type]
    if len(dims) != 2 or any(isinstance(d, bool) or not isinstance(d, (int, np.integer)) or d < 1 for d in dims):
        raise SchemaError(f"image_size must be (height, width) of positive ints, or one int. Received: {value!r}")
    return int(dims[0]), int(dims[1])


# --------------------------------------------------------------------------- option parsing


def parse_shape(text: str) -> tuple[int, ...]:
    """Parses ``"-1,64,64,3"`` (or ``"-1x64x64x3"``, or ``"(-1, 64)"``) into a tuple of ints.

    Raises:
        SchemaError: If a part is not an integer.
    """
    cleaned = text.strip().strip("()[]").replace("x", ",").replace("X", ",")
    parts = [p.strip() for p in cleaned.split(",") if p.strip()]
    try:
        dims = tuple(int(p) for p in parts)
    except ValueError:
        dims = ()
    if not dims:
        raise SchemaError(f"A shape is comma-separated integers, rows first, e.g. -1,64,64,3. Received: {text!r}")
    return dims


def _split_existing(text: str) -> tuple[str, str | None]:
    """Splits ``PATH[:REST]`` at the first ``:`` whose prefix is an existing file.

    Paths may contain ``:``; the whole text wins if it is itself a file.
    """
    if os.path.exists(text) or ":" not in text:
        return text, None
    pos = text.find(":")
    while pos != -1:
        if os.path.isfile(text[:pos]):
            return text[:pos], text[pos + 1 :]
        pos = text.find(":", pos + 1)
    head, _, rest = text.partition(":")
    return head, rest  # the file does not exist: the source reports it


def _sniff(path: str) -> str:
    ext = os.path.splitext(path)[1].lower()
    if ext == ".npy":
        return "npy"
    if ext == ".npz":
        return "npz"
    if ext in _HDF5_EXTENSIONS:
        return "hdf5"
    try:
        with open(path, "rb") as f:
            head = f.read(8)
    except OSError:
        return "raw"
    if head.startswith(_NPY_MAGIC):
        return "npy"
    if head.startswith(_ZIP_MAGIC):
        return "npz"
    if head == _HDF5_MAGIC:
        return "hdf5"
    return "raw"


def _split_name(option: str, text: str) -> tuple[str, str]:
    name, sep, rest = text.partition("=")
    if not sep or not name or not rest:
        raise SchemaError(f"{option} takes NAME=PATH[:...], e.g. {option} image=images.npy. Received: {text!r}")
    fmt.check_field_name(name)
    return name, rest


def parse_raw_option(text: str) -> RawSource:
    """Parses ``--raw NAME=PATH:DTYPE:SHAPE[:OFFSET]`` into a :class:`RawSource`.

    Example: ``image=images.mmap:uint8:-1,64,64,3`` or ``x=x.dat:float32:-1,128:4096``.

    Raises:
        SchemaError: If the text does not have that form.
        DatasetNotFoundError, CorruptFileError: From :class:`RawSource`.
    """
    name, rest = _split_name("--raw", text)
    path, spec = _split_existing(rest)
    parts = (spec or "").split(":")
    if spec is None or len(parts) not in (2, 3):
        if not os.path.isfile(path):
            raise _missing(path, "a raw array file")
        raise SchemaError(
            f"--raw takes NAME=PATH:DTYPE:SHAPE[:OFFSET], e.g. image=images.mmap:uint8:-1,64,64,3. Received: {text!r}"
        )
    offset = 0
    if len(parts) == 3:
        try:
            offset = int(parts[2])
        except ValueError:
            raise SchemaError(f"--raw: OFFSET must be an integer number of bytes. Received: {parts[2]!r}") from None
    return RawSource(path, name, parts[0], parse_shape(parts[1]), offset)


def parse_field_option(text: str, *, dtype: str | None = None, shape: str | Sequence[int] | None = None) -> Source:
    """Parses ``--field NAME=PATH[:KEY]`` into a source, by the file's kind.

    - ``.npy``: ``NAME=file.npy`` (no KEY).
    - ``.npz``: ``NAME=file.npz[:ARRAY]``; the array is NAME unless ARRAY is given.
    - HDF5 (``.h5``, ``.hdf5``, ...): ``NAME=file.h5[:/dataset/path]``; the dataset
      is ``/NAME`` unless given.
    - anything else is a headerless raw file: ``NAME=file.mmap`` with ``dtype``
      and ``shape`` (``--dtype``/``--shape``), or ``NAME=file.mmap:DTYPE:SHAPE[:OFFSET]``
      as with ``--raw``.

    The kind is found from the extension, else from the file's magic bytes.

    Raises:
        SchemaError: For a malformed option.
        DatasetNotFoundError, FormatError, CorruptFileError: From the source.
    """
    name, rest = _split_name("--field", text)
    path, key = _split_existing(rest)
    if not os.path.isfile(path):
        raise _missing(path, f"the source of field {name!r}")
    kind = _sniff(path)
    if kind == "npy":
        if key:
            raise SchemaError(f"--field {text!r}: a .npy file holds one array; drop ':{key}'.")
        return NpySource(path, name)
    if kind == "npz":
        return NpzSource(path, {name: key or name})
    if kind == "hdf5":
        return HDF5Source(path, {name: key or "/" + name})
    if key:
        return parse_raw_option(f"{name}={path}:{key}")
    if dtype is None or shape is None:
        raise SchemaError(
            f"--field {text!r}: {path} is a headerless raw file; give its dtype and shape with --dtype and "
            "--shape, or use --raw NAME=PATH:DTYPE:SHAPE (e.g. --raw image=images.mmap:uint8:-1,64,64,3)."
        )
    return RawSource(path, name, dtype, parse_shape(shape) if isinstance(shape, str) else tuple(shape))


def source_for_path(path: str | os.PathLike, *, image_size: Sequence[int] | int | None = None, color: str = "rgb") -> Source:
    """A source for a whole input given as one path (``memseq convert SRC DST``).

    - a memseq dataset directory: its fields (:class:`MemseqSource`; to re-shard it);
    - another directory: an image folder (:class:`ImageFolderSource`);
    - an ``.npz`` file: all its arrays, named by their keys;
    - an HDF5 file: all its datasets, named by their paths (``group/x`` -> ``group.x``);
    - a ``.npy`` file: one field named after the file's stem.

    Raises:
        DatasetNotFoundError: If the path does not exist.
        FormatError: If its kind cannot be read as a whole (raw files need --raw).
    """
    path = os.fspath(path)
    if os.path.isdir(path):
        if os.path.isfile(os.path.join(path, fmt.MANIFEST_NAME)):
            return MemseqSource(path)
        return ImageFolderSource(path, image_size=image_size, color=color)
    if not os.path.exists(path):
        raise _missing(path, "a source file or image folder")
    kind = _sniff(path)
    if kind == "npz":
        return NpzSource(path)
    if kind == "hdf5":
        return HDF5Source(path)
    if kind == "npy":
        return NpySource(path)
    raise FormatError(
        f"{path}: not an .npy, .npz or HDF5 file, nor an image folder. For a headerless raw file use "
        "--raw NAME=PATH:DTYPE:SHAPE (e.g. --raw image=images.mmap:uint8:-1,64,64,3)."
    )


# --------------------------------------------------------------------------- CRC-32 combination

# CRC-32 of a concatenation from the CRC-32s of its parts (zlib's crc32_combine,
# which Python's zlib does not expose). An operator is a 32x32 matrix over GF(2),
# stored as 32 column ints; appending n zero bytes to the message is a linear map
# of the CRC register, applied to the first part's CRC.


def _gf2_times(mat: Sequence[int], vec: int) -> int:
    total = 0
    i = 0
    while vec:
        if vec & 1:
            total ^= mat[i]
        vec >>= 1
        i += 1
    return total


def _gf2_compose(a: Sequence[int], b: Sequence[int]) -> tuple[int, ...]:
    return tuple(_gf2_times(a, column) for column in b)


@functools.cache
def _zero_bytes_operator(nbytes: int) -> tuple[int, ...]:
    one_bit = (0xEDB88320,) + tuple(1 << n for n in range(31))
    op = _gf2_compose(one_bit, one_bit)  # 2 zero bits
    op = _gf2_compose(op, op)  # 4
    op = _gf2_compose(op, op)  # 8 bits: one zero byte
    result = tuple(1 << n for n in range(32))  # identity
    while nbytes:
        if nbytes & 1:
            result = _gf2_compose(op, result)
        nbytes >>= 1
        if nbytes:
            op = _gf2_compose(op, op)
    return result


def crc32_combine(crc1: int, crc2: int, len2: int) -> int:
    """CRC-32 of ``a + b`` from ``crc1 = crc32(a)``, ``crc2 = crc32(b)`` and ``len2 = len(b)``."""
    if len2 <= 0:
        return crc1
    return _gf2_times(_zero_bytes_operator(len2), crc1) ^ crc2


# --------------------------------------------------------------------------- the conversion


@dataclasses.dataclass(frozen=True)
class _Shard:
    start: int
    stop: int
    directory: str  # "" for a single unsharded shard


@dataclasses.dataclass
class _Plan:
    """Everything a worker needs: sources, fields, the temp dir and the file layout."""

    root: str
    sources: list[Source]
    fields: dict[str, fmt.FieldSpec]
    owner: dict[str, int]  # field -> index of its source
    shards: list[_Shard]
    header_lengths: dict[str, int]

    def rel_path(self, shard: int, name: str) -> str:
        directory = self.shards[shard].directory
        return f"{directory}/{name}.npy" if directory else f"{name}.npy"

    def path(self, shard: int, name: str) -> str:
        return os.path.join(self.root, self.rel_path(shard, name))


def _layout(num_rows: int, shard_rows: int | None) -> list[_Shard]:
    # The same layout memseq.Writer produces for these rows and shard_rows.
    if shard_rows is None:
        return [_Shard(0, num_rows, "")]
    if num_rows == 0:
        return [_Shard(0, 0, "shard-00000")]
    return [
        _Shard(start, min(num_rows, start + shard_rows), f"shard-{i:05d}")
        for i, start in enumerate(range(0, num_rows, shard_rows))
    ]


def _units(plan: _Plan, unit_rows: int) -> list[tuple[int, int, int]]:
    units = []
    for s, shard in enumerate(plan.shards):
        for start in range(shard.start, shard.stop, unit_rows):
            units.append((s, start, min(shard.stop, start + unit_rows)))
    return units


_WORKER_PLAN: _Plan | None = None
_WORKER_FDS: dict[str, int] = {}


def _init_worker(plan: _Plan | None) -> None:
    global _WORKER_PLAN
    _WORKER_PLAN = plan
    _WORKER_FDS.clear()


def _close_worker_files() -> None:
    for fd in _WORKER_FDS.values():
        os.close(fd)
    _WORKER_FDS.clear()
    if _WORKER_PLAN is not None:
        for source in _WORKER_PLAN.sources:
            source.close()


def _write_unit(unit: tuple[int, int, int], progress: Callable[[int], None] | None = None) -> dict[str, tuple[int, int]]:
    """Reads rows ``[start, stop)`` of shard ``s`` and writes them in place.

    Returns:
        Field name -> (CRC-32 of the bytes written, number of bytes).
    """
    plan = _WORKER_PLAN
    if plan is None:
        raise RuntimeError("memseq.convert: worker used before _init_worker().")
    s, start, stop = unit
    shard = plan.shards[s]
    row_bytes = sum(spec.row_nbytes for spec in plan.fields.values())
    step = max(1, _CHUNK_BYTES // max(row_bytes, 1))
    crcs = {name: 0 for name in plan.fields}
    for a in range(start, stop, step):
        b = min(stop, a + step)
        for i, source in enumerate(plan.sources):
            rows = source.read(a, b)
            for name, array in rows.items():
                if plan.owner[name] != i:
                    continue
                spec = plan.fields[name]
                if array.shape != (b - a, *spec.shape):
                    raise SchemaError(
                        f"{source.description}: field {name!r} rows {a}:{b} have shape {array.shape}; "
                        f"expected {(b - a, *spec.shape)}."
                    )
                data = np.ascontiguousarray(array, dtype=spec.dtype)
                view = memoryview(data.reshape(-1).view(np.uint8)) if data.size else memoryview(b"")
                crcs[name] = zlib.crc32(view, crcs[name])
                path = plan.path(s, name)
                fd = _WORKER_FDS.get(path)
                if fd is None:
                    fd = _WORKER_FDS[path] = os.open(path, os.O_WRONLY | getattr(os, "O_CLOEXEC", 0))
                offset = plan.header_lengths[name] + (a - shard.start) * spec.row_nbytes
                while view:
                    n = os.pwrite(fd, view, offset)
                    view, offset = view[n:], offset + n
        if progress is not None:
            progress(b - a)
    return {name: (crcs[name], (stop - start) * spec.row_nbytes) for name, spec in plan.fields.items()}


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
    if len({s.num_rows for s in sources}) > 1:
        rows = ", ".join(f"{s.description} ({', '.join(s.fields)}): {s.num_rows}" for s in sources)
        raise SchemaError(f"All sources need the same number of rows. Received: {rows}")
    return sources, fields, owner


def _pool_context() -> multiprocessing.context.BaseContext:
    # spawn: workers start clean (no inherited threads or locks, e.g. tqdm's or
    # TensorFlow's), as they will by default on Python 3.14 (forkserver).
    return multiprocessing.get_context("spawn")


def convert(
    dst: str | os.PathLike,
    sources: Source | Iterable[Source],
    *,
    shard_rows: int | None = None,
    jobs: int = 1,
    overwrite: bool = False,
    progress: bool | None = False,
) -> Dataset:
    """Converts sources into a memseq dataset at ``dst``, atomically.

    Args:
        dst: The dataset directory to create.
        sources: One source or several with equal row counts and distinct fields.
        shard_rows: Start a new shard every this many rows (one file per field by
            default). The output does not depend on ``jobs``.
        jobs: Worker processes writing in parallel (1: in this process).
        overwrite: Replace an existing memseq dataset at ``dst``.
        progress: Show a tqdm progress bar (None: only on a terminal).

    Returns:
        The new dataset, opened.

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
    dst = os.path.abspath(os.fspath(dst))
    if isinstance(sources, Source):
        sources = [sources]
    sources, fields, owner = _combine_sources(sources)
    if isinstance(jobs, bool) or not isinstance(jobs, int) or jobs < 1:
        raise SchemaError(f"jobs must be an int >= 1. Received: {jobs!r}")
    if shard_rows is not None and (isinstance(shard_rows, bool) or not isinstance(shard_rows, int) or shard_rows < 1):
        raise SchemaError(f"shard_rows must be a positive int or None. Received: {shard_rows!r}")
    _commit.check_target(dst, overwrite)
    num_rows = sources[0].num_rows

    tmp = _commit.make_temp_dir(dst)
    bar = None
    try:
        plan = _Plan(
            root=tmp,
            sources=sources,
            fields=fields,
            owner=owner,
            shards=_layout(num_rows, shard_rows),
            header_lengths={n: fmt.reserved_header_length(s.dtype, s.shape) for n, s in fields.items()},
        )
        # Pre-size every file with its final header; workers fill in the rows.
        for s, shard in enumerate(plan.shards):
            if shard.directory:
                os.mkdir(os.path.join(tmp, shard.directory))
            for field, spec in fields.items():
                with open(plan.path(s, field), "xb") as f:
                    f.write(fmt.npy_header(spec.dtype, (shard.stop - shard.start, *spec.shape), plan.header_lengths[field]))
                    f.truncate(plan.header_lengths[field] + (shard.stop - shard.start) * spec.row_nbytes)

        row_bytes = sum(spec.row_nbytes for spec in fields.values())
        unit_rows = max(1, _UNIT_BYTES // max(row_bytes, 1))
        for source in sources:
            if source.max_unit_rows is not None:
                unit_rows = min(unit_rows, source.max_unit_rows)
        units = _units(plan, unit_rows)

        from tqdm.auto import tqdm

        bar = tqdm(total=num_rows, unit="rows", unit_scale=True, desc=f"converting {os.path.basename(dst)}", disable=None if progress is None else not progress)
        results: dict[tuple[int, int, int], dict[str, tuple[int, int]]] = {}
        if jobs == 1 or len(units) <= 1:
            _init_worker(plan)
            try:
                for unit in units:
                    results[unit] = _write_unit(unit, bar.update)
            finally:
                _close_worker_files()
                _init_worker(None)
        else:
            from concurrent.futures import FIRST_EXCEPTION, ProcessPoolExecutor, wait
            from concurrent.futures.process import BrokenProcessPool

            with ProcessPoolExecutor(
                max_workers=min(jobs, len(units)), mp_context=_pool_context(), initializer=_init_worker, initargs=(plan,)
            ) as pool:
                futures = {pool.submit(_write_unit, unit): unit for unit in units}
                try:
                    pending = set(futures)
                    while pending:
                        done, pending = wait(pending, return_when=FIRST_EXCEPTION)
                        for future in done:
                            unit = futures[future]
                            results[unit] = future.result()  # re-raises a worker's error
                            bar.update(unit[2] - unit[1])
                except BrokenProcessPool as e:
                    raise MemseqError(
                        "A conversion worker process died (killed, out of memory, or the calling script "
                        "lacks an `if __name__ == \"__main__\":` guard, which multiprocessing's spawn needs)."
                    ) from e
                except BaseException:
                    for future in futures:
                        future.cancel()
                    raise
        for source in sources:
            source.close()

        # Combine the units' CRC-32s in file order, fsync, write the manifest last.
        shard_specs = []
        for s, shard in enumerate(plan.shards):
            entries = {}
            for field in fields:
                crc = 0
                for unit in sorted(u for u in units if u[0] == s):
                    piece_crc, piece_len = results[unit][field]
                    crc = crc32_combine(crc, piece_crc, piece_len)
                path = plan.path(s, field)
                fd = os.open(path, os.O_RDONLY)
                try:
                    os.fsync(fd)
                finally:
                    os.close(fd)
                entries[field] = fmt.FileEntry(plan.rel_path(s, field), fmt.format_checksum(crc))
            if shard.directory:
                _commit.fsync_dir(os.path.join(tmp, shard.directory))
            shard_specs.append(fmt.ShardSpec(shard.stop - shard.start, entries))
        manifest = fmt.Manifest(num_rows, dict(fields), tuple(shard_specs))
        _commit.write_manifest(tmp, manifest)
        _commit.publish(tmp, dst, overwrite)
    except BaseException:
        shutil.rmtree(tmp, ignore_errors=True)
        raise
    finally:
        if bar is not None:
            bar.close()
    return open_dataset(dst)


def write_classes(path: str | os.PathLike, classes: Sequence[str], dst: str | os.PathLike | None = None) -> None:
    """Writes class names as a JSON list (index = label), refusing paths inside ``dst``."""
    path = os.path.abspath(os.fspath(path))
    if dst is not None:
        root = os.path.abspath(os.fspath(dst))
        if os.path.commonpath([root, path]) == root:
            raise SchemaError(
                f"{path}: the classes file cannot go inside the dataset directory {root}: "
                "the memseq format does not allow extra files there."
            )
    tmp = f"{path}.tmp-{uuid.uuid4().hex[:8]}"
    with open(tmp, "w", encoding="utf-8") as f:
        json.dump(list(classes), f, indent=1)
        f.write("\n")
    os.replace(tmp, path)
