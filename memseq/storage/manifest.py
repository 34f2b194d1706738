"""The manifest, ``memseq.json``: reading it safely, parsing and validating it strictly, writing it.

:func:`read_manifest` reads at most a size limit from a regular file, parses the
JSON with integers bounded to int64, and refuses anything :mod:`memseq.storage.format`
does not specify: a wrong format name or version, a missing key, a value of the
wrong type, an unknown key, a file path that leaves the dataset directory. Every
failure is a :class:`~memseq.FormatError` (or :class:`~memseq.UnsafePathError`) that
names the manifest, the place in it and the value. :func:`manifest_to_json` writes
what :func:`read_manifest` reads back unchanged.
"""

from __future__ import annotations

import json
import os
import re
import stat
from typing import Any

import numpy as np

from memseq.errors import (
    DatasetNotFoundError,
    FormatError,
    SchemaError,
    UnsafePathError,
)
from memseq.storage import files as _fs
from memseq.storage.npy import MAX_BYTES, MAX_ROWS
from memseq.storage.schema import (
    FORMAT_NAME,
    MANIFEST_NAME,
    SUPPORTED_VERSIONS,
    FieldSpec,
    FileEntry,
    Manifest,
    ShardSpec,
    field_spec,
)
from memseq.util.checks import bounded_repr

__all__ = [
    "read_manifest",
    "read_manifest_bytes",
    "parse_manifest",
    "manifest_to_json",
    "resolve_inside",
    "format_checksum",
]

# A manifest larger than this is not one we wrote: refuse it while reading, never
# reading more than this (plus one byte) from it.
_MAX_MANIFEST_BYTES = 64 * 2**20
# JSON integers longer than this cannot be an int64 (19 digits and a sign): refused
# before Python converts them (a million-digit int takes quadratic time to parse).
_MAX_INT_CHARS = 20
_CHECKSUM_RE = re.compile(r"crc32:[0-9a-f]{8}")


def resolve_inside(directory: str, relative: str, *, manifest: str) -> str:
    """Returns the real path of ``relative`` if it stays inside ``directory``.

    Args:
        directory: The dataset directory.
        relative: A path from the manifest.
        manifest: The manifest's path, for error messages.

    Returns:
        The absolute, symlink-free path of the file.

    Raises:
        UnsafePathError: If ``relative`` is absolute, contains ``..`` or a
            backslash, or resolves outside ``directory`` through symlinks.
    """
    if not relative or "\\" in relative or "\x00" in relative or relative.startswith("/") or os.path.isabs(relative):
        raise UnsafePathError(
            f"{manifest}: file paths must be relative to the dataset directory. Received: {bounded_repr(relative)}"
        )
    if any(part in ("..", "") for part in relative.split("/")):
        raise UnsafePathError(
            f"{manifest}: file paths must not contain '..' or empty components. Received: {bounded_repr(relative)}"
        )
    try:
        os.fsencode(relative)
    except UnicodeEncodeError:
        raise UnsafePathError(
            f"{manifest}: file path cannot be encoded for the filesystem. Received: {bounded_repr(relative)}"
        ) from None
    try:
        root = os.path.realpath(directory)
        target = os.path.realpath(os.path.join(root, relative))
    except (OSError, ValueError) as e:  # realpath is lenient; stay safe if it is not
        raise UnsafePathError(f"{manifest}: cannot resolve {bounded_repr(relative)} ({bounded_repr(str(e))}).") from e
    if os.path.commonpath([root, target]) != root:
        raise UnsafePathError(
            f"{manifest}: {bounded_repr(relative)} resolves to {bounded_repr(target)}, outside the dataset directory "
            f"{bounded_repr(root)}."
        )
    return target


def read_manifest(directory: str) -> Manifest:
    """Reads and strictly validates ``directory/memseq.json``.

    Args:
        directory: The dataset directory.

    Returns:
        The validated manifest.

    Raises:
        DatasetNotFoundError: If the manifest does not exist.
        FormatError: If it is not valid JSON, has the wrong format name or an
            unsupported version, misses keys, has wrong types or unknown keys.
        UnsafePathError: If a file path leaves the dataset directory.
    """
    raw = read_manifest_bytes(directory)
    return parse_manifest(raw, directory)


def read_manifest_bytes(directory: str) -> bytes:
    """The bytes of ``directory/memseq.json``, read safely.

    The manifest must be a regular file (a FIFO or ``/dev/zero`` in its place is
    refused before it is opened) and is read up to its size limit, never further.

    Raises:
        DatasetNotFoundError: If the directory or the manifest does not exist.
        NotRegularFileError: If the manifest is a FIFO, socket, device or directory.
        FormatError: If it is larger than the limit.
        DatasetPermissionError, FileAccessError: For other OS failures.
    """
    path = os.path.join(directory, MANIFEST_NAME)
    try:
        fd, _ = _fs.open_regular(path, "manifest")
    except DatasetNotFoundError as e:
        try:
            st = os.stat(directory)
        except (OSError, ValueError):
            raise DatasetNotFoundError(
                f"No memseq dataset at {bounded_repr(directory)}: no such directory.", errno=e.errno, filename=directory
            ) from e
        if not stat.S_ISDIR(st.st_mode):
            raise DatasetNotFoundError(
                f"No memseq dataset at {bounded_repr(directory)}: it is "
                f"{'a file' if stat.S_ISREG(st.st_mode) else _fs.describe_mode(st.st_mode)}"
                f"; a dataset is a directory with a {MANIFEST_NAME}.",
                errno=e.errno,
                filename=directory,
            ) from e
        raise DatasetNotFoundError(
            f"{bounded_repr(directory)} is not a memseq dataset (or its write never committed): {MANIFEST_NAME} is missing.",
            errno=e.errno,
            filename=path,
        ) from e
    try:
        raw = _fs.read_at_most(fd, _MAX_MANIFEST_BYTES, path, "manifest")
    finally:
        os.close(fd)
    if len(raw) > _MAX_MANIFEST_BYTES:
        raise FormatError(f"{path}: larger than {_MAX_MANIFEST_BYTES} bytes; not a memseq manifest.")
    return raw


def _parse_int(text: str) -> int:
    if len(text) > _MAX_INT_CHARS:
        raise FormatError(f"an integer of {len(text)} digits cannot be an int64. Received: {bounded_repr(text)}")
    return int(text)


def _parse_constant(text: str) -> float:
    raise FormatError(f"{text} is not valid JSON.")


def parse_manifest(raw: bytes, directory: str) -> Manifest:
    """Parses and strictly validates the bytes of a manifest (see :func:`read_manifest`)."""
    path = os.path.join(directory, MANIFEST_NAME)
    doc = _load_document(raw, path)
    _no_unknown_keys(doc, {"format", "version", "num_rows", "fields", "shards"}, "manifest", path)
    num_rows = _count(doc, "num_rows", "manifest", path)
    fields = _parse_fields(_expect(doc, "fields", dict, "manifest", path), path)
    shards = [
        _parse_shard(shard, f"shards[{i}]", fields, directory, path)
        for i, shard in enumerate(_expect(doc, "shards", list, "manifest", path))
    ]
    total = sum(s.num_rows for s in shards)
    if total != num_rows:
        raise FormatError(f"{path}: 'num_rows' is {num_rows} but the shards hold {total} rows.")
    return Manifest(num_rows, fields, tuple(shards))


def _load_document(raw: bytes, path: str) -> dict:
    """The manifest's JSON object, once its format name and version are checked."""
    try:
        doc = json.loads(raw.decode("utf-8"), parse_int=_parse_int, parse_constant=_parse_constant)
    except FormatError as e:
        raise FormatError(f"{path}: {e}") from e
    except (UnicodeDecodeError, ValueError) as e:  # json.JSONDecodeError is a ValueError
        raise FormatError(f"{path}: not valid UTF-8 JSON ({bounded_repr(str(e))}).") from e
    except RecursionError as e:
        raise FormatError(f"{path}: nested too deeply to be a memseq manifest.") from e
    if not isinstance(doc, dict):
        raise FormatError(f"{path}: the manifest must be a JSON object. Received: {type(doc).__name__}")
    fmt = doc.get("format")
    if fmt != FORMAT_NAME:
        raise FormatError(f"{path}: 'format' must be {FORMAT_NAME!r}. Received: {bounded_repr(fmt)}")
    version = _expect(doc, "version", int, "manifest", path)
    if version not in SUPPORTED_VERSIONS:
        newer = version > max(SUPPORTED_VERSIONS)
        raise FormatError(
            f"{path}: format version {version} is not supported; this memseq reads "
            f"version(s) {list(SUPPORTED_VERSIONS)}."
            + (" The dataset was written by a newer memseq: upgrade memseq." if newer else "")
        )
    return doc


def _parse_fields(fields_doc: dict, path: str) -> dict[str, FieldSpec]:
    fields: dict[str, FieldSpec] = {}
    for name, entry in fields_doc.items():
        where = f"fields[{bounded_repr(name)}]"
        _object(entry, {"dtype", "shape", "layout"}, where, path)
        layout = _expect(entry, "layout", str, where, path)
        if layout not in ("fixed", "ragged"):
            raise FormatError(
                f"{path}: {where} has layout {bounded_repr(layout)}; this memseq reads 'fixed' and 'ragged'."
            )
        dtype_str = _expect(entry, "dtype", str, where, path)
        shape = _expect(entry, "shape", list, where, path)
        if (layout == "ragged") != (bool(shape) and shape[0] is None):
            raise FormatError(
                f"{path}: {where}: a 'ragged' field has null as the first dimension of its shape, a 'fixed' one "
                f"has none. Received: layout {layout!r}, shape {bounded_repr(shape)}"
            )
        try:
            dtype = np.dtype(dtype_str)
        except (TypeError, ValueError, SyntaxError, RecursionError, MemoryError) as e:
            raise FormatError(f"{path}: {where}['dtype'] is not a dtype. Received: {bounded_repr(dtype_str)}") from e
        try:
            fields[name] = field_spec(name, dtype, shape)
        except SchemaError as e:
            raise FormatError(f"{path}: {e}") from e
    if not fields:
        raise FormatError(f"{path}: the manifest has no fields.")
    return fields


def _parse_shard(shard: Any, where: str, fields: dict[str, FieldSpec], directory: str, path: str) -> ShardSpec:
    _object(shard, {"num_rows", "files"}, where, path)
    rows = _count(shard, "num_rows", where, path)
    files_doc = _expect(shard, "files", dict, where, path)
    if set(files_doc) != set(fields):
        raise FormatError(
            f"{path}: {where}['files'] must name exactly the fields {bounded_repr(sorted(fields))}. "
            f"Received: {bounded_repr(sorted(files_doc))}"
        )
    files: dict[str, FileEntry] = {}
    for name, spec in fields.items():
        fwhere = f"{where}['files'][{name!r}]"
        if spec.ragged:
            files[name] = _parse_ragged_entry(files_doc[name], fwhere, spec, rows, directory, path)
            continue
        if rows * spec.row_nbytes > MAX_BYTES:
            raise FormatError(
                f"{path}: {where} holds {rows} rows of field {name!r} ({spec.row_nbytes} bytes each): "
                "more than 2**63 - 1 bytes."
            )
        entry = _object(files_doc[name], {"path", "checksum"}, fwhere, path)
        files[name] = _parse_file_entry(entry, fwhere, directory, path)
    return ShardSpec(rows, files)


def _parse_file_entry(entry: dict, where: str, directory: str, path: str) -> FileEntry:
    rel = _expect(entry, "path", str, where, path)
    checksum = _expect(entry, "checksum", str, where, path)
    if not _CHECKSUM_RE.fullmatch(checksum):
        raise FormatError(
            f"{path}: {where}['checksum'] must look like 'crc32:0123abcd'. Received: {bounded_repr(checksum)}"
        )
    resolve_inside(directory, rel, manifest=path)
    return FileEntry(rel, checksum)


def _parse_ragged_entry(doc: Any, where: str, spec: FieldSpec, rows: int, directory: str, path: str) -> FileEntry:
    """A ragged field's entry: values file, checksum, num_values and the offsets file."""
    entry = _object(doc, {"path", "checksum", "num_values", "offsets"}, where, path)
    values = _parse_file_entry(entry, where, directory, path)
    num_values = _count(entry, "num_values", where, path)
    if num_values * spec.row_nbytes > MAX_BYTES or (rows + 1) * 8 > MAX_BYTES:
        raise FormatError(f"{path}: {where} holds more than 2**63 - 1 bytes.")
    offsets_doc = _object(_expect(entry, "offsets", dict, where, path), {"path", "checksum"}, f"{where}['offsets']", path)
    offsets = _parse_file_entry(offsets_doc, f"{where}['offsets']", directory, path)
    return FileEntry(values.path, values.checksum, num_values, offsets)


def manifest_to_json(manifest: Manifest) -> str:
    """Serialises a manifest the way memseq writes it (indented, final newline).

    Keys keep their order: the fixed order of :meth:`Manifest.to_json`, and fields
    in the order they were declared, which is the order a Dataset lists them in.
    """
    return json.dumps(manifest.to_json(), indent=2) + "\n"


def format_checksum(crc: int) -> str:
    """Formats a CRC-32 value as a manifest checksum string, e.g. ``'crc32:0000abcd'``."""
    return f"crc32:{crc & 0xFFFFFFFF:08x}"


# --------------------------------------------------------------------------- strict JSON values


def _expect(obj: Any, key: str, kind: type | tuple[type, ...], where: str, path: str) -> Any:
    """``obj[key]`` if ``obj`` is an object holding ``key`` with a value of type ``kind`` (never a bool for a number)."""
    if not isinstance(obj, dict) or key not in obj:
        raise FormatError(f"{path}: {where} is missing the key {key!r}.")
    value = obj[key]
    # bool is an int subclass; JSON true/false must never pass as a number.
    if isinstance(value, bool) and bool not in (kind if isinstance(kind, tuple) else (kind,)):
        raise FormatError(f"{path}: {where}[{key!r}] has the wrong type. Received: {bounded_repr(value)}")
    if not isinstance(value, kind):
        raise FormatError(f"{path}: {where}[{key!r}] has the wrong type. Received: {bounded_repr(value)}")
    return value


def _no_unknown_keys(obj: dict, allowed: set[str], where: str, path: str) -> None:
    """Refuses keys beyond ``allowed``: a misspelt key must never go unnoticed."""
    unknown = sorted(set(obj) - allowed)
    if unknown:
        raise FormatError(f"{path}: {where} has unknown keys {bounded_repr(unknown)}; allowed: {sorted(allowed)}.")


def _count(obj: dict, key: str, where: str, path: str) -> int:
    """``obj[key]`` if it is an integer in ``[0, 2**63 - 1]`` (a number of rows or values)."""
    value = _expect(obj, key, int, where, path)
    if value < 0:
        raise FormatError(f"{path}: {where}[{key!r}] must be >= 0. Received: {bounded_repr(value)}")
    if value > MAX_ROWS:
        raise FormatError(f"{path}: {where}[{key!r}] must be <= 2**63 - 1. Received: {bounded_repr(value)}")
    return value


def _object(value: Any, allowed: set[str], where: str, path: str) -> dict:
    """``value`` if it is a JSON object with no keys but ``allowed``."""
    if not isinstance(value, dict):
        raise FormatError(f"{path}: {where} must be an object. Received: {bounded_repr(value)}")
    _no_unknown_keys(value, allowed, where, path)
    return value
