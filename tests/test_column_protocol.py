"""memseq.read.source: the column-source protocol, the column skeleton, and memseq.read.arrays.

A column written by a user the way :mod:`memseq.read.source` says (subclass
``memseq.Column``, implement ``parts()`` or ``gather_sorted``/``read_range``) is
indexed, taken, batched by MemmapSequence and read ahead like memseq's own columns.
"""

from __future__ import annotations

import os
import pickle

import numpy as np
import pytest
from conftest import assert_same_array

import memseq
from memseq.errors import BatchIndexError, CorruptFileError, SchemaError
from memseq.read.arrays import row_ranges, rows_array
from memseq.read.mapping import MappedFile
from memseq.read.raw import RawColumn, memmap_reference, reopen_raw
from memseq.read.source import ColumnBase, ColumnSource, RaggedSource
from memseq.readahead.batches import Prefetchable

ROWS = 100


class Squares(memseq.Column):
    """A computed column: row ``i`` is ``[i, i * i]``. Records what readahead asks of it."""

    def __init__(self, num_rows: int):
        super().__init__("squares", np.int64, (2,), [num_rows])
        self.asked: list[tuple[np.ndarray, bool]] = []

    def gather_sorted(self, idx, out):
        out[:, 0] = idx
        out[:, 1] = idx * idx

    def read_range(self, start, stop):
        out = np.empty((stop - start, 2), np.int64)
        self.gather_sorted(np.arange(start, stop, dtype=np.int64), out)
        return out

    def prefetch(self, ranges, now=False):
        self.asked.append((np.array(ranges, np.int64).reshape(-1, 2), now))
        return 0

    def is_cached(self, row):
        return False

    def check_sizes(self):
        pass


def squares(rows) -> np.ndarray:
    rows = np.asarray(rows, np.int64)
    return np.stack([rows, rows * rows], axis=1)


class TwoFiles(memseq.Column):
    """A file-backed column: its rows in two headerless files, one part each."""

    def __init__(self, paths, rows):
        super().__init__("x", np.float32, (3,), rows)
        self.paths, self.rows = list(paths), list(rows)
        self.mapped = None

    def parts(self):
        if self.mapped is None:
            self.mapped = [MappedFile.open(p, np.dtype(np.float32), (n, 3), 0) for p, n in zip(self.paths, self.rows)]
        return self.mapped


@pytest.fixture
def two_files(tmp_path):
    data = np.arange(ROWS * 3, dtype=np.float32).reshape(ROWS, 3)
    paths = [tmp_path / "a.bin", tmp_path / "b.bin"]
    data[:37].tofile(paths[0])
    data[37:].tofile(paths[1])
    return data, TwoFiles([str(p) for p in paths], [37, ROWS - 37])


@pytest.fixture
def columns(tmp_path):
    memseq.save(tmp_path / "ds", {"x": np.arange(40, dtype=np.int32).reshape(20, 2)}, shard_rows=7)
    with memseq.Writer(tmp_path / "rg", fields={"tokens": ("uint16", (None,))}) as w:
        w.append({"tokens": [np.arange(n, dtype=np.uint16) for n in (3, 0, 5)]})
    np.arange(50, dtype=np.uint16).tofile(tmp_path / "t.bin")
    raw = memseq.open_raw(tmp_path / "t.bin", dtype="uint16", shape=(-1,))
    ragged = memseq.open(tmp_path / "rg")["tokens"]
    return {
        "dataset": memseq.open(tmp_path / "ds")["x"],
        "raw": raw,
        "windows": memseq.windows(raw, length=5, stride=4),
        "values": ragged.values,
        "ragged": ragged,
    }


def test_every_memseq_column_is_a_column_source(columns):
    for kind in ("dataset", "raw", "windows", "values"):
        column = columns[kind]
        assert isinstance(column, ColumnSource), kind
        assert isinstance(column, Prefetchable), kind
        assert not isinstance(column, RaggedSource), kind
    ragged = columns["ragged"]
    assert isinstance(ragged, RaggedSource) and isinstance(ragged, ColumnBase)
    assert not isinstance(ragged, ColumnSource) and not isinstance(ragged, memseq.Column)
    assert not isinstance(np.zeros((3, 2)), ColumnSource)


def test_a_class_with_the_methods_is_a_column_source_without_subclassing():
    class Structural:
        name, dtype, row_shape = "s", np.dtype(np.int8), ()

        def __len__(self):
            return 0

        def parts(self):
            return ()

        def gather_sorted(self, idx, out):
            pass

        def read_range(self, start, stop):
            return np.empty(0, np.int8)

        def check_sizes(self):
            pass

    assert isinstance(Structural(), ColumnSource)
    del Structural.read_range
    assert not isinstance(Structural(), ColumnSource)


def test_public_hooks_read_what_indexing_reads(columns):
    column = columns["dataset"]
    assert [len(part.data()) for part in column.parts()] == [7, 7, 6]
    assert_same_array(column.read_range(5, 16), column[5:16])
    out = np.empty((4, 2), np.int32)
    column.gather_sorted(np.array([0, 6, 7, 19]), out)
    assert_same_array(out, column[[0, 6, 7, 19]])
    out = np.empty((3, 2), np.int32)
    column.take_sorted(np.array([1, 8, 15]), np.array([2, 0, 1]), out)  # rows placed at out[order[k]]
    assert_same_array(out, column[[8, 15, 1]])
    column.check_sizes()
    with pytest.raises(NotImplementedError, match="TokenWindows has no mapped parts"):
        columns["windows"].parts()


def test_computed_user_column_indexes_like_any_column():
    column = Squares(ROWS)
    assert column.shape == (ROWS, 2) and len(column) == ROWS and column.nbytes == ROWS * 16
    assert_same_array(column[7], squares([7])[0])
    assert_same_array(column[-1], squares([ROWS - 1])[0])
    assert_same_array(column[10:20:3], squares(range(10, 20, 3)))
    assert_same_array(column[[9, 2, 9]], squares([9, 2, 9]))
    assert_same_array(column[np.arange(ROWS) % 10 == 0], squares(range(0, ROWS, 10)))
    assert_same_array(column[3, 1], np.int64(9))
    assert_same_array(np.asarray(column), squares(range(ROWS)))
    with pytest.raises(BatchIndexError, match=f"squares: row index {ROWS} is out of range for {ROWS} rows"):
        column[ROWS]
    with pytest.raises(SchemaError, match="out must be a C-contiguous int64 array of shape"):
        column.take([1, 2], out=np.empty((2, 3), np.int64))


def test_computed_user_column_is_batched_and_read_ahead_by_memmap_sequence():
    column = Squares(ROWS)
    labels = np.arange(ROWS)
    seq = memseq.MemmapSequence({"x": column, "y": labels}, x="x", y="y", batch_size=8, seed=3, readahead=1)
    assert seq.readahead == 1
    for epoch in (0, 1):
        for index in range(len(seq)):
            x, y = seq.get_batch(index, epoch)
            rows = seq.batch_rows(index, epoch)
            assert_same_array(x, squares(rows))
            assert_same_array(y, labels[rows])
    # Readahead asked the user column for batch 0 (now, from this thread) and the next ones.
    first, now = column.asked[0]
    assert now is True
    in_first = ((seq.batch_rows(0, 0)[:, None] >= first[:, 0]) & (seq.batch_rows(0, 0)[:, None] < first[:, 1])).any(1)
    assert in_first.all()
    assert any(not now for _, now in column.asked)


def test_file_backed_user_column_gets_every_read_from_parts(two_files, tmp_path):
    data, column = two_files
    assert isinstance(column, ColumnSource) and isinstance(column, Prefetchable)
    assert_same_array(column[:], data)
    assert_same_array(column[[99, 36, 37, 0]], data[[99, 36, 37, 0]])  # across the two files
    assert_same_array(column.read_windows([30, 35], 5), np.stack([data[30:35], data[35:40]]))
    assert column.prefetch([[0, ROWS]]) > 0
    assert column.is_cached(50) in (True, False)
    column.check_sizes()
    seq = memseq.MemmapSequence({"x": column}, x="x", batch_size=16, seed=0, readahead=True)
    for index in range(len(seq)):
        (x,) = seq.get_batch(index)
        assert_same_array(x, data[seq.batch_rows(index)])
    os.truncate(column.paths[1], 12)  # one row left: the rest would read zeros or SIGBUS
    with pytest.raises(CorruptFileError, match="b.bin: the file is 12 bytes"):
        column[[90]]
    with pytest.raises(CorruptFileError, match="b.bin"):
        column.check_sizes()


def test_fixed_and_ragged_columns_share_one_skeleton(columns):
    fixed, ragged = columns["dataset"], columns["ragged"]
    for column, rows in ((fixed, 20), (ragged, 3)):
        assert len(column) == rows and column.shape[0] == rows and column.ndim == len(column.shape)
        assert len(list(column)) == rows
        with pytest.raises(BatchIndexError, match=f"{column.name}: row index -{rows + 1} is out of range for {rows} rows"):
            column[-rows - 1]
        with pytest.raises(BatchIndexError, match=f"{column.name}: row index {rows} is out of range"):
            column.take([0, rows])
        column.check_sizes()
    assert ragged.shape == (3, None) and ragged.row_shape == (None,)
    assert_same_array(ragged[-1], np.arange(5, dtype=np.uint16))
    assert [len(r) for r in ragged[np.array([True, False, True])]] == [3, 5]


def test_raw_columns_pickle_through_the_public_reopen_raw(columns, tmp_path):
    raw = columns["raw"]
    data = pickle.dumps(raw)
    assert b"reopen_raw" in data and b"_reopen_raw" not in data
    assert_same_array(pickle.loads(data)[10:13], np.arange(10, 13, dtype=np.uint16))
    rebuilt = reopen_raw(str(tmp_path / "t.bin"), "<u2", (50,), 0)
    assert rebuilt.parts is not None and rebuilt.path == raw.path
    assert_same_array(rebuilt[[49, 0]], np.array([49, 0], np.uint16))
    closed = reopen_raw(str(tmp_path / "t.bin"), "<u2", (50,), 0, closed=True)
    with pytest.raises(memseq.DatasetClosedError, match="the raw column was closed"):
        closed[0]


def test_rows_array_keeps_arrays_coerces_the_rest_and_checks_rank():
    array = np.zeros((3, 2))
    assert rows_array(array, "here") is array
    assert_same_array(rows_array([[1, 2], [3, 4]], "here"), np.array([[1, 2], [3, 4]]))
    with pytest.raises(SchemaError, match=r"^records\(\): field 'x' needs a row dimension. Received shape: \(\)$"):
        rows_array(5, "records(): field 'x'")
    with pytest.raises(SchemaError, match=r"^windows\(\) needs a 1-D column of tokens. Received shape: \(3, 2\)$"):
        rows_array(array, "windows()", expected="a 1-D column of tokens", ndim=1)
    # The readers say it the same way.
    with pytest.raises(SchemaError, match=r"^records\(\): field 'x' needs a row dimension. Received shape: \(\)$"):
        memseq.records({"x": np.float32(1)})
    with pytest.raises(SchemaError, match=r"^windows\(\) needs a 1-D column of tokens. Received shape: \(3, 2\)$"):
        memseq.windows(array, length=2)


def test_row_ranges_shape_and_no_copy():
    ranges = np.array([[0, 4], [8, 9]], np.int64)
    assert np.shares_memory(row_ranges(ranges), ranges)
    assert_same_array(row_ranges([0, 4, 8, 9]), ranges)
    assert row_ranges([]).shape == (0, 2)


def test_memmap_reference_reads_the_same_bytes_as_the_memmap(tmp_path):
    data = np.arange(60, dtype=np.float32).reshape(20, 3)
    (tmp_path / "m.bin").write_bytes(b"\0" * 16 + data.tobytes())
    mm = np.memmap(tmp_path / "m.bin", dtype=np.float32, mode="r", offset=16, shape=(20, 3))
    for view in (mm, mm[5:]):  # a view starts further into the file
        ref = memmap_reference(view)
        assert ref[1:] == ("<f4", view.shape, 16 + 12 * (20 - len(view)))
        assert_same_array(RawColumn(*ref)[:], np.asarray(view))
    assert memmap_reference(np.memmap(tmp_path / "m.bin", dtype=np.float32, mode="c")) is None
    assert memmap_reference(mm[:, 1]) is None  # not contiguous: pickles as data
