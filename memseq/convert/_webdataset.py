"""WebDataset tar shards as fields: one row per sample, members mapped to fields by extension.

A sample is a run of consecutive tar members with the same key (the member name up
to the first dot of its base name, as WebDataset splits it: ``000123.seg.png`` has
key ``000123`` and extension ``seg.png``). Each extension is one field, named after
it, and decoded by its last part:

- ``.npy``: the array (``np.save`` output, never unpickled); the same shape in every
  sample gives a fixed field, a varying first dimension a variable-length one;
- ``.cls``, ``.cls2``, ``.index``, ``.id``, ``.txt``: one integer in text (``int64``);
- images (``.jpg``, ``.png``, ...): decoded by Pillow at their exact mode (``L``,
  ``LA``, ``RGB``, ``RGBA``: ``uint8``; ``I;16``: ``uint16``; ``I``: ``int32``;
  ``F``: ``float32``), as ``(height, width, channels)``; every image of a field needs
  the first one's mode and size.

The shards' tar headers are all read when the source is made (the data are not), so
a sample missing a member, or a truncated shard, is refused before anything is
written. Members are read later with ``pread`` at their offsets.
"""

from __future__ import annotations

import io
import os
import re
import tarfile
from collections.abc import Mapping, Sequence
from typing import Any

import numpy as np

from memseq.convert._base import Source, field_spec_at, optional_module
from memseq.convert._images import _exact_dtype
from memseq.convert._inputs import RowIndex, input_files, input_name
from memseq.errors import CorruptFileError, FormatError, MemseqError, SchemaError
from memseq.storage import format as fmt

__all__ = ["WebDatasetSource", "WEBDATASET_EXTENSIONS"]

#: File name endings taken as WebDataset shards.
WEBDATASET_EXTENSIONS = (".tar",)
_INT_EXTENSIONS = ("cls", "cls2", "index", "id", "txt")
_IMAGE_EXTENSIONS = ("jpg", "jpeg", "png", "ppm", "pgm", "pbm", "bmp", "gif", "tif", "tiff", "webp")
# Pillow modes kept as they are (no colour conversion): mode -> channels.
_IMAGE_MODES = {"L": 1, "LA": 2, "RGB": 3, "RGBA": 4, "I;16": 1, "I;16L": 1, "I;16B": 1, "I": 1, "F": 1}
_KEY_RE = re.compile(r"^((?:.*/|)[^./][^.]*)[.]([^/]*)$")


def _split(name: str) -> tuple[str | None, str | None]:
    """(key, extension) of a member name, as WebDataset's ``base_plus_ext``; (None, None) for others."""
    match = _KEY_RE.match(name)
    return (match.group(1), match.group(2)) if match else (None, None)


def _decoder(ext: str) -> str:
    last = ext.rsplit(".", 1)[-1].lower()
    if last == "npy":
        return "npy"
    if last in _INT_EXTENSIONS:
        return "int"
    if last in _IMAGE_EXTENSIONS:
        return "image"
    return ""


def _scan_tar(path: str) -> list[tuple[str, dict[str, tuple[int, int]]]]:
    """The samples of a shard in order: (key, extension -> (data offset, size)).

    Raises:
        FormatError: If the file is not an uncompressed tar, or a sample repeats an extension.
        CorruptFileError: If a member's data run past the end of the file.
    """
    size = os.path.getsize(path)
    samples: list[tuple[str, dict[str, tuple[int, int]]]] = []
    try:
        with tarfile.open(path, "r:") as tar:
            for info in tar:
                if not info.isreg():
                    continue
                key, ext = _split(info.name)
                if key is None or os.path.basename(info.name).startswith(("_", ".")):
                    continue
                if info.offset_data + info.size > size:
                    raise CorruptFileError(f"{path}: truncated: member {info.name!r} needs {info.size} bytes at "
                                           f"byte {info.offset_data} but the file ends at {size}.")
                if not samples or samples[-1][0] != key:
                    samples.append((key, {}))
                members = samples[-1][1]
                if ext in members:
                    raise FormatError(f"{path}: sample {key!r} has two members with extension {ext!r}.")
                members[ext] = (info.offset_data, info.size)
    except tarfile.ReadError as e:
        with open(path, "rb") as f:
            compressed = f.read(2) == b"\x1f\x8b"
        hint = "a compressed tar; decompress it first (memseq reads members by offset)" if compressed else str(e)
        raise FormatError(f"{path}: not a readable uncompressed tar ({hint}).") from e
    except (tarfile.TarError, EOFError) as e:
        raise CorruptFileError(f"{path}: truncated or corrupt tar ({e}).") from e
    return samples


class WebDatasetSource(Source):
    """WebDataset tar shards as fields: one row per sample, one field per member extension.

    Args:
        paths: A ``.tar`` shard, a directory of them, a glob pattern (``shards/train-*.tar``)
            or a list of these; rows follow the shards in natural order, then the samples.
        fields: Which extensions to take: a list (field names = the extensions), a
            mapping of field name -> extension, or None for every extension of the
            first sample.

    Raises:
        DatasetNotFoundError: If a shard does not exist.
        FormatError: For a compressed or unreadable tar, a sample missing a member,
            or an extension memseq cannot decode.
        CorruptFileError: For a truncated shard.
        SchemaError: For ``.npy`` members that disagree, or an unusable first member.
    """

    max_unit_rows = 256

    def __init__(self, paths: str | os.PathLike | Sequence[str | os.PathLike],
                 fields: Mapping[str, str] | Sequence[str] | None = None):
        self.files = input_files(paths, WEBDATASET_EXTENSIONS, "WebDataset tar shards")
        self.path = input_name(paths, self.files)
        self._open_fds: dict[int, int] | None = None
        shards = [_scan_tar(p) for p in self.files]
        first = next((s[0] for s in shards if s), None)
        if first is None:
            raise FormatError(f"{self.path}: the shards hold no samples.")
        if fields is None:
            self.extensions = {ext: ext for ext in first[1]}
        elif isinstance(fields, Mapping):
            self.extensions = dict(fields)
        else:
            self.extensions = {ext: ext for ext in fields}
        exts = list(self.extensions.values())
        # Data offset and size of every member: (samples, fields) per shard.
        self.offsets, self.sizes, self.keys = [], [], []
        for path, samples in zip(self.files, shards):
            offsets = np.zeros((len(samples), len(exts)), np.int64)
            sizes = np.zeros((len(samples), len(exts)), np.int64)
            for i, (key, members) in enumerate(samples):
                for j, ext in enumerate(exts):
                    if ext not in members:
                        raise FormatError(
                            f"{path}: sample {key!r} has no {ext!r} member (it has {sorted(members)}); every sample "
                            "needs every field's member."
                        )
                    offsets[i, j], sizes[i, j] = members[ext]
            self.offsets.append(offsets)
            self.sizes.append(sizes)
            self.keys.append([key for key, _ in samples])
        self.index = RowIndex([len(k) for k in self.keys])
        self.decoders = {}
        self.fields = {}
        for j, (field, ext) in enumerate(self.extensions.items()):
            self.decoders[field] = _decoder(ext)
            if not self.decoders[field]:
                raise FormatError(
                    f"{self.files[0]}: extension {ext!r} (field {field!r}): memseq decodes .npy arrays, integers in "
                    f"{', '.join('.' + e for e in _INT_EXTENSIONS)} and images ({', '.join(_IMAGE_EXTENSIONS)}); "
                    "leave it out with fields=[...]."
                )
            where = f"{self.path}: field {field!r} ({ext!r} members)"
            dtype, shape = self._field_type(field, j, ext)
            self.fields[field] = field_spec_at(field, dtype, shape, where)
        self.num_rows = self.index.num_rows
        self.description = self.path
        self.close()  # workers open their own files

    def _field_type(self, field: str, j: int, ext: str) -> tuple[np.dtype, tuple[int | None, ...]]:
        decoder = self.decoders[field]
        file = next(i for i, k in enumerate(self.keys) if k)  # the first shard with samples
        if decoder == "int":
            self._decode(field, self._member(file, 0, j), self.files[file], self.keys[file][0], ext)
            return np.dtype(np.int64), ()
        if decoder == "image":
            image = self._image(self._member(file, 0, j), self.files[file], self.keys[file][0], ext, None)
            return image.dtype, image.shape
        # npy: every member's header, so that fixed and variable-length fields are known before writing.
        dtype, shape = None, None
        for file, path in enumerate(self.files):
            with open(path, "rb") as f:
                for i, key in enumerate(self.keys[file]):
                    where = f"{path}: sample {key!r} member {ext!r}"
                    f.seek(int(self.offsets[file][i, j]))
                    got_dtype, got_shape, header = fmt.read_npy_header(f, where)
                    if header + int(np.prod(got_shape, dtype=np.int64)) * got_dtype.itemsize != self.sizes[file][i, j]:
                        raise CorruptFileError(f"{where}: the .npy header says {got_dtype} {got_shape} but the member "
                                               f"holds {self.sizes[file][i, j]} bytes.")
                    if dtype is None:
                        dtype, shape = got_dtype, got_shape
                    elif got_dtype != dtype or got_shape[1:] != shape[1:] or len(got_shape) != len(shape):
                        raise SchemaError(f"{where}: holds {got_dtype} {got_shape}; the first sample's holds {dtype} "
                                          f"{shape}. A field's arrays need one dtype and the same trailing dimensions.")
                    elif got_shape != shape:
                        shape = (None, *shape[1:])
        return dtype, shape  # type: ignore[return-value]  # set: some shard has a sample

    def _member(self, file: int, i: int, j: int) -> bytes:
        if self._open_fds is None:
            self._open_fds = {}
        fd = self._open_fds.get(file)
        if fd is None:
            fd = self._open_fds[file] = os.open(self.files[file], os.O_RDONLY | getattr(os, "O_CLOEXEC", 0))
        size, offset = int(self.sizes[file][i, j]), int(self.offsets[file][i, j])
        data = os.pread(fd, size, offset)
        while len(data) < size:
            more = os.pread(fd, size - len(data), offset + len(data))
            if not more:
                raise CorruptFileError(f"{self.files[file]}: sample {self.keys[file][i]!r}: the shard ends early "
                                       "(truncated while converting?).")
            data += more
        return data

    def _image(self, data: bytes, path: str, key: str, ext: str, spec: fmt.FieldSpec | None) -> np.ndarray:
        Image = optional_module("PIL.Image", 'WebDataset images need Pillow: pip install "memseq[convert]".')
        where = f"{path}: sample {key!r} member {ext!r}"
        try:
            with Image.open(io.BytesIO(data)) as im:
                _exact_dtype(im, where)  # refuses colour images of more than 8 bits per channel
                if im.mode not in _IMAGE_MODES:
                    raise SchemaError(f"{where}: Pillow reads it in mode {im.mode!r}; memseq keeps images at their "
                                      f"exact mode, one of {', '.join(_IMAGE_MODES)}: convert the images first.")
                if im.mode.startswith("I;16"):
                    array = np.asarray(im).astype(np.uint16)  # Pillow gives native uint16 (or >u2 for I;16B)
                else:
                    array = np.asarray(im)
                mode = im.mode
        except MemseqError:
            raise
        except (OSError, ValueError, SyntaxError, Image.DecompressionBombError) as e:
            raise CorruptFileError(f"{where}: not a readable image ({e}).") from e
        if array.ndim == 2:
            array = array[:, :, None]
        if spec is not None and (array.dtype != spec.dtype or array.shape != spec.shape):
            raise SchemaError(f"{where}: a {array.shape[0]}x{array.shape[1]} {mode} image ({array.dtype}, "
                              f"{array.shape[2]} channels); the field's images are {spec.dtype} {spec.shape} (those "
                              "of the first sample). Every image of a field needs the same mode and size.")
        return array

    def _decode(self, field: str, data: bytes, path: str, key: str, ext: str) -> Any:
        decoder = self.decoders[field]
        where = f"{path}: sample {key!r} member {ext!r}"
        if decoder == "int":
            text = data.decode("utf-8", errors="replace").strip()
            try:
                value = int(text)
            except ValueError:
                raise SchemaError(f"{where}: holds {text[:40]!r}, not an integer; {ext!r} members are read as "
                                  "integer labels (leave the field out with fields=[...]).") from None
            if not -(2**63) <= value < 2**63:
                raise SchemaError(f"{where}: {value} does not fit int64.")
            return value
        if decoder == "image":
            return self._image(data, path, key, ext, self.fields[field])
        array = np.load(io.BytesIO(data), allow_pickle=False)
        spec = self.fields[field]
        if array.dtype != spec.dtype or array.shape[1 if spec.ragged else 0:] != spec.value_shape:
            raise SchemaError(f"{where}: changed while converting ({array.dtype} {array.shape}).")
        return array

    def read(self, start: int, stop: int) -> dict[str, Any]:
        out: dict[str, list[Any]] = {field: [] for field in self.fields}
        for file, a, b in self.index.pieces(start, stop):
            for i in range(a, b):
                key = self.keys[file][i]
                for j, (field, ext) in enumerate(self.extensions.items()):
                    out[field].append(self._decode(field, self._member(file, i, j), self.files[file], key, ext))
        result: dict[str, Any] = {}
        for field, rows in out.items():
            spec = self.fields[field]
            if spec.ragged:
                result[field] = rows
            elif self.decoders[field] == "int":
                result[field] = np.asarray(rows, np.int64)
            else:
                result[field] = np.stack(rows) if rows else np.empty((0, *spec.shape), spec.dtype)
        return result

    def close(self) -> None:
        for fd in (self._open_fds or {}).values():
            os.close(fd)
        self._open_fds = None
