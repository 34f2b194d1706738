"""Shared test helpers: the image dataset (``data_path``), running Python in a fresh subprocess, exact array comparison."""

from __future__ import annotations

import os
import subprocess
import sys
import textwrap
from pathlib import Path

import numpy as np
import pytest

REPO_ROOT = Path(__file__).resolve().parents[1]


def pytest_configure(config):
    config.addinivalue_line(
        "markers",
        "dataset(rows, row_shape, *, classes=None, fields=(), shard_rows=None): the dataset data_path builds for "
        "the module (see image_fields)",
    )


def image_fields(rows: int, row_shape: tuple[int, ...], *, classes: int | None = None,
                 fields: tuple[str, ...] = ()) -> dict[str, np.ndarray]:
    """The columns of the shared test dataset, in this order (values fixed by seed 0):

    - ``image``: uint8 ``(rows, *row_shape)``, uniform in [0, 256);
    - ``meta`` (if in ``fields``): float32 ``(rows, 4)``, standard normal;
    - ``label``: int64, ``row % classes``, or the row number if ``classes`` is None;
    - ``weight`` (if in ``fields``): float32, uniform in [0, 1);
    - ``row`` and ``id`` (if in ``fields``): int64, the row number.
    """
    unknown = set(fields) - {"meta", "weight", "row", "id"}
    if unknown:
        raise ValueError(f"image_fields: unknown fields {sorted(unknown)}; expected meta, weight, row or id")
    rng = np.random.default_rng(0)
    out = {"image": rng.integers(0, 256, (rows, *row_shape), dtype=np.uint8)}
    if "meta" in fields:
        out["meta"] = rng.normal(size=(rows, 4)).astype(np.float32)
    number = np.arange(rows, dtype=np.int64)
    out["label"] = number if classes is None else number % classes
    if "weight" in fields:
        out["weight"] = rng.random(rows).astype(np.float32)
    out.update({name: number for name in ("row", "id") if name in fields})
    return out


@pytest.fixture(scope="module")
def data_path(request, tmp_path_factory) -> str:
    """The path of a saved image dataset, built once per module as its ``dataset`` marker says.

    A module sets ``pytestmark = pytest.mark.dataset(rows, row_shape, classes=..., fields=...,
    shard_rows=...)``; the columns are :func:`image_fields`'. Tests only read it.
    """
    marker = request.node.get_closest_marker("dataset")
    if marker is None:
        raise pytest.UsageError(f"{request.node.nodeid}: data_path needs pytestmark = pytest.mark.dataset(rows, row_shape)")
    import memseq

    kwargs = dict(marker.kwargs)
    shard_rows = kwargs.pop("shard_rows", None)
    path = tmp_path_factory.mktemp("data") / "ds"
    memseq.save(path, image_fields(*marker.args, **kwargs), shard_rows=shard_rows)
    return str(path)


def subprocess_env() -> dict[str, str]:
    """The environment for child interpreters: this checkout's memseq first on the path."""
    env = dict(os.environ)
    env["PYTHONPATH"] = os.pathsep.join(filter(None, [str(REPO_ROOT), env.get("PYTHONPATH")]))
    env.setdefault("TF_CPP_MIN_LOG_LEVEL", "3")
    return env


@pytest.fixture
def run_python(tmp_path):
    """Runs a Python source string in a fresh interpreter (cwd=tmp_path); returns the CompletedProcess."""
    counter = iter(range(10**6))

    def run(code: str, *args: str, timeout: float = 120) -> subprocess.CompletedProcess:
        script = tmp_path / f"_script_{next(counter)}.py"
        script.write_text(textwrap.dedent(code))
        return subprocess.run(
            [sys.executable, str(script), *map(str, args)],
            cwd=tmp_path,
            env=subprocess_env(),
            capture_output=True,
            text=True,
            timeout=timeout,
        )

    return run


def assert_same_array(actual, expected) -> None:
    """Exact equality: dtype, shape and every byte (NaN payloads and -0.0 included)."""
    actual = np.asarray(actual)
    expected = np.asarray(expected)
    assert actual.dtype == expected.dtype, (actual.dtype, expected.dtype)
    assert actual.shape == expected.shape, (actual.shape, expected.shape)
    assert np.ascontiguousarray(actual).tobytes() == np.ascontiguousarray(expected).tobytes()


def process_running(pid: int) -> bool:
    """Whether process ``pid`` exists and is not a zombie (Linux ``/proc``)."""
    try:
        with open(f"/proc/{pid}/stat") as f:
            return f.read().split(") ")[1][0] != "Z"
    except FileNotFoundError:
        return False


def wait_for_exit(pids: list[int], seconds: float) -> list[int]:
    """Waits up to ``seconds`` for ``pids`` to end; returns those still running."""
    import time

    deadline = time.monotonic() + seconds
    while time.monotonic() < deadline and any(process_running(pid) for pid in pids):
        time.sleep(0.1)
    return [pid for pid in pids if process_running(pid)]


@pytest.fixture
def small_tmpfs(tmp_path):
    """A 2 MiB tmpfs mounted at tmp_path/"mnt": writes into it really run out of space.

    Skips where mounting is not permitted (it needs root or CAP_SYS_ADMIN).
    """
    mnt = tmp_path / "mnt"
    mnt.mkdir()
    proc = subprocess.run(["mount", "-t", "tmpfs", "-o", "size=2m", "tmpfs", str(mnt)], capture_output=True, text=True)
    if proc.returncode != 0:
        pytest.skip(f"cannot mount a small tmpfs here (needs root or CAP_SYS_ADMIN): {proc.stderr.strip()}")
    try:
        yield mnt
    finally:
        subprocess.run(["umount", "-l", str(mnt)], check=False)
