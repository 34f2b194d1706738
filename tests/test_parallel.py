"""memseq.write.parallel: the pre-sized parallel writer, reading any RowSource."""

from __future__ import annotations

import os

import numpy as np
import pytest

import memseq
from memseq import convert as cv
from memseq.storage import format as fmt
from memseq.write import parallel


class PlainRows:
    """A row source that is not a memseq.convert.Source: the protocol is all the writer needs."""

    max_unit_rows = 7  # many small units: every file is written in pieces

    def __init__(self, arrays: dict[str, np.ndarray]):
        self.arrays = arrays
        self.fields = {name: fmt.field_spec(name, a.dtype, a.shape[1:]) for name, a in arrays.items()}
        self.num_rows = len(next(iter(arrays.values())))
        self.description = "plain rows"
        self.closed = 0

    def read(self, start: int, stop: int) -> dict[str, np.ndarray]:
        return {name: a[start:stop] for name, a in self.arrays.items()}

    def close(self) -> None:
        self.closed += 1


def _tree_bytes(root) -> dict[str, bytes]:
    out = {}
    for dirpath, _, files in os.walk(root):
        for name in files:
            path = os.path.join(dirpath, name)
            with open(path, "rb") as f:
                out[os.path.relpath(path, root)] = f.read()
    return out


def _arrays() -> dict[str, np.ndarray]:
    rng = np.random.default_rng(0)
    return {"x": rng.integers(0, 255, (50, 3, 2), dtype=np.uint8), "y": rng.standard_normal(50).astype(np.float32)}


def test_convert_sources_and_plain_classes_satisfy_the_row_source_protocol(tmp_path):
    np.save(tmp_path / "x.npy", np.zeros((4, 2), np.int16))
    assert isinstance(cv.NpySource(tmp_path / "x.npy", "x"), parallel.RowSource)
    assert isinstance(PlainRows(_arrays()), parallel.RowSource)

    class NoRead:
        fields, num_rows, description, max_unit_rows = {}, 0, "", None

        def close(self):
            pass

    assert not isinstance(NoRead(), parallel.RowSource)


@pytest.mark.parametrize("jobs", [1, 2])
@pytest.mark.parametrize("shard_rows", [None, 20])
def test_write_rows_from_a_plain_source_gives_the_bytes_of_save(tmp_path, jobs, shard_rows):
    arrays = _arrays()
    source = PlainRows(arrays)
    dst = str(tmp_path / "out")
    parallel.write_rows(dst, [source], dict(source.fields), {"x": 0, "y": 0}, shard_rows=shard_rows, jobs=jobs,
                        overwrite=False, progress=False, desc="test")
    memseq.save(tmp_path / "saved", arrays, shard_rows=shard_rows)
    assert _tree_bytes(dst) == _tree_bytes(tmp_path / "saved")
    assert source.closed >= 1  # the parent closes its sources after the run
    memseq.open(dst).verify()


def test_write_rows_refuses_rows_that_are_not_what_the_source_declared(tmp_path):
    class Lying(PlainRows):
        def read(self, start, stop):
            return {"x": np.zeros((stop - start, 3, 3), np.uint8), "y": self.arrays["y"][start:stop]}

    source = Lying(_arrays())
    with pytest.raises(memseq.SchemaError, match=r"plain rows \(rows 0:7\): field 'x' takes rows of shape \(3, 2\)"):
        parallel.write_rows(str(tmp_path / "out"), [source], dict(source.fields), {"x": 0, "y": 0}, shard_rows=None,
                            jobs=1, overwrite=False, progress=False, desc="test")
    assert os.listdir(tmp_path) == []  # no dataset, no temporary directory


def test_a_source_os_error_names_its_file_and_leaves_nothing(tmp_path):
    class Vanishing(PlainRows):
        def read(self, start, stop):
            raise FileNotFoundError(2, "No such file or directory", str(tmp_path / "gone.bin"))

    source = Vanishing(_arrays())
    with pytest.raises(memseq.MemseqError, match="gone.bin") as info:
        parallel.write_rows(str(tmp_path / "out"), [source], dict(source.fields), {"x": 0, "y": 0}, shard_rows=None,
                            jobs=1, overwrite=False, progress=False, desc="test")
    assert isinstance(info.value, FileNotFoundError)
    assert os.listdir(tmp_path) == []
