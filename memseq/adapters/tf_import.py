"""TensorFlow imported by memseq without its start-up noise, and without hiding anything else.

Importing TensorFlow 2.x on a machine without an NVIDIA driver writes, straight to
file descriptor 2, absl's ``WARNING: All log messages before absl::InitializeLog() ...``
line, ``Could not find cuda drivers on your machine``, a CPU-feature notice, and at
the first look at the devices ``E0000 ... failed call to cuInit: ...``. None of them
is an error of the user's, and ``TF_CPP_MIN_LOG_LEVEL`` cannot remove them without
hiding real errors: TensorFlow reads it once, when it first logs, so a level that
hides the cuInit line hides every later C++ error of the process, and the absl
line is printed whatever the level.

So when memseq is the one that imports TensorFlow (directly, or through Keras),
:func:`tensorflow_quietly` imports it and probes its devices (where the cuInit line is
printed) while file descriptor 2 goes through a filter that drops exactly those known
lines and forwards every other byte as it comes. It does nothing when TensorFlow is
already imported (the user's import: their output is theirs), or when the user has
set ``TF_CPP_MIN_LOG_LEVEL`` (they have chosen their logging). The cuInit line is
dropped only on machines without an NVIDIA driver (no ``/proc/driver/nvidia``): where
there is a GPU, a failing cuInit is a real error and is shown.
"""

from __future__ import annotations

import os
import re
import sys
import threading
from collections.abc import Iterator
from contextlib import contextmanager
from types import ModuleType

__all__ = ["import_tensorflow", "is_startup_noise", "stderr_without_noise", "tensorflow_quietly"]

_ALWAYS_NOISE = (
    re.compile(rb"^WARNING: All log messages before absl::InitializeLog\(\) is called are written to STDERR$"),
    re.compile(rb"^I\d{4} [\d:. ]+\d+ cudart_stub\.cc:\d+\] Could not find cuda drivers on your machine, GPU will not be used\.$"),
    re.compile(rb"^I\d{4} [\d:. ]+\d+ cpu_feature_guard\.cc:\d+\] This TensorFlow binary is optimized to use available CPU instructions"),
    # The second line of the cpu_feature_guard notice.
    re.compile(rb"^To enable the following instructions: [A-Z0-9_ ,.]+, in other operations, rebuild TensorFlow with the appropriate compiler flags\.$"),
)
_NO_DRIVER_NOISE = re.compile(rb"^E\d{4} [\d:. ]+\d+ cuda_(?:platform|driver|executor)\.cc:\d+\] failed call to cuInit: ")
# How long the end of a quiet window waits for the forwarding thread to write what is left.
_DRAIN_S = 5.0


def _has_nvidia_driver() -> bool:
    return os.path.exists("/proc/driver/nvidia/version")


def is_startup_noise(line: bytes, *, nvidia_driver: bool | None = None) -> bool:
    """Whether ``line`` (without its newline) is one of TensorFlow's known start-up lines on a machine without GPU."""
    line = line.rstrip(b"\r")
    if any(pattern.match(line) for pattern in _ALWAYS_NOISE):
        return True
    if nvidia_driver is None:
        nvidia_driver = _has_nvidia_driver()
    return not nvidia_driver and _NO_DRIVER_NOISE.match(line) is not None


@contextmanager
def stderr_without_noise() -> Iterator[None]:
    """File descriptor 2, for the block, without the lines :func:`is_startup_noise` names.

    Everything else written to it (by Python or by C++) reaches the real stderr as it is
    written, in order, from a forwarding thread; a last unterminated line is forwarded
    when the block ends.
    """
    try:
        os.fstat(2)
    except OSError:  # no stderr at all: nothing to filter
        yield
        return
    nvidia_driver = _has_nvidia_driver()
    read_end, write_end = os.pipe()
    saved = os.dup(2)

    def forward() -> None:
        pending = b""
        with os.fdopen(read_end, "rb", buffering=0) as pipe:
            while chunk := pipe.read(65536):
                *lines, pending = (pending + chunk).split(b"\n")
                kept = b"".join(line + b"\n" for line in lines if not is_startup_noise(line, nvidia_driver=nvidia_driver))
                if kept:
                    os.write(saved, kept)
        if pending and not is_startup_noise(pending, nvidia_driver=nvidia_driver):
            os.write(saved, pending)

    thread = threading.Thread(target=forward, name="memseq-stderr-filter", daemon=True)
    thread.start()
    _flush_python_stderr()
    os.dup2(write_end, 2)
    os.close(write_end)
    try:
        yield
    finally:
        _flush_python_stderr()
        os.dup2(saved, 2)  # closes the pipe's last write end: the thread reads to the end and stops
        thread.join(_DRAIN_S)
        if not thread.is_alive():  # else it still writes to `saved` (a child kept the pipe open)
            os.close(saved)


def _flush_python_stderr() -> None:
    for stream in (sys.stderr, sys.__stderr__):
        try:
            if stream is not None:
                stream.flush()
        except (OSError, ValueError):  # a closed or broken stream: nothing buffered to keep
            pass


@contextmanager
def tensorflow_quietly() -> Iterator[None]:
    """A block that may import TensorFlow: if it does, TensorFlow's start-up noise is dropped.

    Does nothing if TensorFlow is already imported or ``TF_CPP_MIN_LOG_LEVEL`` is set.
    If the block imported TensorFlow, its devices are listed before the block ends (the
    GPU probe, which TensorFlow would otherwise run, noisily, on first use).
    """
    if "tensorflow" in sys.modules or "TF_CPP_MIN_LOG_LEVEL" in os.environ:
        yield
        return
    with stderr_without_noise():
        yield
        tf = sys.modules.get("tensorflow")
        config = getattr(tf, "config", None)
        if config is not None:
            config.list_physical_devices()


def import_tensorflow() -> ModuleType:
    """``import tensorflow``, inside :func:`tensorflow_quietly` when this is the process's first import."""
    with tensorflow_quietly():
        import tensorflow
    return tensorflow
