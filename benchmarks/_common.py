"""What the benchmarks share: the 12 KiB-row image dataset, warming the page cache, the tiny model.

Every benchmark reads the same kind of data (64x64x3 uint8 images, int64 labels,
batch 256) so that their figures compare; this module builds it once per path.
"""

from __future__ import annotations

import json
import os
import subprocess
import sys

import numpy as np

import memseq

ROW_SHAPE = (64, 64, 3)
BATCH = 256


def build_images(path: str, rows: int, *, random_labels: bool = False) -> memseq.Dataset:
    """Opens the image dataset at ``path``, writing it first if it does not have ``rows`` rows.

    Images are one random block of 4,096 images repeated; labels are random in
    ``[0, 10)`` or ``row % 10``.
    """
    try:
        ds = memseq.open(path)
        if len(ds) == rows:
            return ds
    except memseq.MemseqError:
        pass
    print(f"writing {rows} rows to {path} ...", file=sys.stderr, flush=True)
    rng = np.random.default_rng(0)
    chunk = 4096
    block = rng.integers(0, 256, (chunk, *ROW_SHAPE), dtype=np.uint8)
    with memseq.Writer(path, {"image": ("uint8", ROW_SHAPE), "label": ("int64", ())}, overwrite=True) as w:
        for start in range(0, rows, chunk):
            n = min(chunk, rows - start)
            labels = rng.integers(0, 10, n) if random_labels else np.arange(start, start + n) % 10
            w.append({"image": block[:n], "label": labels})
    return memseq.open(path)


def warm(path: str) -> None:
    """Reads every file under ``path`` once, so that cases start with a hot page cache."""
    for root, _, files in os.walk(path):
        for name in files:
            with open(os.path.join(root, name), "rb") as f:
                while f.read(64 << 20):
                    pass


def run_json(command: list[str], what: str, env: dict[str, str] | None = None):
    """Runs ``command`` (a case, in a fresh Python process) and returns the JSON of its last output line.

    TensorFlow's logging is quieted; a failing case stops the benchmark with its stderr.
    """
    env = dict(os.environ if env is None else env)
    env.setdefault("TF_CPP_MIN_LOG_LEVEL", "3")
    result = subprocess.run(command, capture_output=True, text=True, env=env, check=False)
    if result.returncode != 0:
        raise SystemExit(f"{what} failed:\n{result.stderr[-3000:]}")
    return json.loads(result.stdout.strip().splitlines()[-1])


def tiny_model():
    """Rescaling + GlobalAveragePooling2D + Dense(10), compiled: a model the input pipeline can limit."""
    import keras

    model = keras.Sequential(
        [
            keras.Input(ROW_SHAPE),
            keras.layers.Rescaling(1 / 255),
            keras.layers.GlobalAveragePooling2D(),
            keras.layers.Dense(10),
        ]
    )
    model.compile("adam", keras.losses.SparseCategoricalCrossentropy(from_logits=True))
    return model
