"""What the benchmarks share: the image dataset, the page cache, the disk counters, fresh-process cases.

Every benchmark reads the same kind of data (64x64x3 uint8 images, int64 labels,
batch 256) so that their figures compare; :func:`build_images` writes it once per
path. :func:`warm` and :func:`evict` put a dataset's files into the page cache and
take them out again, with memseq's own tools (``memseq.bench``). A case runs in a
fresh Python process (:func:`run_case`): the script calls itself with a hidden
option and prints the case's result as JSON on its last output line
(:func:`print_result`); :func:`rounds` interleaves the cases over rounds, so that a
slow spell of the shared machine hits every case alike, and the scripts report
medians over the rounds and ratios of medians.

Scripts import this module only, never each other.
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
import time
from collections.abc import Callable, Iterable, Sequence
from typing import Any

import numpy as np

import memseq
from memseq import bench

ROW_SHAPE = (64, 64, 3)
BATCH = 256
_CHUNK = 4096  # rows written per append; the images are one random block of this many, repeated


# --------------------------------------------------------------------------- the dataset


def _is_image_dataset(ds: memseq.Dataset, row_shape: tuple[int, ...]) -> bool:
    """Whether ``ds`` is a one-shard dataset of exactly the fields :func:`build_images` writes."""
    want = {"image": (np.dtype(np.uint8), tuple(row_shape)), "label": (np.dtype(np.int64), ())}
    return {name: (spec.dtype, spec.shape) for name, spec in ds.fields.items()} == want and ds.num_shards == 1


def build_images(path: str, rows: int, *, row_shape: tuple[int, ...] = ROW_SHAPE,
                 random_labels: bool = False) -> memseq.Dataset:
    """Opens the image dataset at ``path``, writing it first unless it is there with ``rows`` rows.

    Images are one random block of 4,096 images (seed 0) repeated; labels are random in
    ``[0, 10)`` or ``row % 10``. A dataset of these fields with another number of rows
    is rewritten; anything else at ``path`` is left alone and stops the benchmark.
    """
    # A path that exists and is not this dataset is refused, never overwritten: --dir may
    # name the user's own data.
    if os.path.exists(path) and not (os.path.isdir(path) and not os.listdir(path)):
        try:
            ds = memseq.open(path)
        except memseq.MemseqError as e:
            raise SystemExit(f"{path} exists and is not a benchmark dataset ({e}); pass another --dir.") from e
        else:
            if not _is_image_dataset(ds, row_shape):
                raise SystemExit(f"{path} holds another dataset ({ds}); pass another --dir.")
            if len(ds) == rows:
                print(f"reusing {path} ({rows} rows)", file=sys.stderr, flush=True)
                return ds
            ds.close()
    row_bytes = int(np.prod(row_shape))
    print(f"writing {rows} rows ({rows * row_bytes / 1e9:.2f} GB) to {path} ...", file=sys.stderr, flush=True)
    start_time = time.perf_counter()
    rng = np.random.default_rng(0)
    block = rng.integers(0, 256, (_CHUNK, *row_shape), dtype=np.uint8)
    with memseq.Writer(path, {"image": ("uint8", row_shape), "label": ("int64", ())}, overwrite=True) as w:
        for start in range(0, rows, _CHUNK):
            n = min(_CHUNK, rows - start)
            labels = rng.integers(0, 10, n) if random_labels else np.arange(start, start + n) % 10
            w.append({"image": block[:n], "label": labels})
    print(f"  written in {time.perf_counter() - start_time:.1f} s", file=sys.stderr, flush=True)
    return memseq.open(path)


def data_files(path: str) -> list[str]:
    """The data files of the dataset at ``path`` (every field of every shard)."""
    with memseq.open(path) as ds:
        return bench.data_files(ds)


# --------------------------------------------------------------------------- the page cache


def warm(paths: Iterable[str]) -> int:
    """Reads every file of ``paths`` once, so that cases start with a hot page cache; returns the bytes read."""
    total = 0
    buf = bytearray(64 << 20)
    for path in paths:
        with open(path, "rb", buffering=0) as f:
            while n := f.readinto(buf):
                total += n
    return total


def evict(paths: Sequence[str], *, refill: bool = True) -> float:
    """Empties the page cache of ``paths``; returns the fraction still cached (``mincore``).

    The kernel drops the files' pages (``posix_fadvise(DONTNEED)``, memseq's
    :func:`memseq.bench.drop_page_cache`). With ``refill``, 1.1x the files' size of
    anonymous memory is then touched and freed, and the pages dropped again: this VM
    hands free memory back to its host, and refilling it costs a core that must not be
    charged to the case that follows. The files must not be mapped by this process.
    """
    bench.drop_page_cache(paths)
    if refill:
        filler = np.ones(int(sum(os.path.getsize(p) for p in paths) * 1.1), np.uint8)  # touched
        del filler
        bench.drop_page_cache(paths)
    return bench.cached_fraction(paths)


# --------------------------------------------------------------------------- the disk


def device_of(path: str) -> str:
    """The name of the block device holding ``path``, as ``/proc/diskstats`` lists it."""
    st = os.stat(path)
    major, minor = os.major(st.st_dev), os.minor(st.st_dev)
    with open("/proc/diskstats") as f:
        for line in f:
            parts = line.split()
            if int(parts[0]) == major and int(parts[1]) == minor:
                return parts[2]
    raise SystemExit(f"no /proc/diskstats line for device {major}:{minor} of {path}")


def read_counts(device: str) -> tuple[int, int]:
    """(completed read requests, sectors read) of ``device``."""
    with open("/proc/diskstats") as f:
        for line in f:
            parts = line.split()
            if parts[2] == device:
                return int(parts[3]), int(parts[5])
    raise SystemExit(f"device {device} vanished from /proc/diskstats")


# --------------------------------------------------------------------------- cases, each in a fresh process


def run_case(command: list[str], what: str, env: dict[str, str] | None = None, *,
             timeout: float | None = None, check: bool = True) -> Any:
    """Runs ``command`` (a case, in a fresh Python process) and returns the JSON of its last output line.

    TensorFlow's logging is quieted. A failing case stops the benchmark with its
    stderr, or with ``check=False`` is reported on stderr and returns None.
    """
    env = dict(os.environ if env is None else env)
    env.setdefault("TF_CPP_MIN_LOG_LEVEL", "3")
    result = subprocess.run(command, capture_output=True, text=True, env=env, timeout=timeout, check=False)
    if result.returncode != 0:
        if check:
            raise SystemExit(f"{what} failed:\n{result.stderr[-3000:]}")
        print(f"{what}: failed\n{result.stderr[-2000:]}", file=sys.stderr)
        return None
    return json.loads(result.stdout.strip().splitlines()[-1])


def print_result(result: Any) -> None:
    """Prints a case's result as the last output line, for :func:`run_case` in the parent."""
    print(json.dumps(result))


def rounds(names: Sequence[str], repeats: int, measure: Callable[[str], Any], *, rotate: bool = True) -> dict[str, list]:
    """``measure(name)`` for every name, once per round for ``repeats`` rounds: ``{name: [result per round]}``.

    With ``rotate``, each round starts one case later than the one before, so that load
    drifting during a round does not always favour the same case. A None result (a
    failed case) is left out.
    """
    runs: dict[str, list] = {name: [] for name in names}
    for r in range(repeats):
        k = r % len(names) if rotate and names else 0
        for name in list(names[k:]) + list(names[:k]):
            result = measure(name)
            if result is not None:
                runs[name].append(result)
    return runs


# --------------------------------------------------------------------------- models


def epoch_clock():
    """A Keras callback that times every epoch, and the list of seconds it appends to."""
    import keras

    times: list[float] = []

    class Clock(keras.callbacks.Callback):
        def on_epoch_begin(self, epoch, logs=None):
            self.t = time.perf_counter()

        def on_epoch_end(self, epoch, logs=None):
            times.append(time.perf_counter() - self.t)

    return Clock(), times


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


def make_model(kind: str):
    """The demo's CNN (``"cnn"``) or the tiny model, compiled."""
    if kind != "cnn":
        return tiny_model()
    import keras

    from memseq import demo

    model = demo.build_model(keras)
    model.compile("adam", keras.losses.SparseCategoricalCrossentropy(from_logits=True))
    return model
