"""Shared test helpers: running Python in a fresh subprocess, exact array comparison."""

from __future__ import annotations

import os
import subprocess
import sys
import textwrap
from pathlib import Path

import numpy as np
import pytest

REPO_ROOT = Path(__file__).resolve().parents[1]


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
