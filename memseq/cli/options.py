"""The ``memseq convert`` command's option strings, parsed into conversion sources.

``--field NAME=PATH[:KEY]``, ``--raw NAME=PATH:DTYPE:SHAPE[:OFFSET]``, ``--shape``
and ``--image-size`` are command-line syntax: they live here, beside the command,
and build the sources of :mod:`memseq.convert` from their parts.
"""

from __future__ import annotations

import os
from collections.abc import Sequence
from typing import Any

from memseq import convert as cv
from memseq.errors import SchemaError
from memseq.storage import format as fmt

__all__ = [
    "parse_shape", "parse_raw_option", "parse_field_option", "parse_image_size", "parse_tokens_option",
    "migration_options", "migration_source",
]


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


def parse_image_size(text: str | None) -> tuple[int, int] | None:
    """Parses ``--image-size``: ``"64x48"`` (height x width), ``"64,48"`` or one number.

    Raises:
        SchemaError: If it is not one or two positive integers.
    """
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


def _split_name(option: str, text: str) -> tuple[str, str]:
    name, sep, rest = text.partition("=")
    if not sep or not name or not rest:
        raise SchemaError(f"{option} takes NAME=PATH[:...], e.g. {option} image=images.npy. Received: {text!r}")
    fmt.check_field_name(name)
    return name, rest


def parse_raw_option(text: str) -> cv.RawSource:
    """Parses ``--raw NAME=PATH:DTYPE:SHAPE[:OFFSET]`` into a :class:`~memseq.convert.RawSource`.

    Example: ``image=images.mmap:uint8:-1,64,64,3`` or ``x=x.dat:float32:-1,128:4096``.

    Raises:
        SchemaError: If the text does not have that form.
        DatasetNotFoundError, CorruptFileError: From :class:`~memseq.convert.RawSource`.
    """
    name, rest = _split_name("--raw", text)
    path, spec = _split_existing(rest)
    parts = (spec or "").split(":")
    if spec is None or len(parts) not in (2, 3):
        cv.source_kind(path, "a raw array file")  # a missing file is the first thing to report
        raise SchemaError(
            f"--raw takes NAME=PATH:DTYPE:SHAPE[:OFFSET], e.g. image=images.mmap:uint8:-1,64,64,3. Received: {text!r}"
        )
    offset = 0
    if len(parts) == 3:
        try:
            offset = int(parts[2])
        except ValueError:
            raise SchemaError(f"--raw: OFFSET must be an integer number of bytes. Received: {parts[2]!r}") from None
    return cv.RawSource(path, name, parts[0], parse_shape(parts[1]), offset)


def parse_field_option(text: str, *, dtype: str | None = None, shape: str | Sequence[int] | None = None) -> cv.Source:
    """Parses ``--field NAME=PATH[:KEY]`` into a source, by the file's kind.

    - a directory: ``NAME=rows/``, one-row ``.npy`` files as a variable-length field.
    - ``.npy``: ``NAME=file.npy`` (no KEY).
    - ``.npz``: ``NAME=file.npz[:ARRAY]``; the array is NAME unless ARRAY is given.
    - HDF5 (``.h5``, ``.hdf5``, ...): ``NAME=file.h5[:/dataset/path]``; the dataset
      is ``/NAME`` unless given.
    - anything else is a headerless raw file: ``NAME=file.mmap`` with ``dtype``
      and ``shape`` (``--dtype``/``--shape``), or ``NAME=file.mmap:DTYPE:SHAPE[:OFFSET]``
      as with ``--raw``.

    The kind is found from the extension, else from the file's magic bytes
    (:func:`memseq.convert.source_kind`).

    Raises:
        SchemaError: For a malformed option.
        DatasetNotFoundError, FormatError, CorruptFileError: From the source.
    """
    name, rest = _split_name("--field", text)
    if os.path.isdir(rest):
        return cv.NpyRowsSource(rest, name)
    path, key = _split_existing(rest)
    kind = cv.source_kind(path, f"the source of field {name!r}")
    if kind == "npy":
        if key:
            raise SchemaError(f"--field {text!r}: a .npy file holds one array; drop ':{key}'.")
        return cv.NpySource(path, name)
    if kind == "npz":
        return cv.NpzSource(path, {name: key or name})
    if kind == "hdf5":
        return cv.HDF5Source(path, {name: key or "/" + name})
    if key:
        return parse_raw_option(f"{name}={path}:{key}")
    if dtype is None or shape is None:
        raise SchemaError(
            f"--field {text!r}: {path} is a headerless raw file; give its dtype and shape with --dtype and "
            "--shape, or use --raw NAME=PATH:DTYPE:SHAPE (e.g. --raw image=images.mmap:uint8:-1,64,64,3)."
        )
    return cv.RawSource(path, name, dtype, parse_shape(shape) if isinstance(shape, str) else tuple(shape))


def parse_tokens_option(text: str) -> cv.TokenStreamSource:
    """Parses ``--tokens NAME=PATH:DTYPE:SEPARATOR`` into a :class:`~memseq.convert.TokenStreamSource`.

    Example: ``tokens=train.bin:uint16:50256`` (rows end after each token 50256).

    Raises:
        SchemaError: If the text does not have that form.
    """
    name, rest = _split_name("--tokens", text)
    path, spec = _split_existing(rest)
    parts = (spec or "").split(":")
    if spec is None or len(parts) != 2:
        raise SchemaError(f"--tokens takes NAME=PATH:DTYPE:SEPARATOR, e.g. tokens=train.bin:uint16:50256. Received: {text!r}")
    try:
        separator = int(parts[1])
    except ValueError:
        raise SchemaError(f"--tokens: SEPARATOR must be an integer token. Received: {parts[1]!r}") from None
    return cv.TokenStreamSource(path, name, parts[0], separator)


def migration_options(args: Any) -> list[str]:
    """The options given that choose what to take from another library's format (``--feature``)."""
    flags = (("--feature", "feature"), ("--columns", "columns"), ("--members", "members"))
    return [flag for flag, attr in flags if getattr(args, attr, None)]


def _parse_renames(texts: Sequence[str]) -> dict[str, str]:
    """``a,b`` or ``field=name,...`` (repeatable) -> field name -> column or extension."""
    out = {}
    for part in (p.strip() for text in texts for p in text.split(",")):
        if part:
            field, sep, name = part.partition("=")
            out[field] = name if sep else field
    return out


def _parse_features(texts: Sequence[str]) -> dict[str, str]:
    features = {}
    for text in texts:
        name, sep, spec = text.partition("=")
        if not sep or not name or not spec:
            raise SchemaError(f"--feature takes NAME=SPEC, e.g. --feature label=int64. Received: {text!r}")
        features[name] = spec
    return features


def migration_source(src: str, args: Any) -> cv.Source:
    """The source of ``memseq convert SRC`` with ``--feature`` (TFRecord), ``--columns`` (Parquet/Arrow) or
    ``--members`` (WebDataset) options.

    ``--columns a,b`` takes those columns, ``--members cls,png`` those member extensions;
    ``FIELD=NAME`` renames.

    Raises:
        SchemaError: If the options do not apply to SRC's kind.
    """
    kind = cv.migration_kind(src)
    given = migration_options(args)
    if kind == "tfrecord" and given == ["--feature"]:
        return cv.TFRecordSource(src, _parse_features(args.feature))
    if kind == "arrow" and given == ["--columns"]:
        return cv.ArrowSource(src, _parse_renames(args.columns))
    if kind == "webdataset" and given == ["--members"]:
        return cv.WebDatasetSource(src, _parse_renames(args.members))
    raise SchemaError(
        f"{' and '.join(given)}: --feature applies to TFRecord files (.tfrecord, .tfrecords, .tfr), --columns to "
        "Parquet, Arrow IPC and Hugging Face save_to_disk data, --members to WebDataset .tar shards; "
        f"{src} is {'none of these' if kind is None else 'of kind ' + repr(kind)}."
    )
