"""The memseq on-disk format, version 1: specification, reading and writing.

Goals
-----
A dataset must be readable by plain numpy, describe itself completely (no dtype
or shape kept in anybody's head), be safe to open from untrusted directories, and
be written atomically so that a crash never leaves something that opens with
wrong contents.

Layout
------
A dataset is a directory::

    train/
      memseq.json          the manifest (written last)
      image.npy            one standard .npy file per field and shard
      label.npy

A dataset written in several shards keeps each shard in a sub-directory::

    train/
      memseq.json
      shard-00000/image.npy
      shard-00000/label.npy
      shard-00001/...

The reader presents the shards as one table: shard 0's rows first, then shard 1's.

Data files
----------
Each data file is a ``.npy`` file, format version 1.0 (``np.load(path,
mmap_mode="r")`` opens it), C order, whose shape is ``(rows_in_shard,
*row_shape)``. The header dictionary may be padded with spaces beyond numpy's usual
64-byte alignment: the streaming writer reserves room for any row count up front
and fills the real count in when it commits. The data start at a multiple of 64
bytes. The file size must equal ``header_length + rows * row_nbytes`` exactly.

Manifest
--------
``memseq.json`` is a UTF-8 JSON object::

    {
      "format": "memseq",              # always this string
      "version": 1,                    # integer major version, see below
      "num_rows": 1000,                # sum of the shards' num_rows
      "fields": {
        "image": {"dtype": "|u1", "shape": [64, 64, 3], "layout": "fixed"},
        "label": {"dtype": "<i8", "shape": [], "layout": "fixed"}
      },
      "shards": [
        {
          "num_rows": 1000,
          "files": {
            "image": {"path": "image.npy", "checksum": "crc32:1c291ca3"},
            "label": {"path": "label.npy", "checksum": "crc32:0b5e2c91"}
          }
        }
      ]
    }

- ``dtype`` is numpy's ``dtype.str`` (byte order, kind, item size). Only bool,
  signed and unsigned integers, floats and complex numbers are allowed: never
  objects, strings or structured records.
- ``shape`` is the shape of one row; ``[]`` for scalar rows.
- ``layout`` is ``"fixed"`` (every row has ``shape``) or ``"ragged"`` (a
  variable-length field, see below). Manifests without ragged fields are exactly
  what memseq wrote before ragged fields existed.
- ``path`` is relative to the dataset directory, uses ``/`` separators, and must
  stay inside the directory: absolute paths, ``..`` components and symlinks that
  resolve outside the directory are refused.
- ``checksum`` is ``"crc32:"`` followed by eight lowercase hex digits: the CRC-32
  (zlib) of the file's data bytes, that is everything after the ``.npy`` header.
  The header itself is checked field by field on open instead. CRC-32 detects
  corruption (it is no defence against tampering) and runs at several GB/s.
  Unknown keys are refused, so that a misspelt key never goes unnoticed.

Variable-length (ragged) fields
-------------------------------
A field whose rows differ in length (token sequences, audio) has ``"layout":
"ragged"`` and ``null`` as the first entry of its shape: ``"shape": [null]`` for
1-D rows, ``"shape": [null, 80]`` for rows of 80-band frames. Each shard stores it
in two ``.npy`` files: the *values* of all its rows, concatenated, of shape
``(num_values, *trailing)``, and an int64 *offsets* file of shape
``(num_rows + 1,)``, where row ``i`` of the shard is ``values[offsets[i]:offsets[i+1]]``.
Its file entry names both and the number of values::

    "tokens": {"path": "tokens.npy", "checksum": "crc32:...", "num_values": 51234,
               "offsets": {"path": "tokens.offsets.npy", "checksum": "crc32:..."}}

Offsets must start at 0, never decrease, and end at ``num_values``. Opening checks
the offsets file's dtype (``<i8``), shape, first and last value (two reads); every
read checks the offsets it uses; ``Dataset.verify()`` checks them all. A violation is
a :class:`~memseq.CorruptFileError`, never a read outside the values.

Version policy
--------------
``version`` is a single integer. A reader refuses any version it does not know,
newer or older, with a message that says which versions it reads. Additions that
older readers could misread bump the version.

Code
----
This module is the specification and the one import path for the format's public
names. The implementation is split by role: the data model (fields, files, shards,
the manifest; the rules for names, dtypes and row shapes) in
:mod:`memseq.storage.schema`, reading, validating and writing ``memseq.json`` in
:mod:`memseq.storage.manifest`, the ``.npy`` headers in :mod:`memseq.storage.npy`
and the shard layout in :mod:`memseq.storage.layout`.
"""

from __future__ import annotations

from memseq.storage.layout import (
    check_shard_rows,
    shard_directory,
    shard_file,
    shard_layout,
)
from memseq.storage.manifest import (  # noqa: F401 (parse_manifest, read_manifest_bytes: see the end)
    format_checksum,
    manifest_to_json,
    parse_manifest,
    read_manifest,
    read_manifest_bytes,
    resolve_inside,
)
from memseq.storage.npy import (
    has_npy_magic,
    npy_header,
    read_npy_header,
    reserved_header_length,
)
from memseq.storage.schema import (
    FORMAT_NAME,
    FORMAT_VERSION,
    MANIFEST_NAME,
    SUPPORTED_VERSIONS,
    FieldSpec,
    FileEntry,
    Manifest,
    ShardSpec,
    check_dtype,
    check_field_name,
    field_spec,
)

__all__ = [
    "MANIFEST_NAME",
    "FORMAT_NAME",
    "FORMAT_VERSION",
    "SUPPORTED_VERSIONS",
    "FieldSpec",
    "FileEntry",
    "ShardSpec",
    "Manifest",
    "field_spec",
    "check_field_name",
    "check_dtype",
    "read_manifest",
    "manifest_to_json",
    "resolve_inside",
    "format_checksum",
    # The .npy headers (memseq.storage.npy) and the shard layout (memseq.storage.layout):
    "npy_header",
    "reserved_header_length",
    "read_npy_header",
    "has_npy_magic",
    "check_shard_rows",
    "shard_layout",
    "shard_directory",
    "shard_file",
]
# Also importable from here, outside __all__ as before: read_manifest_bytes and
# parse_manifest (a Dataset reads the bytes once, to checksum and to parse them).
