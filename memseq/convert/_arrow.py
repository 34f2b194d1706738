"""Parquet files, Arrow IPC files and Hugging Face ``save_to_disk`` folders as fields, through pyarrow.

Which columns memseq holds, and as what:

- numbers and booleans (``int8`` ... ``uint64``, ``float16/32/64``, ``bool``): a scalar field;
- fixed-size lists, nested to any depth (``fixed_size_list<float>[3]``, Hugging Face
  ``Sequence(..., length=3)``): a fixed field with those trailing dimensions;
- lists (``list<int64>``, ``large_list``; Hugging Face ``Sequence(...)``): a
  variable-length field, whose values may themselves be fixed-size lists
  (``list<fixed_size_list<float>[80]>`` -> rows of shape ``(length, 80)``);
- binary (``binary``, ``large_binary``): a variable-length ``uint8`` field;
  ``fixed_size_binary[n]``: a fixed ``uint8`` field of ``n`` bytes;
- Hugging Face ``Array2D`` ... ``Array5D`` (stored as nested lists): the shape their
  feature declares, every row checked against it.

Anything else (strings, dictionaries, dates and times, decimals, structs, maps,
nested variable-length lists) is refused with the column's name and the reason;
null values are refused too (memseq would have to invent a value for them).

Parquet files are read one row group at a time (the last one read is kept for the
next read), Arrow IPC files one record batch at a time through a memory map.
"""

from __future__ import annotations

import json
import os
from collections.abc import Mapping, Sequence
from typing import Any

import numpy as np

from memseq.convert._base import Source, field_spec_at, optional_module
from memseq.convert._inputs import RowIndex, input_files, input_name, join_pieces
from memseq.errors import (
    CorruptFileError,
    DatasetNotFoundError,
    FormatError,
    SchemaError,
)

__all__ = ["ArrowSource", "PARQUET_EXTENSIONS", "ARROW_EXTENSIONS", "is_hf_folder"]

#: File name endings taken as Parquet files.
PARQUET_EXTENSIONS = (".parquet", ".pq")
#: File name endings taken as Arrow IPC files (file or stream format).
ARROW_EXTENSIONS = (".arrow", ".feather", ".ipc", ".arrows")
_ARROW_FILE_MAGIC = b"ARROW1"
_PARQUET_MAGIC = b"PAR1"


def _import_pa() -> Any:
    return optional_module("pyarrow", 'Parquet, Arrow and Hugging Face sources need pyarrow: pip install "memseq[convert]" '
                           "(or pip install pyarrow).")


def is_hf_folder(path: str) -> bool:
    """Whether ``path`` is a folder written by Hugging Face ``Dataset.save_to_disk`` (or ``DatasetDict``'s)."""
    return os.path.isdir(path) and (
        os.path.isfile(os.path.join(path, "state.json")) or os.path.isfile(os.path.join(path, "dataset_dict.json"))
    )


def _hf_files(path: str) -> list[str]:
    """The data files of a ``save_to_disk`` folder, in the order its ``state.json`` lists them."""
    if os.path.isfile(os.path.join(path, "dataset_dict.json")):
        splits = sorted(e.name for e in os.scandir(path) if e.is_dir())
        raise FormatError(
            f"{path}: a Hugging Face DatasetDict folder; convert one split at a time: "
            f"{', '.join(os.path.join(path, s) for s in splits)}."
        )
    try:
        with open(os.path.join(path, "state.json"), encoding="utf-8") as f:
            state = json.load(f)
        names = [entry["filename"] for entry in state["_data_files"]]
    except (OSError, ValueError, KeyError, TypeError) as e:
        raise FormatError(f"{path}/state.json: not a Hugging Face save_to_disk state ({e}).") from e
    if state.get("_indices_data_files"):
        raise FormatError(f"{path}: the dataset has an indices mapping; save it with flatten_indices() first.")
    files = [os.path.join(path, n) for n in names]
    for f in files:
        if not os.path.isfile(f):
            raise DatasetNotFoundError(f"{f}: no such file (listed in {path}/state.json).")
    if not files:
        raise FormatError(f"{path}/state.json lists no data files.")
    return files


def _file_kind(path: str) -> str:
    with open(path, "rb") as f:
        head = f.read(8)
    if head[:4] == _PARQUET_MAGIC:
        return "parquet"
    if head[:6] == _ARROW_FILE_MAGIC:
        return "arrow-file"
    if head[:4] == b"\xff\xff\xff\xff" or path.lower().endswith(ARROW_EXTENSIONS):
        return "arrow-stream"
    raise FormatError(f"{path}: not a Parquet file or an Arrow IPC file (first bytes {head!r}).")


def _hf_shapes(schema: Any) -> dict[str, tuple[int | None, ...]]:
    """Column -> shape declared by a Hugging Face ArrayND feature (in the schema's metadata)."""
    try:
        meta = json.loads((schema.metadata or {}).get(b"huggingface", b"{}"))
        features = meta.get("info", {}).get("features", {}) or {}
    except (ValueError, AttributeError):
        return {}
    out = {}
    for name, feat in features.items():
        if isinstance(feat, dict) and str(feat.get("_type", "")).startswith("Array") and "shape" in feat:
            out[name] = tuple(feat["shape"])
    return out


class _Plan:
    """How one column becomes a field: the leaf type, the dims (None: variable) and which levels are lists."""

    def __init__(self, dtype: np.dtype, dims: tuple[int | None, ...], binary_leaf: bool):
        self.dtype, self.dims, self.binary_leaf = dtype, dims, binary_leaf


def _plan(pa: Any, typ: Any, hf_shape: tuple[int | None, ...] | None, where: str) -> _Plan:
    """The plan of a column of type ``typ``, or a SchemaError saying why memseq cannot hold it."""
    t = pa.types
    dims: list[int | None] = []
    level = 0
    while True:
        if isinstance(typ, pa.ExtensionType):
            typ = typ.storage_type
            continue
        if t.is_fixed_size_list(typ):
            dims.append(typ.list_size)
            typ = typ.value_type
        elif t.is_list(typ) or t.is_large_list(typ):
            if hf_shape is not None and level < len(hf_shape):
                dims.append(hf_shape[level])
            elif level == 0:
                dims.append(None)
            else:
                raise SchemaError(f"{where}: nested variable-length lists ({typ}) cannot be held: memseq rows have one "
                                  "variable dimension, the first. Store the inner lists with a fixed size.")
            typ = typ.value_type
        elif t.is_binary(typ) or t.is_large_binary(typ):
            if dims:
                raise SchemaError(f"{where}: lists of byte strings ({typ}) cannot be held; memseq holds one byte "
                                  "string per row (a variable-length uint8 field).")
            return _Plan(np.dtype(np.uint8), (None,), True)
        elif t.is_fixed_size_binary(typ):
            return _Plan(np.dtype(np.uint8), (*dims, typ.byte_width), False)
        elif t.is_integer(typ) or t.is_floating(typ) or t.is_boolean(typ):
            if hf_shape is not None and len(hf_shape) != len(dims):
                raise SchemaError(f"{where}: the Hugging Face feature declares shape {hf_shape} but the column "
                                  f"has {len(dims)} list levels.")
            if any(d is None for d in dims[1:]) or (hf_shape is not None and None in hf_shape[1:]):
                raise SchemaError(f"{where}: only the first dimension may vary. Received shape {hf_shape or dims}.")
            return _Plan(np.dtype(typ.to_pandas_dtype()), tuple(dims), False)
        else:
            raise SchemaError(f"{where}: {_refusal(pa, typ)}")
        level += 1


def _refusal(pa: Any, typ: Any) -> str:
    t = pa.types
    if t.is_string(typ) or t.is_large_string(typ) or getattr(t, "is_string_view", lambda _: False)(typ):
        return (f"a column of strings ({typ}) cannot be held: memseq stores numbers. Tokenize the text or map it to "
                "integer codes first, or leave the column out (columns=[...], --columns).")
    if t.is_dictionary(typ):
        return (f"a dictionary-encoded column ({typ}): its codes mean nothing without the dictionary, which memseq "
                "cannot store. Map it to integer codes yourself, or leave it out.")
    if t.is_temporal(typ):
        return f"a date/time column ({typ}) would need a cast to integers; cast it yourself, or leave it out."
    if t.is_decimal(typ):
        return f"a decimal column ({typ}) has no exact numpy dtype; leave it out or convert it yourself."
    if t.is_struct(typ):
        names = ", ".join(f.name for f in typ)
        return (f"a struct column ({names}) cannot be held (Hugging Face Image and Audio features are structs of "
                "bytes and path: decode them first, or leave the column out).")
    return f"a column of type {typ} cannot be held: memseq stores numbers, booleans and byte strings."


def _first_null(arr: Any) -> int:
    valid = arr.is_valid().to_numpy(zero_copy_only=False)
    return int(np.flatnonzero(~valid)[0])


def _leaf_values(pa: Any, arr: Any, where: str, a: int) -> tuple[Any, list[np.ndarray]]:
    """Flattens the list levels of ``arr``: (leaf array, the list lengths of each level), refusing nulls."""
    import pyarrow.compute as pc

    lengths: list[np.ndarray] = []
    while True:
        if isinstance(arr.type, pa.ExtensionType):
            arr = arr.storage
        if arr.null_count:
            raise SchemaError(f"{where}: row {a + _row_of(_first_null(arr), lengths)} holds a null; memseq would "
                              "have to invent a value for it.")
        typ = arr.type
        if not (pa.types.is_fixed_size_list(typ) or pa.types.is_list(typ) or pa.types.is_large_list(typ)):
            return arr, lengths
        lengths.append(pc.list_value_length(arr).to_numpy(zero_copy_only=False).astype(np.int64))
        arr = arr.flatten()


def _row_of(index: int, lengths: list[np.ndarray]) -> int:
    """The row that element ``index`` of a flattened level belongs to (only computed for a message)."""
    for counts in reversed(lengths):
        index = int(np.searchsorted(np.cumsum(counts), index, side="right"))
    return index


def _column_rows(pa: Any, arr: Any, plan: _Plan, where: str, a: int) -> Any:
    """Rows of one column slice: an array of fixed rows, or a list of variable-length rows."""
    leaf, lengths = _leaf_values(pa, arr, where, a)
    n = len(arr)
    if plan.binary_leaf:
        offsets_dtype = np.int64 if pa.types.is_large_binary(leaf.type) else np.int32
        buffers = leaf.buffers()
        offsets = np.frombuffer(buffers[1], offsets_dtype)[leaf.offset : leaf.offset + n + 1].astype(np.int64)
        data = np.frombuffer(buffers[2], np.uint8) if buffers[2] is not None and len(buffers[2]) else np.empty(0, np.uint8)
        return [data[offsets[i] : offsets[i + 1]] for i in range(n)]
    if pa.types.is_fixed_size_binary(leaf.type):
        width = leaf.type.byte_width
        data = np.frombuffer(leaf.buffers()[1], np.uint8)[leaf.offset * width : (leaf.offset + len(leaf)) * width]
        values = data
    else:
        values = leaf.to_numpy(zero_copy_only=False)
        if values.dtype != plan.dtype:
            raise SchemaError(f"{where}: pyarrow gave {values.dtype} values for a {plan.dtype} column.")
    for level, dim in enumerate(plan.dims):
        if dim is None or level >= len(lengths):
            continue
        bad = np.flatnonzero(lengths[level] != dim)
        if len(bad):
            raise SchemaError(f"{where}: a row holds a list of {lengths[level][bad[0]]} values at level {level}; "
                              f"the column's shape is {tuple(-1 if d is None else d for d in plan.dims)}.")
    trailing = tuple(plan.dims[1:]) if plan.dims and plan.dims[0] is None else tuple(plan.dims)
    if plan.dims and plan.dims[0] is None:
        values = values.reshape(-1, *trailing)
        ends = np.cumsum(lengths[0])
        return np.split(values, ends[:-1]) if n else []
    return values.reshape(n, *trailing)


class ArrowSource(Source):
    """Columns of Parquet files, Arrow IPC files or a Hugging Face ``save_to_disk`` folder as fields.

    Columns are held exactly or refused (see the module docstring): numbers and
    booleans as scalar fields, fixed-size lists as fixed fields, lists and binary as
    variable-length fields; strings, dictionaries, dates, structs and nulls are
    refused with the file, the column and the reason.

    Args:
        paths: A Parquet or Arrow IPC file, a directory of them (natural order), a
            glob pattern, a list of these, or a folder written by Hugging Face
            ``Dataset.save_to_disk`` (its ``.arrow`` files in the order of its
            ``state.json``). All files need the same column types.
        columns: Which columns to take: a list of names (the field names), a
            mapping of field name -> column name, or None for every column.

    Raises:
        DatasetNotFoundError: If a file does not exist.
        FormatError: For a file that is not Parquet or Arrow IPC, or is unreadable.
        SchemaError: For a column memseq cannot hold, an unknown column, or files
            whose column types differ.
        MemseqError: If pyarrow is not installed.
    """

    def __init__(self, paths: str | os.PathLike | Sequence[str | os.PathLike],
                 columns: Mapping[str, str] | Sequence[str] | None = None):
        pa = _import_pa()
        if isinstance(paths, (str, os.PathLike)) and is_hf_folder(os.fspath(paths)):
            self.files = _hf_files(os.fspath(paths))
        else:
            self.files = input_files(paths, PARQUET_EXTENSIONS + ARROW_EXTENSIONS, "Parquet or Arrow files")
        self.path = input_name(paths, self.files)
        self.kinds = [_file_kind(p) for p in self.files]
        counts, schema = [], None
        self.batch_rows: list[np.ndarray] = []  # rows of each row group / record batch, per file
        for path, kind in zip(self.files, self.kinds):
            file_schema, rows = self._inspect(pa, path, kind)
            self.batch_rows.append(rows)
            counts.append(int(rows.sum()))
            if schema is None:
                schema = file_schema
                self.columns = self._selection(columns, schema)
            for col in self.columns.values():
                if file_schema.get_field_index(col) < 0 or not file_schema.field(col).type.equals(schema.field(col).type):
                    got = file_schema.field(col).type if file_schema.get_field_index(col) >= 0 else "no such column"
                    raise SchemaError(f"{path}: column {col!r} is {got}; in {self.files[0]} it is "
                                      f"{schema.field(col).type}. All files need the same column types.")
        hf = _hf_shapes(schema)
        self.plans = {
            field: _plan(pa, schema.field(col).type, hf.get(col), f"{self.files[0]}: column {col!r}")
            for field, col in self.columns.items()
        }
        self.fields = {
            field: field_spec_at(field, plan.dtype, plan.dims, f"{self.files[0]}: column {self.columns[field]!r}")
            for field, plan in self.plans.items()
        }
        self.index = RowIndex(counts)
        self.num_rows = self.index.num_rows
        self.description = self.path
        self._open_cache: tuple[Any, ...] | None = None

    @staticmethod
    def _inspect(pa: Any, path: str, kind: str) -> tuple[Any, np.ndarray]:
        """The schema and the rows of each row group (Parquet) or record batch (Arrow) of a file."""
        try:
            if kind == "parquet":
                import pyarrow.parquet as pq

                pf = pq.ParquetFile(path)
                meta = pf.metadata
                rows = [meta.row_group(i).num_rows for i in range(meta.num_row_groups)]
                # schema_arrow: the types read_row_group gives (dictionaries restored from the stored Arrow schema).
                return pf.schema_arrow, np.asarray(rows, np.int64)
            with pa.memory_map(path) as source:
                if kind == "arrow-file":
                    reader = pa.ipc.open_file(source)
                    rows = [reader.get_batch(i).num_rows for i in range(reader.num_record_batches)]
                else:
                    reader = pa.ipc.open_stream(source)
                    rows = [batch.num_rows for batch in reader]  # zero-copy: only the metadata is read
                return reader.schema, np.asarray(rows, np.int64)
        except (pa.ArrowInvalid, pa.ArrowIOError, OSError) as e:
            raise FormatError(f"{path}: pyarrow cannot read it as {kind} ({e}); truncated or not that format?") from e

    def _selection(self, columns: Mapping[str, str] | Sequence[str] | None, schema: Any) -> dict[str, str]:
        names = list(schema.names)
        if columns is None:
            selection = {n: n for n in names}
        elif isinstance(columns, Mapping):
            selection = dict(columns)
        else:
            selection = {c: c for c in columns}
        for col in selection.values():
            if col not in names:
                raise SchemaError(f"{self.files[0]}: no column {col!r}; columns are {names}.")
        if not selection:
            raise SchemaError(f"{self.files[0]}: no columns selected.")
        return selection

    def _batch(self, pa: Any, file: int, batch: int) -> Any:
        """Record batch / row group ``batch`` of ``file`` as a table of the selected columns (the last one is kept)."""
        cache = self._open_cache
        if cache is not None and cache[0] == file and cache[1] == batch:
            return cache[2]
        path, kind = self.files[file], self.kinds[file]
        cols = sorted(set(self.columns.values()))
        try:
            if kind == "parquet":
                import pyarrow.parquet as pq

                handle = cache[3] if cache is not None and cache[0] == file else pq.ParquetFile(path)
                table = handle.read_row_group(batch, columns=cols)
            elif kind == "arrow-file":
                handle = cache[3] if cache is not None and cache[0] == file else pa.ipc.open_file(pa.memory_map(path))
                table = pa.Table.from_batches([handle.get_batch(batch)]).select(cols)
            else:
                # A stream is read forward only: reopen it to go back.
                if cache is not None and cache[0] == file and cache[1] < batch:
                    handle, at = cache[3], cache[1] + 1
                else:
                    handle, at = pa.ipc.open_stream(pa.memory_map(path)), 0
                for _ in range(at, batch):
                    handle.read_next_batch()
                table = pa.Table.from_batches([handle.read_next_batch()]).select(cols)
        except (pa.ArrowInvalid, pa.ArrowIOError, OSError, StopIteration) as e:
            raise CorruptFileError(f"{path}: cannot read {'row group' if kind == 'parquet' else 'record batch'} "
                                   f"{batch} ({e}); changed or truncated since the source was made?") from e
        if table.num_rows != self.batch_rows[file][batch]:
            raise CorruptFileError(f"{path}: batch {batch} holds {table.num_rows} rows, not {self.batch_rows[file][batch]}.")
        self._open_cache = (file, batch, table, handle)
        return table

    def read(self, start: int, stop: int) -> dict[str, Any]:
        pa = _import_pa()
        parts: dict[str, list[Any]] = {field: [] for field in self.fields}
        for file, a, b in self.index.pieces(start, stop):
            bounds = np.concatenate([[0], np.cumsum(self.batch_rows[file])])
            k = int(np.searchsorted(bounds, a, side="right")) - 1
            while a < b:
                while bounds[k + 1] <= a:
                    k += 1
                end = min(b, int(bounds[k + 1]))
                table = self._batch(pa, file, k)
                for field, col in self.columns.items():
                    column = table.column(col).slice(a - int(bounds[k]), end - a)
                    arr = column.combine_chunks() if column.num_chunks != 1 else column.chunk(0)
                    where = f"{self.files[file]}: column {col!r}"
                    parts[field].append(_column_rows(pa, arr, self.plans[field], where, a))
                a = end
        return join_pieces(self.fields, parts)

    def close(self) -> None:
        self._open_cache = None
