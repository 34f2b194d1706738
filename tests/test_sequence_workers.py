"""MemmapSequence under Keras' real worker threads and processes, legacy tf_keras, and memory.

These run in subprocesses: each start method needs a fresh interpreter, and memory
is measured in a process that did nothing else.
"""

from __future__ import annotations

import importlib.util
import os
import pickle
import textwrap

import numpy as np
import pytest

import memseq

pytestmark = pytest.mark.slow

ROW = (64, 64, 3)  # 12 KiB rows, as in the benchmarks


@pytest.fixture(scope="module")
def big_dir(tmp_path_factory):
    """A ~200 MB dataset: what must not be copied into every spawned worker."""
    path = tmp_path_factory.mktemp("big") / "ds"
    rows = 200 * 2**20 // int(np.prod(ROW))
    with memseq.Writer(path, {"image": ("uint8", ROW), "label": ("int64", ())}) as w:
        rng = np.random.default_rng(0)
        for start in range(0, rows, 2048):
            n = min(2048, rows - start)
            w.append({"image": rng.integers(0, 256, (n, *ROW), dtype=np.uint8), "label": np.arange(start, start + n)})
    return str(path)


AUGMENTED = '''
import numpy as np
import memseq


class Augmented(memseq.MemmapSequence):
    """Random flips and noise: must come out bit-identical in every worker mode."""

    def augment(self, batch, rng):
        images = memseq.augment.random_flip(batch["image"], rng)
        batch["image"] = memseq.augment.gaussian_noise(images, rng, stddev=3.0)
        return batch
'''

PREDICT = '''
import multiprocessing, sys
import numpy as np
method, workers, processes, out = sys.argv[1], int(sys.argv[2]), sys.argv[3] == "1", sys.argv[4]
if method != "default":
    multiprocessing.set_start_method(method, force=True)
import keras, pickle
from augmented import Augmented

if __name__ == "__main__":
    seq = Augmented({path!r}, x="image", batch_size=64, seed=7, indices=np.arange(0, {rows}, 16)[:1024],
                    workers=workers, use_multiprocessing=processes)
    assert len(pickle.dumps(seq)) < 16 * 1024
    model = keras.Sequential([keras.Input({row}), keras.layers.Identity()])
    np.save(out, model.predict(seq, verbose=0))
'''


def expected_epoch(path: str, epoch: int) -> np.ndarray:
    import sys

    sys.path.insert(0, os.getcwd())
    from augmented import Augmented

    seq = Augmented(path, x="image", batch_size=64, seed=7, indices=np.arange(0, len(memseq.open(path)), 16)[:1024])
    return np.concatenate([seq.get_batch(i, epoch)[0] for i in range(len(seq))])


@pytest.mark.parametrize(
    ("method", "workers", "processes"),
    [("default", 1, False), ("default", 3, False), ("fork", 2, True), ("spawn", 2, True), ("forkserver", 2, True)],
)
def test_augmentation_is_identical_in_every_worker_mode(big_dir, tmp_path, run_python, monkeypatch, method, workers, processes):
    (tmp_path / "augmented.py").write_text(AUGMENTED)
    monkeypatch.chdir(tmp_path)
    rows = len(memseq.open(big_dir))
    script = PREDICT.format(path=big_dir, rows=rows, row=ROW)
    out = tmp_path / "out.npy"
    result = run_python(script, method, workers, int(processes), out, timeout=300)
    assert result.returncode == 0, result.stderr[-3000:]
    # Unlike fit and evaluate, predict does not call on_epoch_end first: it serves epoch 0.
    np.testing.assert_array_equal(np.load(out), expected_epoch(big_dir, 0))


def test_pickled_sequence_is_small_whatever_the_data_size(big_dir):
    seq = memseq.MemmapSequence(big_dir, x="image", y="label", batch_size=256, workers=2, use_multiprocessing=True)
    assert memseq.open(big_dir)["image"].nbytes > 190 * 2**20
    assert len(pickle.dumps(seq)) < 16 * 1024


@pytest.mark.skipif(importlib.util.find_spec("tf_keras") is None, reason="tf-keras (test extra) not installed")
def test_legacy_tf_keras_fit_with_workers_literal_form(big_dir, run_python, tmp_path):
    code = f"""
    import os
    os.environ["TF_USE_LEGACY_KERAS"] = "1"
    import numpy as np
    import tensorflow as tf
    import memseq
    assert "tf_keras" in tf.keras.__name__, tf.keras.__name__
    if __name__ == "__main__":
        seq = memseq.MemmapSequence({big_dir!r}, x="image", y="label", batch_size=64, seed=0,
                                    indices=np.arange(0, 4096, 4))
        model = tf.keras.Sequential([tf.keras.Input({ROW}), tf.keras.layers.Rescaling(1 / 255),
                                     tf.keras.layers.GlobalAveragePooling2D(), tf.keras.layers.Dense(4096)])
        model.compile("adam", tf.keras.losses.SparseCategoricalCrossentropy(from_logits=True))
        history = model.fit(seq, epochs=2, workers=2, use_multiprocessing=True, verbose=0)
        assert len(history.history["loss"]) == 2, history.history
        print("legacy fit ok", seq.epoch)
    """
    result = run_python(code, timeout=300)
    assert result.returncode == 0, result.stderr[-3000:]
    assert "legacy fit ok" in result.stdout


def test_anonymous_memory_stays_flat_over_a_large_dataset(tmp_path, run_python):
    path = tmp_path / "large"
    rows = 1100 * 2**20 // int(np.prod(ROW))
    block = np.random.default_rng(0).integers(0, 256, (4096, *ROW), dtype=np.uint8)
    with memseq.Writer(path, {"image": ("uint8", ROW), "label": ("int64", ())}) as w:
        for start in range(0, rows, 4096):
            n = min(4096, rows - start)
            w.append({"image": block[:n], "label": np.arange(start, start + n)})
    code = textwrap.dedent(
        f"""
        import numpy as np
        import memseq

        def rss_anon_kib():
            with open("/proc/self/status") as f:
                return next(int(line.split()[1]) for line in f if line.startswith("RssAnon:"))

        class Flipped(memseq.MemmapSequence):
            def augment(self, batch, rng):
                batch["image"] = memseq.augment.random_flip(batch["image"], rng)
                return batch

        seq = Flipped({str(path)!r}, x="image", y="label", batch_size=256, seed=0)
        seq[0]
        base = peak = rss_anon_kib()
        total = 0
        for i in range(len(seq)):
            x, y = seq[i]
            total += x.nbytes
            peak = max(peak, rss_anon_kib())
        print(total, base, peak)
        """
    )
    result = run_python(code, timeout=300)
    assert result.returncode == 0, result.stderr[-3000:]
    total, base, peak = map(int, result.stdout.split())
    assert total >= 1100 * 2**20 - 2**20
    assert (peak - base) < 100 * 1024, f"RssAnon grew by {(peak - base) / 1024:.0f} MiB while reading {total >> 20} MiB"
