"""Image folders (one sub-folder per class) as fields ``image`` and ``label``; class-name files."""

from __future__ import annotations

import json
import os
import uuid
from collections.abc import Sequence
from typing import Any

import numpy as np

from memseq import format as fmt
from memseq.convert._base import Source, optional_module
from memseq.errors import CorruptFileError, DatasetNotFoundError, FormatError, MemseqError, SchemaError

__all__ = ["ImageFolderSource", "IMAGE_EXTENSIONS", "write_classes"]

#: File name extensions (lower case) that :class:`ImageFolderSource` reads.
IMAGE_EXTENSIONS = (".png", ".jpg", ".jpeg", ".bmp", ".gif", ".tif", ".tiff", ".webp", ".ppm", ".pgm", ".pbm")


def _import_pil() -> Any:
    return optional_module("PIL.Image", 'Image folders need Pillow: pip install "memseq[convert]" (or pip install pillow).')


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
        if image_size is None:
            first = self._decode(self.files[0], None)
            height, width = first.shape[:2]
        else:
            height, width = _image_size(image_size)
        channels = 3 if color == "rgb" else 1
        self.image_size = (height, width)
        self.fields = {
            "image": fmt.field_spec("image", np.uint8, (height, width, channels)),
            "label": fmt.field_spec("label", np.int64, ()),
        }
        self.num_rows = len(self.files)
        self.description = f"{self.path} ({len(self.classes)} classes)"

    def _decode(self, path: str, size: tuple[int, int] | None) -> np.ndarray:
        Image = _import_pil()
        try:
            with Image.open(path) as im:
                im = im.convert("RGB" if self.color == "rgb" else "L")
                if size is not None and im.size != (size[1], size[0]):
                    if not self.resize:
                        raise SchemaError(
                            f"{path}: the image is {im.size[1]}x{im.size[0]} (height x width) but the dataset's "
                            f"images are {size[0]}x{size[1]} (the size of the first image, {self.files[0]}). "
                            "Pass an image size (--image-size HxW) to resize every image."
                        )
                    im = im.resize((size[1], size[0]), Image.BILINEAR)
                array = np.asarray(im, dtype=np.uint8)
        except MemseqError:
            raise
        except (OSError, ValueError, SyntaxError, Image.DecompressionBombError) as e:
            raise CorruptFileError(f"{path}: not a readable image ({e}).") from e
        return array[:, :, None] if array.ndim == 2 else array

    def read(self, start: int, stop: int) -> dict[str, np.ndarray]:
        images = np.empty((stop - start, *self.fields["image"].shape), np.uint8)
        for i in range(start, stop):
            images[i - start] = self._decode(self.files[i], self.image_size)
        return {"image": images, "label": self.labels[start:stop].copy()}


def write_classes(path: str | os.PathLike, classes: Sequence[str], dst: str | os.PathLike | None = None) -> None:
    """Writes class names as a JSON list (index = label), refusing paths inside ``dst``."""
    path = os.path.abspath(os.fspath(path))
    if dst is not None:
        root = os.path.abspath(os.fspath(dst))
        if os.path.commonpath([root, path]) == root:
            raise SchemaError(
                f"{path}: the classes file cannot go inside the dataset directory {root}: "
                "the memseq format does not allow extra files there."
            )
    tmp = f"{path}.tmp-{uuid.uuid4().hex[:8]}"
    with open(tmp, "w", encoding="utf-8") as f:
        json.dump(list(classes), f, indent=1)
        f.write("\n")
    os.replace(tmp, path)
