"""Converting existing data into memseq datasets: streaming, parallel, atomic.

Sources
-------
Each source kind reads rows ``[start, stop)`` on demand and never loads a whole
file into memory:

- :class:`NpySource`: one ``.npy`` file per field, memory-mapped (``np.save`` output).
- :class:`NpzSource`: the arrays of an ``.npz`` archive. Stored members (``np.savez``)
  are read in place with ``pread``; compressed members (``np.savez_compressed``) are
  decompressed as a stream (a job that starts in the middle of a compressed member
  has to decompress everything before its rows, so compressed archives gain little
  from ``jobs > 1``).
- :class:`RawSource`: headerless files as ``np.memmap(..., mode="w+")`` writes them,
  opened with :func:`memseq.open_raw` (the dtype and shape must be given).
- :class:`HDF5Source`: datasets of an HDF5 file, read by ``h5py`` slicing (needs the
  optional ``h5py``: ``pip install "memseq[convert]"``).
- :class:`NpyRowsSource`: a directory of ``.npy`` files with one row each, as a
  variable-length field; :class:`TokenStreamSource`: a headerless token file cut into
  rows (documents) after each separator token. Conversions with a variable-length
  field stream through one :class:`memseq.Writer` in this process.
- :class:`ImageFolderSource`: a folder with one sub-folder per class, giving the
  fields ``image`` (``(height, width, channels)``: ``uint8`` for 8-bit images,
  ``uint16`` for 16-bit grayscale, values kept exactly; 16-bit colour images, which
  Pillow reads as 8-bit, are refused) and ``label`` (``int64``, the index of the
  class in alphabetical order). Images are decoded one at a time with Pillow
  (optional: ``pip install "memseq[convert]"``).

Migrating from other libraries' formats (see ``docs/guide/migrate.md``):

- :class:`TFRecordSource`: TFRecord files of ``tf.train.Example`` records, read in runs
  with every CRC-32C checked and parsed by TensorFlow; features declared (``"int64"``, ``"float32:28,28"``,
  ``"int64:-1"``, ``"bytes"``, ``"bytes:uint8:28,28,1"``) or inferred from the first
  records.
- :class:`ArrowSource`: Parquet files, Arrow IPC files and Hugging Face
  ``save_to_disk`` folders, read with pyarrow: numbers, booleans, fixed-size lists
  (trailing dimensions), lists and binary (variable-length); a column memseq cannot
  hold (strings, dictionaries, dates, structs, nulls) is refused with the reason.
- :class:`WebDatasetSource`: WebDataset tar shards, one row per sample, members mapped
  to fields by extension (``.npy`` arrays, ``.cls``/``.txt`` integers, images through
  Pillow at their exact mode); a sample missing a member is refused.

These run in worker processes with ``jobs > 1`` when every field is fixed, like every
source; :func:`convert_sources_with_dask` runs any sources of fixed fields on a Dask
scheduler instead (a ``dask.distributed`` cluster for inputs of many files).

Values a library would invent are refused, never converted: an HDF5 virtual dataset
whose source file or dataset is missing (HDF5 reads its fill value), an object array
in an ``.npz`` (memseq never unpickles).

Several sources can be combined (say images from an ``.npy`` file and labels from
an HDF5 file) as long as they have the same number of rows and distinct field names.

Output
------
:func:`convert` writes the same bytes as :func:`memseq.save` would for the same
arrays and ``shard_rows``: the layout (which rows go into which shard file)
depends only on the number of rows and ``shard_rows``, never on ``jobs``, so
``jobs=1`` and ``jobs=8`` produce byte-identical datasets.

How ``jobs > 1`` stays atomic: the parent validates every source, creates a
temporary directory beside the destination and pre-sizes every data file in it
with its final ``.npy`` header. The rows are cut into work units (a few MiB each,
never straddling a shard), and a pool of worker processes writes each unit's rows
at their final offsets with ``pwrite``, returning the CRC-32 of each piece. The
parent combines the pieces' CRC-32s in file order (``crc32_combine``, no second
read), fsyncs the files, writes the manifest *last*, and renames the directory
into place. Any error (a corrupt image, a truncated file, a worker killed, Ctrl-C)
removes the temporary directory: nothing appears at the destination.

Modules
-------
One private module per source kind (``_npy``, ``_raw``, ``_npz``, ``_hdf5``,
``_memseq``, ``_images``, ``_tfrecord``, ``_arrow``, ``_webdataset``) on the base class
in ``_base``; ``_tfrecord_frames`` reads TFRecord framing; ``_inputs`` lists inputs given as many files; ``_sources_dask`` writes
sources through Dask; ``_detect`` finds the kind
of a path; ``_engine`` checks and combines the sources and writes them with
:mod:`memseq.write.parallel` (plan, run, finish). The names below are
the public ones. Parsing the command line's option strings (``--field``, ``--raw``)
is the command's business: :mod:`memseq.cli.options`.
"""

from __future__ import annotations

from memseq.convert._arrow import ArrowSource
from memseq.convert._base import Source
from memseq.convert._dask_inputs import convert_with_dask, dask_arrays, is_dask_input
from memseq.convert._detect import migration_kind, source_for_path, source_kind
from memseq.convert._engine import convert
from memseq.convert._hdf5 import HDF5Source
from memseq.convert._images import IMAGE_EXTENSIONS, ImageFolderSource, write_classes
from memseq.convert._memseq import MemseqSource
from memseq.convert._npy import NpySource
from memseq.convert._npz import NpzSource
from memseq.convert._ragged import NpyRowsSource, TokenStreamSource
from memseq.convert._raw import RawSource
from memseq.convert._sources_dask import convert_sources_with_dask, source_dask_arrays
from memseq.convert._tfrecord import TFRecordSource
from memseq.convert._webdataset import WebDatasetSource
from memseq.storage.checksum import crc32_combine

__all__ = [
    "Source",
    "NpySource",
    "NpzSource",
    "RawSource",
    "HDF5Source",
    "ImageFolderSource",
    "MemseqSource",
    "NpyRowsSource",
    "TokenStreamSource",
    "TFRecordSource",
    "ArrowSource",
    "WebDatasetSource",
    "convert",
    "convert_with_dask",
    "convert_sources_with_dask",
    "source_dask_arrays",
    "dask_arrays",
    "is_dask_input",
    "source_for_path",
    "source_kind",
    "migration_kind",
    "write_classes",
    "crc32_combine",
    "IMAGE_EXTENSIONS",
]
