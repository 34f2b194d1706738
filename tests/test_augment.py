"""Batch augmentations: shapes, dtypes, determinism from the rng, and what they do."""

from __future__ import annotations

import numpy as np
import pytest

import memseq
from memseq import augment


@pytest.fixture
def images():
    return np.random.default_rng(0).integers(0, 256, (16, 6, 5, 3), dtype=np.uint8)


def test_random_flip_flips_about_half_exactly(images):
    out = augment.random_flip(images, np.random.default_rng(1))
    flipped = [np.array_equal(o, i[:, ::-1]) and not np.array_equal(o, i) for o, i in zip(out, images)]
    kept = [np.array_equal(o, i) for o, i in zip(out, images)]
    assert all(f or k for f, k in zip(flipped, kept))
    assert 0 < sum(flipped) < len(images)
    assert out.dtype == images.dtype and out is not images


def test_vertical_flip(images):
    out = augment.random_flip(images, np.random.default_rng(2), horizontal=False, vertical=True)
    assert all(np.array_equal(o, i) or np.array_equal(o, i[::-1]) for o, i in zip(out, images))


def test_random_crop_is_a_shifted_window_of_the_padded_image(images):
    out = augment.random_crop(images, np.random.default_rng(3), padding=2)
    assert out.shape == images.shape and out.dtype == images.dtype
    padded = np.pad(images, ((0, 0), (2, 2), (2, 2), (0, 0)))
    for o, p in zip(out, padded):
        windows = [p[dy : dy + 6, dx : dx + 5] for dy in range(5) for dx in range(5)]
        assert any(np.array_equal(o, w) for w in windows)
    assert not np.array_equal(out, images)


def test_random_brightness_keeps_integer_dtype_and_range(images):
    out = augment.random_brightness(images, np.random.default_rng(4), max_delta=0.5)
    assert out.dtype == np.uint8
    ratio = out.astype(float).sum(axis=(1, 2, 3)) / images.astype(float).sum(axis=(1, 2, 3))
    assert np.all(ratio > 0.45) and np.all(ratio < 1.55)
    floats = augment.random_brightness(images.astype(np.float32) / 255, np.random.default_rng(4), max_delta=0.5)
    assert floats.dtype == np.float32


def test_gaussian_noise_has_the_requested_spread(images):
    out = augment.gaussian_noise(images, np.random.default_rng(5), stddev=2.0)
    assert out.dtype == np.float32
    assert abs(float(np.std(out - images)) - 2.0) < 0.2


@pytest.mark.parametrize("fn", [augment.random_flip, augment.random_crop, augment.random_brightness, augment.gaussian_noise])
def test_same_rng_seed_gives_same_output(images, fn):
    a = fn(images, np.random.default_rng([1, 2, 3]))
    b = fn(images, np.random.default_rng([1, 2, 3]))
    assert np.array_equal(a, b)


def test_bad_arguments():
    rng = np.random.default_rng(0)
    with pytest.raises(memseq.SchemaError, match="height, width, channels"):
        augment.random_flip(np.zeros((4, 4)), rng)
    with pytest.raises(memseq.SchemaError, match="padding must be >= 0"):
        augment.random_crop(np.zeros((1, 4, 4, 1)), rng, padding=-1)
    with pytest.raises(memseq.SchemaError, match="max_delta"):
        augment.random_brightness(np.zeros((1, 4, 4, 1)), rng, max_delta=2)
    with pytest.raises(memseq.SchemaError, match="stddev"):
        augment.gaussian_noise(np.zeros((1, 4, 4, 1)), rng, stddev=-1)
