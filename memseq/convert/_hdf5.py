"""Datasets of HDF5 files as fields, read by ``h5py`` slicing (h5py is optional)."""

from __future__ import annotations

import os
from collections.abc import Mapping, Sequence
from typing import Any

import numpy as np

from memseq.convert._base import Source, check_file, field_spec_at, optional_module
from memseq.errors import CorruptFileError, FormatError, SchemaError

__all__ = ["HDF5Source", "HDF5_MAGIC", "HDF5_EXTENSIONS"]

#: The first bytes of an HDF5 file (its superblock signature at offset 0).
HDF5_MAGIC = b"\x89HDF\r\n\x1a\n"
#: File name extensions (lower case) taken as HDF5 without looking inside.
HDF5_EXTENSIONS = (".h5", ".hdf5", ".hdf", ".he5")


def _import_h5py() -> Any:
    return optional_module("h5py", 'HDF5 sources need h5py: pip install "memseq[convert]" (or pip install h5py).')


def _h5_field_name(dataset_path: str) -> str:
    return dataset_path.strip("/").replace("/", ".")


def _selection(f: Any, h5py: Any, path: str, datasets: Mapping[str, str] | Sequence[str] | None) -> dict[str, str]:
    """Field name -> dataset path, from the ``datasets`` argument of :class:`HDF5Source`."""
    if datasets is None:
        found: list[str] = []
        f.visititems(lambda name, obj: found.append("/" + name) if isinstance(obj, h5py.Dataset) else None)
        if not found:
            raise FormatError(f"{path}: the file holds no datasets.")
        return {_h5_field_name(p): p for p in found}
    if isinstance(datasets, Mapping):
        return dict(datasets)
    return {_h5_field_name(p): p for p in datasets}


class HDF5Source(Source):
    """Datasets of an HDF5 file as fields, read by ``h5py`` slicing (needs h5py).

    Args:
        path: The HDF5 file.
        datasets: A mapping of field name -> dataset path in the file (``"/x"`` or
            ``"group/x"``), a list of dataset paths (field names are the paths with
            ``/`` turned into ``.``), or None for every dataset in the file.

    Raises:
        DatasetNotFoundError: If the file does not exist.
        FormatError: If it is not a readable HDF5 file or a path is not a dataset.
        SchemaError: For a missing dataset, unsupported dtype or unequal lengths.
        MemseqError: If h5py is not installed.
    """

    def __init__(self, path: str | os.PathLike, datasets: Mapping[str, str] | Sequence[str] | None = None):
        self.path = check_file(path, "an HDF5 file")
        h5py = _import_h5py()
        try:
            f = h5py.File(self.path, "r")
        except OSError as e:
            raise FormatError(f"{self.path}: not a readable HDF5 file ({e}).") from e
        with f:
            self.datasets: dict[str, str] = {}
            fields = {}
            rows = {}
            for name, dpath in _selection(f, h5py, self.path, datasets).items():
                where = f"{self.path}:{dpath}"
                try:
                    obj = f[dpath]
                except (KeyError, ValueError) as e:
                    raise SchemaError(f"{where}: no such dataset in the file.") from e
                if not isinstance(obj, h5py.Dataset):
                    raise FormatError(f"{where}: is a {type(obj).__name__}, not a dataset.")
                if obj.shape is None or len(obj.shape) == 0:
                    raise SchemaError(f"{where}: a scalar dataset has no rows.")
                fields[name] = field_spec_at(name, obj.dtype, obj.shape[1:], where)
                self.datasets[name] = dpath
                rows[name] = int(obj.shape[0])
        self._set_table(fields, rows, "datasets")
        self._open_file = None

    def read(self, start: int, stop: int) -> dict[str, np.ndarray]:
        if self._open_file is None:
            self._open_file = _import_h5py().File(self.path, "r")
        out = {}
        for name, dpath in self.datasets.items():
            spec = self.fields[name]
            buf = np.empty((stop - start, *spec.shape), spec.dtype)
            try:
                if stop > start:
                    self._open_file[dpath].read_direct(buf, np.s_[start:stop])
            except (OSError, ValueError, TypeError) as e:
                raise CorruptFileError(f"{self.path}:{dpath}: cannot read rows {start}:{stop} ({e}).") from e
            out[name] = buf
        return out

    def close(self) -> None:
        if self._open_file is not None:
            self._open_file.close()
        self._open_file = None
