"""The exception hierarchy: every memseq error is a MemseqError and the fitting builtin."""

from __future__ import annotations

import errno
import pickle

import pytest

import memseq
from memseq import errors

HIERARCHY = [
    (memseq.DatasetNotFoundError, FileNotFoundError),
    (memseq.DatasetExistsError, FileExistsError),
    (memseq.FormatError, ValueError),
    (memseq.UnsafePathError, ValueError),
    (memseq.CorruptFileError, ValueError),
    (memseq.SchemaError, ValueError),
    (memseq.BatchIndexError, IndexError),
    (memseq.DatasetReplacedError, RuntimeError),
    (memseq.DatasetClosedError, ValueError),
    (memseq.FileAccessError, OSError),
    (memseq.DatasetPermissionError, PermissionError),
    (memseq.WriteError, OSError),
    (memseq.RemoteError, OSError),
    (memseq.NotRegularFileError, ValueError),
]


@pytest.mark.parametrize("cls, builtin", HIERARCHY, ids=[c.__name__ for c, _ in HIERARCHY])
def test_subclass_inherits_memseq_error_and_builtin(cls, builtin):
    assert issubclass(cls, memseq.MemseqError)
    assert issubclass(cls, builtin)
    err = cls("data/train/image.npy: something failed")
    # Existing `except <builtin>` clauses catch it, and so does `except MemseqError`.
    with pytest.raises(builtin, match="image.npy: something failed"):
        raise err
    with pytest.raises(memseq.MemseqError, match="image.npy"):
        raise err


def test_file_problems_are_format_errors():
    # Unsafe paths and corrupt files are both "cannot read this format" problems.
    assert issubclass(memseq.UnsafePathError, memseq.FormatError)
    assert issubclass(memseq.CorruptFileError, memseq.FormatError)


def test_memseq_error_is_an_exception_not_a_builtin_category():
    assert issubclass(memseq.MemseqError, Exception)
    for builtin in (FileNotFoundError, FileExistsError, ValueError, IndexError, KeyError, OSError):
        assert not issubclass(memseq.MemseqError, builtin)


def test_every_error_is_exported_and_listed():
    for name in errors.__all__:
        cls = getattr(errors, name)
        assert issubclass(cls, memseq.MemseqError)
        assert getattr(memseq, name) is cls
        assert name in memseq.__all__
    assert {c.__name__ for c, _ in HIERARCHY} | {"MemseqError"} == set(errors.__all__)


def test_not_found_error_carries_through_oserror_handlers():
    # FileNotFoundError is an OSError: generic I/O handlers see it too.
    with pytest.raises(OSError, match="missing"):
        raise memseq.DatasetNotFoundError("dataset missing")


def test_os_errors_keep_errno_and_filename_and_pickle():
    err = memseq.WriteError("/d/x.npy: writing failed: No space left on device.", errno=errno.ENOSPC, filename="/d/x.npy")
    assert isinstance(err, OSError) and isinstance(err, memseq.FileAccessError)
    assert (err.errno, err.filename) == (errno.ENOSPC, "/d/x.npy")
    assert str(err) == "/d/x.npy: writing failed: No space left on device."  # no "[Errno 28]" prefix
    again = pickle.loads(pickle.dumps(err))
    assert type(again) is memseq.WriteError and (again.errno, again.filename, str(again)) == (err.errno, err.filename, str(err))
    denied = memseq.DatasetPermissionError("x: permission denied", errno=errno.EACCES, filename="x")
    assert isinstance(denied, PermissionError) and isinstance(denied, memseq.FileAccessError)


def test_special_files_and_replaced_datasets_have_their_own_errors():
    assert issubclass(memseq.NotRegularFileError, memseq.FormatError)
    assert not issubclass(memseq.DatasetReplacedError, memseq.CorruptFileError)  # replaced is not corrupt
