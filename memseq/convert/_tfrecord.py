"""TFRecord files of ``tf.train.Example`` records as fields, read with TensorFlow's own reader.

The records of each file are located once, when the source is made, by reading only
their 12-byte frame headers (length and its checksum), so any range of rows can be
read later, in any worker process. A range of records is read in one ``pread``, every
record's length and CRC-32Cs checked (:mod:`memseq.convert._tfrecord_frames`), and
parsed in one ``tf.io.parse_example`` call. TensorFlow is imported only when a
TFRecord source is used.

Feature specs (the ``features`` argument, ``--feature NAME=SPEC`` on the command line):

- ``int64`` / ``float32``: one value per record (a scalar field);
- ``int64:3`` / ``float32:28,28``: that many values per record, reshaped (a fixed field);
- ``int64:-1`` / ``float32:-1,3``: any number of values (a variable-length field; with
  trailing dimensions the count must be a multiple of their product);
- ``bytes``: one byte string per record, as a variable-length ``uint8`` field;
- ``bytes:DTYPE:SHAPE``: one byte string per record holding the raw values of an array
  (``tf.io.decode_raw``, little-endian unless the dtype says otherwise), e.g.
  ``bytes:uint8:28,28,1``; a ``-1`` first dimension makes it variable-length.
"""

from __future__ import annotations

import dataclasses
import os
from collections.abc import Mapping, Sequence
from typing import Any

import numpy as np

from memseq.adapters.tf_import import tensorflow_quietly
from memseq.convert._base import Source, field_spec_at, optional_module
from memseq.convert._inputs import RowIndex, input_files, input_name
from memseq.convert._tfrecord_frames import RecordReader, scan_records
from memseq.errors import FormatError, SchemaError
from memseq.storage import format as fmt

__all__ = ["TFRecordSource", "TFRECORD_EXTENSIONS", "parse_feature_spec", "feature_field_name"]

#: File name endings taken as TFRecord files (from a directory, or by ``memseq convert SRC``).
TFRECORD_EXTENSIONS = (".tfrecord", ".tfrecords", ".tfr")
# How many records the features are inferred from when no spec is given.
_INFER_RECORDS = 100
# At most this many files are kept open per process (a conversion of thousands of
# shards must not run out of file descriptors).
_MAX_OPEN_FILES = 8


@dataclasses.dataclass(frozen=True)
class Feature:
    """How one ``tf.train.Example`` feature becomes a field.

    Attributes:
        kind: ``"int64"``, ``"float32"`` or ``"bytes"`` (the Example's list type).
        dtype: The field's dtype (``int64``, ``float32``, ``uint8`` for plain bytes,
            or the declared dtype of raw bytes).
        shape: The field's row shape; ``None`` first for a variable-length field.
        raw: Whether bytes hold an array's raw values (``decode_raw``).
    """

    kind: str
    dtype: str
    shape: tuple[int | None, ...]
    raw: bool = False

    @property
    def ragged(self) -> bool:
        return bool(self.shape) and self.shape[0] is None

    def spec_text(self) -> str:
        dims = ",".join("-1" if d is None else str(d) for d in self.shape)
        if self.kind == "bytes":
            return f"bytes:{self.dtype}:{dims}" if self.raw else "bytes"
        return f"{self.kind}:{dims}" if dims else self.kind


def _parse_dims(text: str, where: str) -> tuple[int | None, ...]:
    parts = [p.strip() for p in text.strip().strip("()[]").replace("x", ",").split(",") if p.strip()]
    try:
        dims = [int(p) for p in parts]
    except ValueError:
        raise SchemaError(f"{where}: a shape is comma-separated integers (-1 first for any length). Received: {text!r}") from None
    if any(d < 0 for d in dims[1:]) or (dims and dims[0] < -1):
        raise SchemaError(f"{where}: only the first dimension may be -1 (any length). Received: {text!r}")
    if dims and dims[0] == -1 and 0 in dims[1:]:
        raise SchemaError(f"{where}: rows of any length need non-zero trailing dimensions. Received: {text!r}")
    return tuple(None if i == 0 and d == -1 else d for i, d in enumerate(dims))


def parse_feature_spec(text: str, where: str = "feature spec") -> Feature:
    """Parses a feature spec: ``int64``, ``float32:28,28``, ``int64:-1``, ``bytes``, ``bytes:uint8:28,28,1``.

    Raises:
        SchemaError: If the text is not a spec (see the module docstring).
    """
    kind, _, rest = text.strip().partition(":")
    kind = {"int": "int64", "float": "float32"}.get(kind, kind)
    if kind in ("int64", "float32"):
        return Feature(kind, kind, _parse_dims(rest, where) if rest.strip() else ())
    if kind == "bytes":
        if not rest:
            return Feature("bytes", "uint8", (None,))
        dtype, sep, dims = rest.partition(":")
        if not sep:
            raise SchemaError(f"{where}: raw bytes take bytes:DTYPE:SHAPE, e.g. bytes:uint8:28,28,1. Received: {text!r}")
        dt = fmt.check_dtype(dtype, field=where)
        return Feature("bytes", dt.str if dt.byteorder in "<>" else dt.name, _parse_dims(dims, where), raw=True)
    raise SchemaError(
        f"{where}: a feature spec starts with int64, float32 or bytes (e.g. int64, float32:28,28, int64:-1, bytes, "
        f"bytes:uint8:28,28,1). Received: {text!r}"
    )


def feature_field_name(feature: str) -> str:
    """The field name of a feature: ``image/encoded`` -> ``image.encoded``."""
    return feature.strip("/").replace("/", ".")


def _import_tf() -> Any:
    # Through memseq's filter of TensorFlow's start-up lines (absl, cuInit on a machine
    # without GPU); TF_CPP_MIN_LOG_LEVEL would also hide its later errors.
    with tensorflow_quietly():
        return optional_module("tensorflow", "TFRecord sources need TensorFlow: pip install tensorflow.")


def _infer(examples: list[Any], path: str) -> dict[str, Feature]:
    """Feature specs from the first records' ``tf.train.Example`` protos."""
    seen: dict[str, dict[str, Any]] = {}
    for ex in examples:
        for name, feat in ex.features.feature.items():
            kind = feat.WhichOneof("kind")
            info = seen.setdefault(name, {"kinds": set(), "lengths": [], "present": 0})
            info["present"] += 1
            if kind is not None:
                info["kinds"].add(kind)
                info["lengths"].append(len(getattr(feat, kind).value))
    if not seen:
        raise FormatError(f"{path}: the first records hold no features; give the features (--feature NAME=SPEC).")
    out = {}
    for name, info in sorted(seen.items()):
        kinds = info["kinds"]
        where = f"{path}: feature {name!r}"
        if len(kinds) != 1:
            raise SchemaError(
                f"{where}: {'has no values in the first records' if not kinds else 'mixes ' + ', '.join(sorted(kinds))}; "
                "its type cannot be inferred: give it (--feature NAME=SPEC, e.g. int64:-1) or leave it out by "
                "listing the others."
            )
        kind = kinds.pop()
        lengths = set(info["lengths"])
        every = info["present"] == len(examples)
        if kind == "bytes_list":
            if lengths != {1} or not every:
                raise SchemaError(
                    f"{where}: holds {sorted(lengths)} byte strings per record (or is missing in some); memseq stores "
                    "one byte string per row: give the features to convert (--feature NAME=SPEC) without it."
                )
            out[name] = Feature("bytes", "uint8", (None,))
            continue
        dtype = "int64" if kind == "int64_list" else "float32"
        if every and len(lengths) == 1:
            length = lengths.pop()
            out[name] = Feature(dtype, dtype, () if length == 1 else (length,))
        else:
            out[name] = Feature(dtype, dtype, (None,))
    return out


class TFRecordSource(Source):
    """TFRecord files of ``tf.train.Example`` records as fields, one row per record.

    Without ``features``, the features are inferred from the first 100 records:
    int64 and float lists of one length in all of them become fixed fields (one
    value: a scalar), lists of varying length (or missing in some records)
    variable-length fields, and one byte string per record a variable-length
    ``uint8`` field. A later record that disagrees with the inferred spec is refused
    with a named error (give the spec then). Declared raw bytes (``bytes:DTYPE:SHAPE``)
    are decoded as ``tf.io.decode_raw`` would. A feature missing from a record is an
    error for a fixed field and an empty row for a variable-length one (as
    ``tf.io.parse_example`` reads it). Values are never cast: int64 lists stay
    ``int64``, float lists ``float32``.

    Args:
        paths: A TFRecord file, a directory (its ``.tfrecord``/``.tfrecords``/``.tfr``
            files), a glob pattern or a list of these; rows follow the files in
            natural order (``-2`` before ``-10``), then the records.
        features: Feature name -> spec (``"int64"``, ``"float32:28,28"``, ``"int64:-1"``,
            ``"bytes"``, ``"bytes:uint8:28,28,1"``; see the module docstring), or None
            to infer every feature. Field names are the feature names with ``/`` as ``.``.

    Raises:
        DatasetNotFoundError: If a file does not exist.
        FormatError: For a compressed or non-TFRecord file, or records that are not Examples.
        CorruptFileError: For a truncated file (the frame headers are all read here).
        SchemaError: For a bad spec, or a feature whose type cannot be inferred.
        MemseqError: If TensorFlow is not installed.
    """

    def __init__(self, paths: str | os.PathLike | Sequence[str | os.PathLike],
                 features: Mapping[str, str | Feature] | None = None):
        self.files = input_files(paths, TFRECORD_EXTENSIONS, "TFRecord files")
        self.path = input_name(paths, self.files)
        # Each file's record offsets, then the end of its last record.
        self.offsets = [scan_records(p) for p in self.files]
        self.index = RowIndex([len(o) - 1 for o in self.offsets])
        self._open_readers: dict[int, RecordReader] | None = None
        self._open_tf = None
        self._open_specs: dict[str, Any] | None = None
        tf = _import_tf()
        if features is None:
            self.features = self._infer(tf)
        else:
            self.features = {
                name: spec if isinstance(spec, Feature) else parse_feature_spec(spec, f"feature {name!r}")
                for name, spec in features.items()
            }
            if not self.features:
                raise SchemaError(f"{self.path}: no features given.")
        self.names = {feature_field_name(n): n for n in self.features}
        if len(self.names) != len(self.features):
            raise SchemaError(f"{self.path}: two features map to one field name: {list(self.features)}")
        self.fields = {
            field: field_spec_at(field, self.features[name].dtype, self.features[name].shape, f"{self.path}: feature {name!r}")
            for field, name in self.names.items()
        }
        self.num_rows = self.index.num_rows
        self.description = self.path
        self.close()  # the readers of the inference are not pickled; workers open their own

    def _infer(self, tf: Any) -> dict[str, Feature]:
        examples = []
        first = next((i for i, o in enumerate(self.offsets) if len(o) > 1), None)
        if first is None:
            raise FormatError(f"{self.path}: the TFRecord files hold no records; nothing to infer features from.")
        path = self.files[first]
        records = self._records(first, 0, min(_INFER_RECORDS, len(self.offsets[first]) - 1))
        for i, record in enumerate(records):
            try:
                examples.append(tf.train.Example.FromString(record))
            except Exception as e:  # protobuf's DecodeError
                raise FormatError(f"{path}: record {i} is not a tf.train.Example ({e}).") from e
        return _infer(examples, path)

    def _records(self, file: int, a: int, b: int) -> list[bytes]:
        if self._open_readers is None:
            self._open_readers = {}
        reader = self._open_readers.get(file)
        if reader is None:
            if len(self._open_readers) >= _MAX_OPEN_FILES:
                # Rows are read in file order: the file opened first is done with.
                self._open_readers.pop(next(iter(self._open_readers))).close()
            reader = self._open_readers[file] = RecordReader(self.files[file], self.offsets[file])
        return reader.read(a, b)

    def _parse_specs(self, tf: Any) -> dict[str, Any]:
        specs = {}
        for name, feat in self.features.items():
            if feat.kind == "bytes":
                specs[name] = tf.io.FixedLenFeature([], tf.string)
            elif feat.ragged:
                specs[name] = tf.io.RaggedFeature(getattr(tf, feat.kind), row_splits_dtype=tf.int64)
            else:
                specs[name] = tf.io.FixedLenFeature(list(feat.shape), getattr(tf, feat.kind))
        return specs

    def read(self, start: int, stop: int) -> dict[str, Any]:
        tf = self._open_tf or _import_tf()
        self._open_tf = tf
        # The records of every file in the range, parsed in one call: no per-file
        # pieces to parse and concatenate. ``pieces`` maps positions back to files.
        records: list[bytes] = []
        pieces = []
        for file, a, b in self.index.pieces(start, stop):
            records += self._records(file, a, b)
            pieces.append((file, a, b - a))
        parsed = self._parse(records, pieces, tf)
        return {field: self._rows(name, parsed[name], pieces) for field, name in self.names.items()}

    def _locate(self, pieces: list[tuple[int, int, int]], i: int) -> tuple[str, int]:
        """The file and record number of position ``i`` of a read's records."""
        for file, a, n in pieces:
            if i < n:
                return self.files[file], a + i
            i -= n
        raise IndexError(i)

    def _parse(self, records: list[bytes], pieces: list[tuple[int, int, int]], tf: Any) -> dict[str, Any]:
        if self._open_specs is None:
            self._open_specs = self._parse_specs(tf)
        specs = self._open_specs
        try:
            return tf.io.parse_example(tf.constant(records, tf.string), specs)
        except (tf.errors.InvalidArgumentError, ValueError) as e:
            # Find the first record that does not parse, to name it.
            for i, record in enumerate(records):
                try:
                    tf.io.parse_example([record], specs)
                except (tf.errors.InvalidArgumentError, ValueError) as e1:
                    path, number = self._locate(pieces, i)
                    raise SchemaError(
                        f"{path}: record {number} does not match the features "
                        f"{ {n: f.spec_text() for n, f in self.features.items()} }: "
                        f"{str(getattr(e1, 'message', e1)).splitlines()[0]} (declare the feature, e.g. "
                        "--feature NAME=int64:-1 for a variable length)."
                    ) from e1
            spans = "; ".join(f"{self.files[f]}: records {a}:{a + n}" for f, a, n in pieces)
            raise SchemaError(f"{spans} do not parse ({e}).") from e

    def _rows(self, name: str, value: Any, pieces: list[tuple[int, int, int]]) -> Any:
        feat = self.features[name]

        def refuse(i: int, what: str) -> SchemaError:
            path, number = self._locate(pieces, i)
            return SchemaError(f"{path}: feature {name!r}: record {number} holds {what}")

        if feat.kind != "bytes":
            if not feat.ragged:
                return value.numpy()
            values, splits = value.values.numpy(), value.row_splits.numpy()
            trailing = feat.shape[1:]
            per = int(np.prod(trailing, dtype=np.int64))
            lengths = np.diff(splits)
            if per != 1 and np.any(lengths % per):
                i = int(np.flatnonzero(lengths % per)[0])
                raise refuse(i, f"{lengths[i]} values, not a multiple of {per} "
                                f"(rows of shape (-1, {', '.join(map(str, trailing))})).")
            values = values.reshape(-1, *trailing)
            return np.split(values, splits[1:-1] // per)
        dtype = np.dtype(feat.dtype)
        per = int(np.prod(feat.shape[1:] if feat.ragged else feat.shape, dtype=np.int64)) * dtype.itemsize
        raws = list(value.numpy())
        lengths = np.fromiter(map(len, raws), np.int64, len(raws))
        bad = (lengths % per != 0) if feat.ragged else (lengths != per)
        if bad.any():
            i = int(np.flatnonzero(bad)[0])
            raise refuse(i, f"{lengths[i]} bytes; {feat.spec_text()} needs {'a multiple of ' if feat.ragged else ''}{per}.")
        # One copy of all the records' bytes, then views: no per-row array to stack.
        values = np.frombuffer(b"".join(raws), dtype)
        if not feat.ragged:
            return values.reshape(len(raws), *feat.shape)
        values = values.reshape(-1, *feat.shape[1:])
        return np.split(values, np.cumsum(lengths // per)[:-1])

    def close(self) -> None:
        for reader in (self._open_readers or {}).values():
            reader.close()
        self._open_readers = None
