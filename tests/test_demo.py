"""memseq.demo: the synthetic data, the memory sampler and run_demo's report."""

from __future__ import annotations

import os
import subprocess
import sys
import time

import numpy as np

import memseq
from memseq import demo


def test_synthetic_images_are_deterministic_and_class_dependent():
    def make(seed):
        rng = np.random.default_rng(seed)
        return demo.synthetic_images(500, rng, demo.class_patterns(rng), demo.noise_bank(rng))

    images, labels = make(0)
    again, labels_again = make(0)
    np.testing.assert_array_equal(images, again)
    np.testing.assert_array_equal(labels, labels_again)
    assert images.dtype == np.uint8 and images.shape == (500, 64, 64, 3) and labels.dtype == np.int64
    assert set(labels.tolist()) == set(range(demo.NUM_CLASSES))
    # Learnable: the mean colour alone separates the five colour groups.
    means = np.stack([images[labels == k].mean(axis=(0, 1, 2)) for k in range(demo.NUM_CLASSES)])
    for k in range(5):
        assert np.abs(means[k] - means[k + 5]).max() < 12  # same colour, different orientation
        assert min(np.abs(means[k] - means[j]).max() for j in range(5) if j != k) > 20


def test_write_synthetic_dataset(tmp_path):
    demo.write_synthetic_dataset(str(tmp_path / "d"), 1000, progress=False)
    ds = memseq.open(tmp_path / "d")
    assert len(ds) == 1000 and ds.fields["image"].shape == (64, 64, 3)
    ds.verify()


def test_memory_sampler_sees_child_processes():
    # The child lives until killed, and the loop waits for it as long as it takes
    # (up to a minute): nothing here depends on how fast the machine starts Python.
    child = subprocess.Popen([sys.executable, "-c", "import time; b = b\"x\" * (50 * 2**20); time.sleep(600)"])
    try:
        with demo.MemorySampler(interval=0.05) as memory:
            deadline = time.monotonic() + 60
            while memory.peak_children_kib < 40 * 1024 and time.monotonic() < deadline:
                memory.sample()
                time.sleep(0.05)
    finally:
        child.kill()
        child.wait()
    assert memory.max_children >= 1
    assert memory.peak_children_kib >= 40 * 1024
    assert memory.peak_main_kib > 0 and memory.peak_total_kib >= memory.peak_main_kib


def test_run_demo_keep_and_report(tmp_path):
    lines = []
    result = demo.run_demo(size_gb=0.004, epochs=1, keep=True, directory=str(tmp_path), batch_size=64, workers=2, out=lines.append, verbose=0)
    try:
        assert result["rows"] == 0.004e9 // (64 * 64 * 3 + 8)
        assert os.path.isdir(result["path"])
        assert len(memseq.open(result["path"])) == result["rows"]
        assert len(result["samples_per_second"]) == 1 and result["samples_per_second"][0] > 0
        assert 0 < result["peak_rss_anon_main_mib"] < 4096
        assert 0 <= result["accuracy"] <= 1 and 0 <= result["val_accuracy"] <= 1
        text = "\n".join(lines)
        assert "memseq demo results" in text and f"kept the dataset at {result['path']}" in text
    finally:
        import shutil

        shutil.rmtree(os.path.dirname(result["path"]))
