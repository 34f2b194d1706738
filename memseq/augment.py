"""Vectorised batch augmentations for images, for use in ``MemmapSequence.augment``.

Each function takes a whole batch (rows first) and a ``numpy.random.Generator``
and returns a new array; randomness comes only from ``rng``, so a sequence that
passes the ``rng`` it was given stays reproducible across worker kinds. Images are
``(batch, height, width, channels)`` (channels last, as Keras uses by default).

Example:
    >>> class Augmented(memseq.MemmapSequence):
    ...     def augment(self, batch, rng):
    ...         images = memseq.augment.random_flip(batch["image"], rng)
    ...         images = memseq.augment.random_crop(images, rng, padding=4)
    ...         batch["image"] = memseq.augment.random_brightness(images, rng, 0.2)
    ...         return batch
"""

from __future__ import annotations

import numpy as np

from memseq.errors import SchemaError

__all__ = ["random_flip", "random_crop", "random_brightness", "gaussian_noise"]


def _check_images(images: np.ndarray, name: str) -> np.ndarray:
    images = np.asarray(images)
    if images.ndim != 4:
        raise SchemaError(f"{name} takes images of shape (batch, height, width, channels). Received shape: {images.shape}")
    return images


def random_flip(images: np.ndarray, rng: np.random.Generator, *, horizontal: bool = True, vertical: bool = False) -> np.ndarray:
    """Flips each image left-right (and/or up-down) with probability 1/2.

    Args:
        images: ``(batch, height, width, channels)`` array.
        rng: The batch's random generator.
        horizontal: Flip along the width axis.
        vertical: Flip along the height axis.

    Returns:
        A new array of the same shape and dtype.

    Raises:
        SchemaError: If ``images`` is not 4-D.
    """
    images = _check_images(images, "random_flip")
    out = images.copy()
    n = len(images)
    if horizontal:
        flip = rng.random(n) < 0.5
        out[flip] = out[flip, :, ::-1]
    if vertical:
        flip = rng.random(n) < 0.5
        out[flip] = out[flip, ::-1]
    return out


def random_crop(images: np.ndarray, rng: np.random.Generator, *, padding: int = 4, fill: float = 0) -> np.ndarray:
    """Pads each image by ``padding`` pixels and crops it back at a random offset.

    The standard CIFAR-style translation augmentation; one random offset per image.

    Args:
        images: ``(batch, height, width, channels)`` array.
        rng: The batch's random generator.
        padding: Pixels of padding on each side (the maximum shift).
        fill: Value of the padding.

    Returns:
        A new array of the same shape and dtype.

    Raises:
        SchemaError: If ``images`` is not 4-D or ``padding`` is negative.
    """
    images = _check_images(images, "random_crop")
    if padding < 0:
        raise SchemaError(f"random_crop: padding must be >= 0. Received: {padding!r}")
    if padding == 0:
        return images.copy()
    n, h, w, _ = images.shape
    padded = np.pad(images, ((0, 0), (padding, padding), (padding, padding), (0, 0)), constant_values=fill)
    dy = rng.integers(0, 2 * padding + 1, size=n)
    dx = rng.integers(0, 2 * padding + 1, size=n)
    # One fancy-indexing gather for the whole batch instead of a Python loop per image.
    rows = dy[:, None] + np.arange(h)[None, :]
    cols = dx[:, None] + np.arange(w)[None, :]
    return padded[np.arange(n)[:, None, None], rows[:, :, None], cols[:, None, :]]


def random_brightness(images: np.ndarray, rng: np.random.Generator, max_delta: float = 0.2) -> np.ndarray:
    """Scales each image's brightness by a random factor in ``[1 - max_delta, 1 + max_delta]``.

    Integer images are clipped to their dtype's range and keep their dtype; float
    images are returned as float32 without clipping.

    Args:
        images: ``(batch, height, width, channels)`` array.
        rng: The batch's random generator.
        max_delta: Largest relative change, in ``[0, 1]``.

    Returns:
        A new array of the same shape.

    Raises:
        SchemaError: If ``images`` is not 4-D or ``max_delta`` is out of range.
    """
    images = _check_images(images, "random_brightness")
    if not 0 <= max_delta <= 1:
        raise SchemaError(f"random_brightness: max_delta must be in [0, 1]. Received: {max_delta!r}")
    factor = rng.uniform(1 - max_delta, 1 + max_delta, size=(len(images), 1, 1, 1)).astype(np.float32)
    out = images.astype(np.float32) * factor
    if np.issubdtype(images.dtype, np.integer):
        info = np.iinfo(images.dtype)
        return np.clip(np.rint(out), info.min, info.max).astype(images.dtype)
    return out


def gaussian_noise(images: np.ndarray, rng: np.random.Generator, stddev: float = 0.05) -> np.ndarray:
    """Adds Gaussian noise of standard deviation ``stddev`` (in the images' units).

    Args:
        images: An array of any shape, rows first.
        rng: The batch's random generator.
        stddev: Standard deviation of the noise, >= 0.

    Returns:
        A float32 array of the same shape.

    Raises:
        SchemaError: If ``stddev`` is negative.
    """
    if stddev < 0:
        raise SchemaError(f"gaussian_noise: stddev must be >= 0. Received: {stddev!r}")
    images = np.asarray(images, dtype=np.float32)
    return images + rng.standard_normal(images.shape, dtype=np.float32) * np.float32(stddev)
