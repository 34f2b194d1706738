"""Converting variable-length sources: one-row .npy directories and token streams (API and command)."""

from __future__ import annotations

import numpy as np
import pytest
from conftest import assert_same_array

import memseq
from memseq import convert as cv
from memseq.cli import main


def _docs(directory, lengths, trailing=(), dtype=np.uint16):
    directory.mkdir()
    rows = []
    for i, n in enumerate(lengths):
        row = (np.arange(n * int(np.prod(trailing, dtype=int))) + i).astype(dtype).reshape(n, *trailing)
        np.save(directory / f"doc{i}.npy", row)
        rows.append(row)
    (directory / "README.txt").write_text("ignored")
    return rows


def test_npy_rows_directory_in_natural_order(tmp_path):
    rows = _docs(tmp_path / "docs", [3, 0, 7, 1, 4, 2, 5, 9, 6, 8, 10, 12], trailing=(2,))
    ds = cv.convert(tmp_path / "out", [cv.NpyRowsSource(tmp_path / "docs", "frames"),
                                       cv.NpySource(_labels(tmp_path, 12), "label")], shard_rows=5)
    assert ds.fields["frames"].shape == (None, 2)
    for got, want in zip(ds["frames"][:], rows):  # doc10 after doc9, not after doc1
        assert_same_array(got, want)
    ds.verify()


def _labels(tmp_path, n):
    np.save(tmp_path / "labels.npy", np.arange(n))
    return tmp_path / "labels.npy"


def test_npy_rows_errors(tmp_path):
    (tmp_path / "empty").mkdir()
    with pytest.raises(memseq.DatasetNotFoundError, match="no .npy files"):
        cv.NpyRowsSource(tmp_path / "empty", "x")
    _docs(tmp_path / "mixed", [2, 3])
    np.save(tmp_path / "mixed" / "doc9.npy", np.zeros(3, np.float32))
    with pytest.raises(memseq.FormatError, match="All files need the same dtype"):
        cv.NpyRowsSource(tmp_path / "mixed", "x")
    (tmp_path / "scalar").mkdir()
    np.save(tmp_path / "scalar" / "a.npy", np.int64(3))
    with pytest.raises(memseq.FormatError, match="0-d array"):
        cv.NpyRowsSource(tmp_path / "scalar", "x")


@pytest.mark.parametrize("stream, rows", [
    ([5, 6, 0, 7, 0, 1, 2], [[5, 6, 0], [7, 0], [1, 2]]),
    ([0, 0, 3, 0], [[0], [0], [3, 0]]),
    ([], []),
    ([4, 4], [[4, 4]]),
])
def test_token_stream_is_cut_after_each_separator(tmp_path, stream, rows):
    np.array(stream, np.uint16).tofile(tmp_path / "train.bin")
    ds = cv.convert(tmp_path / "out", cv.TokenStreamSource(tmp_path / "train.bin", "tokens", "uint16", 0))
    assert [r.tolist() for r in ds["tokens"][:]] == rows
    assert np.concatenate(ds["tokens"][:] or [np.empty(0, np.uint16)]).tolist() == stream


def test_token_stream_long_and_errors(tmp_path):
    rng = np.random.default_rng(0)
    stream = rng.integers(0, 1000, 200_000).astype(np.uint16)
    stream.tofile(tmp_path / "train.bin")
    ds = cv.convert(tmp_path / "out", cv.TokenStreamSource(tmp_path / "train.bin", "tokens", "uint16", 999), shard_rows=50)
    assert_same_array(np.concatenate(ds["tokens"][:]), stream)
    assert len(ds) == int((stream == 999).sum()) + (stream[-1] != 999)
    with pytest.raises(memseq.SchemaError, match="separator 70000 does not fit uint16"):
        cv.TokenStreamSource(tmp_path / "train.bin", "tokens", "uint16", 70000)
    with pytest.raises(memseq.SchemaError, match="needs an integer dtype"):
        cv.TokenStreamSource(tmp_path / "train.bin", "tokens", "float16", 1)


def test_command_line(tmp_path, capsys):
    rows = _docs(tmp_path / "docs", [3, 1, 4])
    assert main(["convert", str(tmp_path / "docs"), str(tmp_path / "a")]) == 0
    assert [r.tolist() for r in memseq.open(tmp_path / "a")["docs"][:]] == [r.tolist() for r in rows]
    assert main(["convert", str(tmp_path / "b"), "--field", f"tokens={tmp_path / 'docs'}",
                 "--field", f"label={_labels(tmp_path, 3)}"]) == 0
    assert memseq.open(tmp_path / "b").fields["tokens"].shape == (None,)
    np.array([1, 2, 9, 3], np.uint16).tofile(tmp_path / "train.bin")
    assert main(["convert", str(tmp_path / "c"), "--tokens", f"tokens={tmp_path / 'train.bin'}:uint16:9"]) == 0
    assert [r.tolist() for r in memseq.open(tmp_path / "c")["tokens"][:]] == [[1, 2, 9], [3]]
    # Re-sharding a dataset with a variable-length field goes through the streaming path.
    assert main(["convert", str(tmp_path / "b"), str(tmp_path / "d"), "--shard-rows", "2"]) == 0
    assert memseq.open(tmp_path / "d").num_shards == 2
    assert main(["convert", str(tmp_path / "e"), "--tokens", f"tokens={tmp_path / 'train.bin'}:uint16"]) != 0
    assert "--tokens takes NAME=PATH:DTYPE:SEPARATOR" in capsys.readouterr().err
