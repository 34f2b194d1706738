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


def _vds_candidates(file_name: str, vds_path: str) -> list[str]:
    """Where HDF5 looks for the source file ``file_name`` of a virtual dataset in ``vds_path``, in order.

    An absolute name is used as it is. A relative one is tried under each entry of
    ``HDF5_VDS_PREFIX`` (``${ORIGIN}`` is the virtual dataset file's directory), then
    beside the virtual dataset file, then in the current directory.
    """
    if os.path.isabs(file_name):
        return [file_name]
    origin = os.path.dirname(os.path.abspath(vds_path))
    prefixes = [p.replace("${ORIGIN}", origin) for p in os.environ.get("HDF5_VDS_PREFIX", "").split(os.pathsep) if p]
    return [os.path.join(p, file_name) for p in prefixes] + [os.path.join(origin, file_name), file_name]


def _check_virtual(h5py: Any, f: Any, dset: Any, path: str, where: str) -> None:
    """Refuses a virtual dataset with a source HDF5 would not find.

    HDF5 reads the fill value for every row mapped to a missing source file or dataset,
    without an error: converting it would commit values HDF5 invented.

    Raises:
        FormatError: Naming the missing source, the fill value, and what to do.
    """
    if not dset.is_virtual:
        return
    fill = np.asarray(dset.fillvalue).tolist()

    def refuse(problem: str) -> FormatError:
        return FormatError(
            f"{where}: a virtual dataset whose {problem}. HDF5 would return the fill value ({fill!r}) for "
            "its rows without an error; memseq refuses rather than convert invented values. Restore the "
            "source (or point HDF5_VDS_PREFIX at it), or convert the source datasets themselves."
        )

    opened: dict[str, Any] = {}
    try:
        for vmap in dset.virtual_sources():
            file_name, dset_name = vmap.file_name, vmap.dset_name
            if "%" in file_name or "%" in dset_name:
                raise refuse(f"sources are named by a printf-style pattern ({file_name!r}, {dset_name!r}), which "
                             "memseq cannot check, so any missing one would read as fill values")
            if file_name == ".":
                src = f
            else:
                found = next((c for c in _vds_candidates(file_name, path) if os.path.isfile(c)), None)
                if found is None:
                    raise refuse(f"source file {file_name!r} (for dataset {dset_name!r}) is missing")
                src = opened.get(found)
                if src is None:
                    try:
                        src = opened[found] = h5py.File(found, "r")
                    except OSError as e:
                        raise refuse(f"source file {found} cannot be opened ({e})") from e
            source = src.get(dset_name)
            if not isinstance(source, h5py.Dataset):
                raise refuse(f"source dataset {dset_name!r} is missing from {file_name!r}")
            # A source smaller than its mapping is an error of HDF5's own on reading
            # ("insufficient elements"), which read() reports as CorruptFileError.
    finally:
        for handle in opened.values():
            handle.close()


class HDF5Source(Source):
    """Datasets of an HDF5 file as fields, read by ``h5py`` slicing (needs h5py).

    Args:
        path: The HDF5 file.
        datasets: A mapping of field name -> dataset path in the file (``"/x"`` or
            ``"group/x"``), a list of dataset paths (field names are the paths with
            ``/`` turned into ``.``), or None for every dataset in the file.

    Raises:
        DatasetNotFoundError: If the file does not exist.
        FormatError: If it is not a readable HDF5 file, a path is not a dataset, or a
            virtual dataset has a missing source file or source dataset (HDF5 would
            read its fill value for those rows: memseq refuses rather than convert
            invented values).
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
                _check_virtual(h5py, f, obj, self.path, where)
                fields[name] = field_spec_at(name, obj.dtype, obj.shape[1:], where)
                self.datasets[name] = dpath
                rows[name] = int(obj.shape[0])
        self._set_table(fields, rows, "datasets")
        self._open_file = None

    def read(self, start: int, stop: int) -> dict[str, np.ndarray]:
        if self._open_file is None:
            h5py = _import_h5py()
            self._open_file = h5py.File(self.path, "r")
            # Checked again in each process that reads: a source file may have gone since.
            for dpath in self.datasets.values():
                _check_virtual(h5py, self._open_file, self._open_file[dpath], self.path, f"{self.path}:{dpath}")
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
