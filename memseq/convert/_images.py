"""Image folders (one sub-folder per class) as fields ``image`` and ``label``; class-name files."""

from __future__ import annotations

import json
import os
import re
import uuid
from collections.abc import Sequence
from typing import Any

import numpy as np

from memseq.convert._base import Source, optional_module
from memseq.errors import (
    CorruptFileError,
    DatasetNotFoundError,
    FormatError,
    MemseqError,
    SchemaError,
)
from memseq.storage import files as _fs
from memseq.storage import format as fmt

__all__ = ["ImageFolderSource", "IMAGE_EXTENSIONS", "write_classes"]

#: File name extensions (lower case) that :class:`ImageFolderSource` reads.
IMAGE_EXTENSIONS = (".png", ".jpg", ".jpeg", ".bmp", ".gif", ".tif", ".tiff", ".webp", ".ppm", ".pgm", ".pbm")


def _import_pil() -> Any:
    return optional_module("PIL.Image", 'Image folders need Pillow: pip install "memseq[convert]" (or pip install pillow).')


# Pillow modes whose pixels are 8-bit: converted by Pillow to "RGB" or "L" (the
# colour space asked for) and stored as uint8.
_EIGHT_BIT_MODES = frozenset({"1", "L", "P", "RGB", "RGBA", "RGBX", "RGBa", "CMYK", "YCbCr", "LAB", "HSV", "LA", "La", "PA"})
# Single-channel modes of more than 8 bits, stored exactly in the numpy dtype that
# holds them (Pillow never converts these to 8 bits: that would clip or truncate).
_EXACT_MODES = {
    "I;16": np.uint16, "I;16L": np.uint16, "I;16B": np.uint16, "I;16N": np.uint16,
    "I": np.int32, "F": np.float32,
}
# Raw modes of 16 or 32 bits per sample that Pillow nevertheless reads into an 8-bit
# mode, dropping the low bits (16-bit colour PNGs: "RGB;16B", "RGBA;16B", "LA;16B").
_WIDE_RAWMODE = re.compile(r";(16|32)[BLN]$")


def _rawmode(im: Any) -> str:
    """The raw mode of an opened (not yet loaded) image's first tile: how its file stores pixels."""
    tiles = getattr(im, "tile", None) or []
    if not tiles:
        return ""
    args = tiles[0][3] if len(tiles[0]) > 3 else None
    if isinstance(args, str):
        return args
    if isinstance(args, tuple) and args and isinstance(args[0], str):
        return args[0]
    return ""


def _exact_dtype(im: Any, path: str) -> np.dtype:
    """The numpy dtype that holds the pixels of an opened image exactly, or a refusal.

    Raises:
        SchemaError: For a colour image of more than 8 bits per channel (Pillow reads it
            as 8-bit) and for a mode that maps to no numpy dtype exactly.
    """
    mode = im.mode
    if mode in _EIGHT_BIT_MODES:
        rawmode = _rawmode(im)
        if _WIDE_RAWMODE.search(rawmode):
            raise SchemaError(
                f"{path}: the file stores {rawmode.split(';')[1][:2]} bits per channel ({rawmode}) but Pillow "
                f"reads it as 8-bit {mode}, dropping the low bits of every value. memseq refuses it rather than "
                "lose precision (16-bit grayscale images are kept exactly, as uint16): convert the images to "
                "8-bit or to 16-bit grayscale first."
            )
        return np.dtype(np.uint8)
    if mode in _EXACT_MODES:
        return np.dtype(_EXACT_MODES[mode])
    raise SchemaError(
        f"{path}: Pillow reads this image in mode {mode!r}, which memseq cannot store exactly; it keeps "
        f"8-bit modes ({', '.join(sorted(_EIGHT_BIT_MODES))}) as uint8 and {', '.join(_EXACT_MODES)} exactly. "
        "Convert the images to one of these first."
    )


def _image_size(value: Sequence[int] | int) -> tuple[int, int]:
    if isinstance(value, (int, np.integer)) and not isinstance(value, bool):
        dims = (int(value), int(value))
    else:
        dims = tuple(value)  # type: ignore[arg-type]
    if len(dims) != 2 or any(isinstance(d, bool) or not isinstance(d, (int, np.integer)) or d < 1 for d in dims):
        raise SchemaError(f"image_size must be (height, width) of positive ints, or one int. Received: {value!r}")
    return int(dims[0]), int(dims[1])


def _list_images(path: str) -> tuple[list[str], list[str], np.ndarray]:
    """The classes (sub-folders, sorted), the image files in row order and their labels."""
    classes = sorted(e.name for e in os.scandir(path) if e.is_dir() and not e.name.startswith("."))
    if not classes:
        raise FormatError(f"{path}: no class sub-folders; expected {path}/<class name>/<image files>.")
    files: list[str] = []
    labels: list[int] = []
    for label, cls in enumerate(classes):
        folder = os.path.join(path, cls)
        names = sorted(
            e.name
            for e in os.scandir(folder)
            if e.is_file() and not e.name.startswith(".") and os.path.splitext(e.name)[1].lower() in IMAGE_EXTENSIONS
        )
        if not names:
            raise FormatError(
                f"{folder}: class folder {cls!r} has no images (extensions {', '.join(IMAGE_EXTENSIONS)})."
            )
        files += [os.path.join(folder, n) for n in names]
        labels += [label] * len(names)
    return classes, files, np.asarray(labels, dtype=np.int64)


class ImageFolderSource(Source):
    """A folder of images with one sub-folder per class: fields ``image`` and ``label``.

    Pixel values are kept exactly or refused, never reduced: 8-bit images (Pillow modes
    ``L``, ``RGB``, ``RGBA``, ``P``, ...) are converted by Pillow to the colour asked for
    and stored as ``uint8``; 16-bit grayscale images (``I;16``) as ``uint16``, 32-bit
    integer (``I``) as ``int32`` and floating-point (``F``) as ``float32``, with their
    values unchanged (``color="rgb"`` repeats the one channel three times). The first
    image decides the dtype; an image of another depth is an error, as is a colour image
    of more than 8 bits per channel (Pillow would read it as 8-bit) or a mode no numpy
    dtype holds exactly.

    Classes are the sub-folder names in alphabetical order; ``label`` is the index
    of the class in :attr:`classes`. Rows follow the classes, and inside a class the
    file names, in alphabetical order. Hidden files and folders (``.name``) and files
    whose extension is not in :data:`IMAGE_EXTENSIONS` are ignored. memseq's format
    has no place for class names: keep :attr:`classes` yourself (``memseq convert``
    prints them and can write them to a JSON file with ``--classes-file``).

    Args:
        path: The folder.
        image_size: ``(height, width)`` to resize every image to (bilinear). By
            default the first image's size is used and every other image must have
            it (a differently sized image is an error, not silently resized).
        color: ``"rgb"`` (3 channels) or ``"gray"`` (1 channel); images are
            converted to it.

    Raises:
        DatasetNotFoundError: If the folder does not exist.
        FormatError: If it has no class sub-folders or a class has no images.
        CorruptFileError: If the first image cannot be read (others fail on reading).
        SchemaError: If the first image's pixels have no exact numpy dtype (see above).
        MemseqError: If Pillow is not installed.
    """

    max_unit_rows = 256

    def __init__(self, path: str | os.PathLike, image_size: Sequence[int] | int | None = None, color: str = "rgb"):
        self.path = os.fspath(path)
        if not os.path.isdir(self.path):
            raise DatasetNotFoundError(f"{self.path}: no such folder (an image folder with one sub-folder per class).")
        _import_pil()
        if color not in ("rgb", "gray"):
            raise SchemaError(f"color must be 'rgb' or 'gray'. Received: {color!r}")
        self.color = color
        self.classes, self.files, self.labels = _list_images(self.path)
        self.resize = image_size is not None
        self.dtype: np.dtype | None = None  # set by the first image
        if image_size is None:
            first = self._decode(self.files[0], None)
            height, width = first.shape[:2]
        else:
            height, width = _image_size(image_size)
            self._decode(self.files[0], (height, width))
        channels = 3 if color == "rgb" else 1
        self.image_size = (height, width)
        self.fields = {
            "image": fmt.field_spec("image", self.dtype, (height, width, channels)),
            "label": fmt.field_spec("label", np.int64, ()),
        }
        self.num_rows = len(self.files)
        self.description = f"{self.path} ({len(self.classes)} classes)"

    def _decode(self, path: str, size: tuple[int, int] | None) -> np.ndarray:
        Image = _import_pil()
        try:
            with Image.open(path) as im:
                dtype = _exact_dtype(im, path)
                if self.dtype is None:
                    self.dtype = dtype
                elif dtype != self.dtype:
                    raise SchemaError(
                        f"{path}: the image's pixels are {dtype} (mode {im.mode}) but the dataset's are "
                        f"{self.dtype} (those of the first image, {self.files[0]}). memseq keeps every value "
                        "exactly and does not mix bit depths: convert the images to one depth first."
                    )
                if dtype == np.uint8:
                    im = im.convert("RGB" if self.color == "rgb" else "L")
                elif im.mode.startswith("I;16"):
                    im = im.convert("I")  # exact (uint16 into int32); resizes in every Pillow version
                if size is not None and im.size != (size[1], size[0]):
                    if not self.resize:
                        raise SchemaError(
                            f"{path}: the image is {im.size[1]}x{im.size[0]} (height x width) but the dataset's "
                            f"images are {size[0]}x{size[1]} (the size of the first image, {self.files[0]}). "
                            "Pass an image size (--image-size HxW) to resize every image."
                        )
                    im = im.resize((size[1], size[0]), Image.BILINEAR)
                array = np.asarray(im)
                if array.dtype != dtype:
                    # uint16 values held in mode I: the interpolation of a resize stays in range.
                    array = np.clip(array, np.iinfo(dtype).min, np.iinfo(dtype).max).astype(dtype)
        except MemseqError:
            raise
        except (OSError, ValueError, SyntaxError, Image.DecompressionBombError) as e:
            raise CorruptFileError(f"{path}: not a readable image ({e}).") from e
        if array.ndim == 2:
            array = array[:, :, None]
            if self.color == "rgb":
                array = np.repeat(array, 3, axis=2)  # a high-depth gray image: exact, as Pillow's L -> RGB
        return array

    def read(self, start: int, stop: int) -> dict[str, np.ndarray]:
        images = np.empty((stop - start, *self.fields["image"].shape), self.fields["image"].dtype)
        for i in range(start, stop):
            images[i - start] = self._decode(self.files[i], self.image_size)
        return {"image": images, "label": self.labels[start:stop].copy()}


def write_classes(path: str | os.PathLike, classes: Sequence[str], dst: str | os.PathLike | None = None) -> None:
    """Writes class names as a JSON list (index = label), refusing paths inside ``dst``.

    Raises:
        SchemaError: If ``path`` is inside ``dst``.
        WriteError, DatasetPermissionError, DatasetNotFoundError: If the file cannot be written.
    """
    path = os.path.abspath(os.fspath(path))
    if dst is not None:
        root = os.path.abspath(os.fspath(dst))
        if os.path.commonpath([root, path]) == root:
            raise SchemaError(
                f"{path}: the classes file cannot go inside the dataset directory {root}: "
                "the memseq format does not allow extra files there."
            )
    # A short temporary name: "<path>.tmp-..." would exceed NAME_MAX for a long file name.
    tmp = os.path.join(os.path.dirname(path), f".memseq-classes-{uuid.uuid4().hex[:12]}.tmp")
    try:
        with _fs.writing(path, "the classes file"):
            with open(tmp, "w", encoding="utf-8") as f:
                json.dump(list(classes), f, indent=1)
                f.write("\n")
            os.replace(tmp, path)
    except BaseException:
        try:
            os.remove(tmp)
        except OSError:
            pass
        raise
