"""``memseq demo``: write a synthetic image dataset, train a small CNN on it, report.

What it shows, end to end on a fresh machine:

1. :class:`memseq.Writer` streams about 1 GB of 64x64x3 ``uint8`` images with
   ``int64`` labels to disk (never holding more than one chunk in memory).
2. A :class:`memseq.MemmapSequence` subclass adds augmentation
   (:func:`memseq.augment.random_flip`, :func:`memseq.augment.random_crop`) and
   serves shuffled batches from 2 worker processes to ``model.fit`` for 2 epochs.
3. It prints samples/s per epoch and the peak *anonymous* memory of the main
   process and of the workers (RssAnon, sampled from ``/proc``): the data are read
   through the page cache, so anonymous memory stays far below the dataset size.

The images are learnable: each class is an oriented stripe pattern in a class
colour, shifted at random and overlaid with noise, so accuracy rises within the
first epoch.
"""

from __future__ import annotations

import os
import shutil
import sys
import tempfile
import threading
import time
from collections.abc import Callable
from typing import Any

import numpy as np

from memseq.errors import MemseqError

__all__ = [
    "run_demo",
    "synthetic_images",
    "class_patterns",
    "noise_bank",
    "write_synthetic_dataset",
    "build_model",
    "augmented_sequence_class",
    "MemorySampler",
]

IMAGE_SHAPE = (64, 64, 3)
NUM_CLASSES = 10
_ROW_BYTES = int(np.prod(IMAGE_SHAPE)) + 8  # image + int64 label
_CHUNK_ROWS = 2048
_VARIANTS = 16  # phase-shifted copies of each class pattern
_NOISE = 512  # pre-drawn noise images


def class_patterns(rng: np.random.Generator) -> np.ndarray:
    """The class patterns: ``(NUM_CLASSES, 16, 64, 64, 3)`` uint8 stripes, values in [0, 191].

    Each class has 16 phase-shifted variants of an oriented stripe pattern in a class
    colour; pass them to :func:`synthetic_images`.
    """
    h, w, _ = IMAGE_SHAPE
    yy, xx = np.mgrid[0:h, 0:w].astype(np.float32)
    # Five colours x two orientation families: telling class k from k+5 needs the
    # stripes' orientation, not only the colour.
    palette = np.array(
        [[230, 60, 60], [60, 200, 60], [70, 90, 240], [230, 200, 50], [200, 70, 220]], np.float32
    ) / 255.0
    patterns = np.empty((NUM_CLASSES, _VARIANTS, h, w, 3), np.uint8)
    for k in range(NUM_CLASSES):
        angle = np.pi * k / NUM_CLASSES
        frequency = 2 * np.pi / (6.0 + (k % 3))
        for v in range(_VARIANTS):
            phase = rng.uniform(0, 2 * np.pi)
            wave = 0.5 + 0.5 * np.sin(frequency * (np.cos(angle) * xx + np.sin(angle) * yy) + phase)
            patterns[k, v] = np.rint(191 * wave[:, :, None] * palette[k % 5]).astype(np.uint8)
    return patterns


def noise_bank(rng: np.random.Generator) -> np.ndarray:
    """A bank of 512 noise images for :func:`synthetic_images`: ``(512, 64, 64, 3)`` uint8 in [0, 64)."""
    return rng.integers(0, 64, (_NOISE, *IMAGE_SHAPE), dtype=np.uint8)


def synthetic_images(
    n: int, rng: np.random.Generator, patterns: np.ndarray, noise: np.ndarray
) -> tuple[np.ndarray, np.ndarray]:
    """``n`` images (a variant of a random class's pattern + a noise image) and their labels.

    Args:
        n: The number of images.
        rng: Where the classes, variants and noise images are drawn from.
        patterns: From :func:`class_patterns`.
        noise: From :func:`noise_bank`.

    Returns:
        ``(images, labels)``: ``(n, 64, 64, 3)`` uint8 and ``(n,)`` int64.
    """
    labels = rng.integers(0, NUM_CLASSES, n)
    images = patterns[labels, rng.integers(0, _VARIANTS, n)]
    # Noise from a bank of pre-drawn images: drawing fresh noise for every pixel
    # would make writing the dataset several times slower.
    images += noise[rng.integers(0, len(noise), n)]  # <= 191 + 63: no overflow
    return images, labels.astype(np.int64)


def write_synthetic_dataset(path: str, num_rows: int, *, seed: int = 0, progress: bool = True) -> None:
    """Streams ``num_rows`` synthetic images and labels into a new dataset at ``path``."""
    import memseq

    rng = np.random.default_rng(seed)
    patterns = class_patterns(rng)
    noise = noise_bank(rng)
    fields = {"image": ("uint8", IMAGE_SHAPE), "label": ("int64", ())}
    with memseq.Writer(path, fields, progress=progress, total_rows=num_rows) as w:
        for start in range(0, num_rows, _CHUNK_ROWS):
            images, labels = synthetic_images(min(_CHUNK_ROWS, num_rows - start), rng, patterns, noise)
            w.append({"image": images, "label": labels})


# --------------------------------------------------------------------------- memory


def _status_kib(pid: int | str, key: str, file: str = "status") -> int:
    """A ``kB`` value (e.g. RssAnon, VmHWM) from /proc/<pid>/<file>; 0 if unavailable."""
    try:
        with open(f"/proc/{pid}/{file}", encoding="ascii") as f:
            for line in f:
                if line.startswith(key + ":"):
                    return int(line.split()[1])
    except (OSError, ValueError, IndexError):
        pass
    return 0


def _children(pid: int) -> list[int]:
    pids: list[int] = []
    try:
        for tid in os.listdir(f"/proc/{pid}/task"):
            with open(f"/proc/{pid}/task/{tid}/children", encoding="ascii") as f:
                pids += [int(p) for p in f.read().split()]
    except OSError:
        pass
    return pids


class MemorySampler:
    """Samples the anonymous memory of this process and its child processes.

    ``/proc`` keeps no peak of *anonymous* memory (VmHWM includes the file pages of
    memory-mapped data), so a background thread samples every ``interval`` seconds
    and keeps the maxima of:

    - ``peak_main_kib``: RssAnon of this process;
    - ``peak_children_kib``: the sum of the children's RssAnon (Keras' worker
      processes). Forked workers share their parent's pages until written, and
      RssAnon counts shared pages in every process, so this sum overstates;
    - ``peak_total_kib``: Pss_Anon of this process plus its children (from
      ``smaps_rollup``), which counts each shared page once: the anonymous memory
      the whole job really holds. Falls back to the RssAnon sum where
      ``smaps_rollup`` is missing.
    """

    def __init__(self, interval: float = 0.2):
        self.interval = interval
        self.peak_main_kib = 0
        self.peak_children_kib = 0
        self.peak_total_kib = 0
        self.max_children = 0
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._run, name="memseq-memory-sampler", daemon=True)

    def sample(self) -> None:
        me = os.getpid()
        main = _status_kib(me, "RssAnon")
        kids = _children(me)
        children = sum(_status_kib(pid, "RssAnon") for pid in kids)
        pss = [_status_kib(pid, "Pss_Anon", "smaps_rollup") for pid in [me, *kids]]
        total = sum(pss) if pss[0] else main + children
        self.peak_main_kib = max(self.peak_main_kib, main)
        self.peak_children_kib = max(self.peak_children_kib, children)
        self.peak_total_kib = max(self.peak_total_kib, total)
        self.max_children = max(self.max_children, len(kids))

    def _run(self) -> None:
        while not self._stop.wait(self.interval):
            self.sample()

    def __enter__(self) -> MemorySampler:
        self.sample()
        self._thread.start()
        return self

    def __exit__(self, *exc: object) -> None:
        self._stop.set()
        self._thread.join()
        self.sample()


def _mib(kib: int) -> str:
    return f"{kib / 1024:,.0f} MiB"


# --------------------------------------------------------------------------- the demo


def build_model(keras: Any) -> Any:
    """The demo's small CNN for 64x64x3 uint8 images of ``NUM_CLASSES`` classes, compiled."""
    # Strided convolutions and few filters: enough to learn the patterns, small
    # enough that 2 epochs over ~80,000 images fit in about a minute on 2 cores.
    model = keras.Sequential(
        [
            keras.Input(IMAGE_SHAPE, dtype="uint8"),
            keras.layers.Rescaling(1 / 255.0),
            keras.layers.Conv2D(16, 3, strides=2, padding="same", activation="relu"),
            keras.layers.Conv2D(32, 3, strides=2, padding="same", activation="relu"),
            keras.layers.Conv2D(32, 3, strides=2, padding="same", activation="relu"),
            keras.layers.GlobalAveragePooling2D(),
            keras.layers.Dense(NUM_CLASSES),
        ],
        name="demo_cnn",
    )
    model.compile(
        optimizer=keras.optimizers.Adam(2e-3),
        loss=keras.losses.SparseCategoricalCrossentropy(from_logits=True),
        metrics=["accuracy"],
    )
    return model


def augmented_sequence_class() -> type:
    """A :class:`memseq.MemmapSequence` subclass with random flips and 4-pixel random crops.

    Made on first use (it imports Keras) and kept as ``memseq.demo.AugmentedSequence``,
    so that it pickles by reference into spawned worker processes (the default under
    JAX), where this module's ``__getattr__`` makes it again.
    """
    cls = globals().get("AugmentedSequence")
    if cls is None:
        import memseq
        from memseq import augment

        class AugmentedSequence(memseq.MemmapSequence):
            """Random horizontal flips and 4-pixel random crops, seeded per batch."""

            def augment(self, batch, rng):
                images = augment.random_flip(batch["image"], rng)
                batch["image"] = augment.random_crop(images, rng, padding=4)
                return batch

        AugmentedSequence.__qualname__ = "AugmentedSequence"
        globals()["AugmentedSequence"] = cls = AugmentedSequence
    return cls


def __getattr__(name: str) -> Any:
    if name == "AugmentedSequence":
        return augmented_sequence_class()
    raise AttributeError(f"module {__name__!r} has no attribute {name!r}")


def _check_args(size_gb: float, epochs: int, batch_size: int, workers: int) -> None:
    if not size_gb > 0:
        raise MemseqError(f"--size-gb must be > 0. Received: {size_gb!r}")
    if epochs < 1:
        raise MemseqError(f"--epochs must be >= 1. Received: {epochs!r}")
    if batch_size < 1 or workers < 0:
        raise MemseqError(f"--batch-size must be >= 1 and --workers >= 0. Received: {batch_size!r}, {workers!r}")


def _make_base(directory: str | None, needed: int) -> str:
    """A fresh temporary directory with room for ``needed`` bytes."""
    base = tempfile.mkdtemp(prefix="memseq-demo-", dir=directory)
    free = shutil.disk_usage(base).free
    if free < needed * 1.05:
        shutil.rmtree(base, ignore_errors=True)
        raise MemseqError(
            f"{base}: {free / 1e9:.2f} GB free, the demo needs {needed / 1e9:.2f} GB; "
            "use --size-gb or --dir to pick a smaller size or another disk."
        )
    return base


def _progress_callback(keras: Any, num_batches: int, batch_size: int, epochs: int, out: Callable[[str], None],
                       interval: float = 10.0) -> Any:
    """A Keras callback that prints an epoch's progress every ``interval`` seconds (through ``out``)."""

    class _Progress(keras.callbacks.Callback):
        def on_epoch_begin(self, epoch, logs=None):
            self._epoch = epoch
            self._start = self._last = time.perf_counter()
            out(f"epoch {epoch + 1}/{epochs}: started, {num_batches:,} batches")

        def on_train_batch_end(self, batch, logs=None):
            now = time.perf_counter()
            if now - self._last < interval:
                return
            self._last = now
            done = batch + 1
            elapsed = now - self._start
            out(f"epoch {self._epoch + 1}/{epochs}: batch {done:,}/{num_batches:,}, {elapsed:.0f} s, "
                f"{done * batch_size / elapsed:,.0f} samples/s")

    return _Progress()


def _train(path: str, *, epochs: int, batch_size: int, workers: int, seed: int, verbose: int | str | None,
           out: Callable[[str], None]) -> tuple[dict[str, Any], MemorySampler]:
    """Trains the demo model on the dataset at ``path``; returns the measurements and the memory peaks."""
    from memseq.adapters.tf_import import tensorflow_quietly

    with tensorflow_quietly():  # TensorFlow's start-up and GPU-probe lines, nothing else
        import keras

    import memseq

    keras.utils.set_random_seed(seed)
    ds = memseq.open(path)
    order = np.random.default_rng(seed).permutation(len(ds))
    n_val = max(batch_size, len(ds) // 20)
    train_rows, val_rows = np.sort(order[n_val:]), np.sort(order[:n_val])
    seq = augmented_sequence_class()(
        ds, x="image", y="label", batch_size=batch_size, seed=seed, indices=train_rows,
        workers=workers, use_multiprocessing=workers > 0,
    )
    val = memseq.MemmapSequence(ds, x="image", y="label", batch_size=batch_size, shuffle=False, indices=val_rows)
    model = build_model(keras)
    out(f"training {model.name} ({model.count_params():,} parameters) for {epochs} epoch(s) on "
        f"{len(train_rows):,} images: {seq!r}")

    epoch_seconds: list[float] = []

    class _Timer(keras.callbacks.Callback):
        def on_epoch_begin(self, epoch, logs=None):
            self._t = time.perf_counter()

        def on_epoch_end(self, epoch, logs=None):
            epoch_seconds.append(time.perf_counter() - self._t)

    if verbose is None:
        verbose = 1 if sys.stdout.isatty() else 2
    callbacks = [_Timer()]
    if verbose == 2:
        # Keras' verbose=2 prints one line per epoch only: without a terminal the demo
        # would print nothing for the better part of a minute.
        callbacks.append(_progress_callback(keras, len(seq), batch_size, epochs, out))
    with MemorySampler() as memory:
        # shuffle=False: memseq already shuffles rows every epoch, reproducibly;
        # fit's own shuffle would only reorder whole batches with Python's random.
        history = model.fit(seq, epochs=epochs, shuffle=False, verbose=verbose, callbacks=callbacks)
    _, val_accuracy = model.evaluate(val, verbose=0)

    samples = len(seq) * batch_size if seq.drop_remainder else len(train_rows)
    measurements = dict(
        epoch_seconds=epoch_seconds,
        samples_per_second=[samples / s for s in epoch_seconds],
        accuracy=float(history.history["accuracy"][-1]),
        val_accuracy=float(val_accuracy),
        peak_rss_anon_main_mib=memory.peak_main_kib / 1024,
        peak_rss_anon_workers_mib=memory.peak_children_kib / 1024,
        peak_rss_anon_total_mib=memory.peak_total_kib / 1024,
        vm_hwm_mib=_status_kib("self", "VmHWM") / 1024,
    )
    return measurements, memory


def _report(result: dict[str, Any], memory: MemorySampler, needed: int, out: Callable[[str], None]) -> None:
    out("")
    out("memseq demo results")
    for i, (s, r) in enumerate(zip(result["epoch_seconds"], result["samples_per_second"]), 1):
        out(f"  epoch {i}: {s:6.1f} s  {r:9,.0f} samples/s")
    out(f"  train accuracy (last epoch): {result['accuracy']:.3f}   validation accuracy: {result['val_accuracy']:.3f}")
    out(f"  peak anonymous memory: main process {_mib(memory.peak_main_kib)} (RssAnon); "
        f"main + {memory.max_children} worker processes {_mib(memory.peak_total_kib)} (Pss_Anon, "
        f"pages shared after fork counted once; workers' RssAnon summed: {_mib(memory.peak_children_kib)})")
    out(f"  dataset {needed / 2**20:,.0f} MiB; main process peak RSS including mapped file pages "
        f"(VmHWM) {result['vm_hwm_mib']:,.0f} MiB")


def run_demo(
    *,
    size_gb: float = 1.0,
    epochs: int = 2,
    keep: bool = False,
    directory: str | None = None,
    batch_size: int = 256,
    workers: int = 2,
    seed: int = 0,
    verbose: int | str | None = None,
    out: Callable[[str], None] = print,
) -> dict[str, Any]:
    """Runs the demo; returns its measurements.

    Args:
        size_gb: Dataset size in GB (10**9 bytes).
        epochs: Training epochs.
        keep: Keep the dataset (its path is printed) instead of deleting it.
        directory: Where to create the temporary directory (default: the system's).
        batch_size: Rows per batch.
        workers: Keras worker processes.
        seed: Seed of the data, the shuffles and the augmentation.
        verbose: ``model.fit`` verbosity; default: a progress bar on a terminal,
            one line per epoch otherwise. With 2 (the default without a terminal),
            a progress line is also printed every 10 seconds of an epoch.
        out: Where to print the report lines.

    Returns:
        A dict with ``rows``, ``epoch_seconds``, ``samples_per_second``,
        ``peak_rss_anon_main_mib``, ``peak_rss_anon_workers_mib``, ``accuracy``,
        ``val_accuracy`` and ``path`` (None unless ``keep``).

    Raises:
        MemseqError: For invalid arguments or too little free disk space.
    """
    _check_args(size_gb, epochs, batch_size, workers)
    num_rows = max(2 * batch_size, int(size_gb * 1e9) // _ROW_BYTES)
    needed = num_rows * _ROW_BYTES
    base = _make_base(directory, needed)
    path = os.path.join(base, "train")
    t_start = time.perf_counter()
    result: dict[str, Any] = {"rows": num_rows, "path": path if keep else None}
    try:
        out(f"memseq demo: {num_rows:,} images of {IMAGE_SHAPE} uint8 + int64 labels "
            f"({needed / 1e9:.2f} GB) in {path}")
        t = time.perf_counter()
        write_synthetic_dataset(path, num_rows, seed=seed, progress=True)
        write_seconds = time.perf_counter() - t
        out(f"wrote the dataset in {write_seconds:.1f} s ({needed / 1e9 / write_seconds:.2f} GB/s)")
        measurements, memory = _train(path, epochs=epochs, batch_size=batch_size, workers=workers, seed=seed,
                                      verbose=verbose, out=out)
        result.update(measurements, write_seconds=write_seconds)
        _report(result, memory, needed, out)
    finally:
        if keep:
            out(f"kept the dataset at {path}")
        else:
            shutil.rmtree(base, ignore_errors=True)
    out(f"total time {time.perf_counter() - t_start:.1f} s")
    sys.stdout.flush()
    return result
