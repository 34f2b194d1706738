"""``.npy`` files as fields, memory-mapped (``np.save`` output)."""

from __future__ import annotations

import os

from memseq.convert._base import check_file, field_spec_at
from memseq.convert._raw import MappedFileSource
from memseq.errors import CorruptFileError, SchemaError
from memseq.storage import format as fmt

__all__ = ["NpySource"]


class NpySource(MappedFileSource):
    """A ``.npy`` file as one field, memory-mapped and read a chunk at a time.

    Args:
        path: The ``.npy`` file (C order, bool or numeric dtype, at least 1-D).
        name: The field name; the file's stem by default.

    Raises:
        DatasetNotFoundError: If the file does not exist.
        FormatError: If it is not a readable C-order ``.npy`` file.
        CorruptFileError: If it is shorter (truncated) or longer than its header says.
        SchemaError: For an unsupported dtype, a 0-d array or an invalid name.
    """

    def __init__(self, path: str | os.PathLike, name: str | None = None):
        self.path = check_file(path, "a .npy file")
        name = os.path.splitext(os.path.basename(self.path))[0] if name is None else name
        with open(self.path, "rb") as f:
            dtype, shape, offset = fmt.read_npy_header(f, self.path)
            size = os.fstat(f.fileno()).st_size
        if not shape:
            raise SchemaError(f"{self.path}: a 0-d array has no rows; memseq fields need shape (rows, ...).")
        spec = field_spec_at(name, dtype, shape[1:], self.path)
        expected = offset + shape[0] * spec.row_nbytes
        if size != expected:
            raise CorruptFileError(
                f"{self.path}: the .npy header says shape {shape} of {dtype} ({expected} bytes with the header) "
                f"but the file is {size} bytes ({'truncated' if size < expected else 'has trailing bytes'})."
            )
        self.dtype = dtype
        self.offset = offset
        self.shape = shape
        self.fields = {name: spec}
        self.num_rows = shape[0]
        self.description = self.path
        self._open_column = None
