"""Atomic commit under SIGKILL: a killed write leaves no dataset, the old one, or the new one.

A child process streams a ~300 MB dataset through memseq.Writer and is killed at
random moments spread over its run (fresh path; and overwriting an existing dataset,
reusing the same path across kills). Every row's contents depend on the row index
and a generation number, so a mix of two generations cannot go unnoticed.
"""

from __future__ import annotations

import os
import random
import shutil
import signal
import subprocess
import sys
import time
from pathlib import Path

import numpy as np
import pytest
from conftest import subprocess_env

import memseq

pytestmark = pytest.mark.slow

ROW_BYTES = 4096
BASE_ROWS = 300 * 2**20 // ROW_BYTES  # 300 MB of images (+ 0.6 MB of labels)
# Kills that interrupted a write, per test; MEMSEQ_FUZZ_FULL=1 (the full campaign) makes it 50 (100 in all).
KILLS = 50 if os.environ.get("MEMSEQ_FUZZ_FULL") == "1" else 20

WRITER_SCRIPT = f"""
import sys, time
import numpy as np
import memseq

path, gen, overwrite, shard_rows = sys.argv[1], int(sys.argv[2]), sys.argv[3] == "1", int(sys.argv[4]) or None
n = {BASE_ROWS} + 64 * gen  # the row count differs between generations too
print("ready", flush=True)
start = time.perf_counter()
with memseq.Writer(path, {{"image": ("uint8", ({ROW_BYTES},)), "label": ("int64", ())}},
                   overwrite=overwrite, shard_rows=shard_rows) as w:
    for lo in range(0, n, 4096):
        rows = np.arange(lo, min(n, lo + 4096))
        image = np.empty((len(rows), {ROW_BYTES}), np.uint8)
        image[:] = ((rows * 7 + gen) % 251).astype(np.uint8)[:, None]
        w.append({{"image": image, "label": rows * 1000 + gen}})
print("done", time.perf_counter() - start, flush=True)
"""


def rows_of(gen: int) -> int:
    return BASE_ROWS + 64 * gen


def check_generation(path: Path, rng: np.random.Generator) -> int:
    """Opens the dataset, finds its generation and checks that every sampled row belongs to it."""
    ds = memseq.open(path)
    gen = int(ds["label"][0])
    n = rows_of(gen)
    assert len(ds) == n, (gen, len(ds))
    rows = np.unique(np.concatenate([[0, 1, n // 2, n - 2, n - 1], rng.integers(0, n, 200)]))
    batch = ds.take(rng.permutation(rows))
    order = np.argsort(batch["label"])
    labels, images = batch["label"][order], batch["image"][order]
    assert (labels == rows * 1000 + gen).all(), f"labels of generation {gen} mixed with others"
    expected = ((rows * 7 + gen) % 251).astype(np.uint8)
    assert (images == expected[:, None]).all(), f"images of generation {gen} mixed with others"
    ds.verify()  # every byte of every file matches the manifest's checksums
    return gen


def leftovers(parent: Path) -> list[Path]:
    return sorted(p for p in parent.iterdir() if ".memseq-tmp-" in p.name)


class Child:
    """The writer process; `start()` returns once it has imported everything."""

    def __init__(self, script: Path, path: Path, gen: int, *, overwrite: bool, shard_rows: int = 0):
        self.args = [sys.executable, str(script), str(path), str(gen), "1" if overwrite else "0", str(shard_rows)]

    def start(self) -> "Child":
        self.proc = subprocess.Popen(self.args, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True, env=subprocess_env())
        line = self.proc.stdout.readline()
        assert line == "ready\n", (line, self.proc.stderr.read())
        return self

    def finish(self) -> float:
        out, err = self.proc.communicate(timeout=120)
        assert self.proc.returncode == 0, err
        return float(out.split()[-1])

    def kill_after(self, delay: float) -> float | None:
        """SIGKILLs the child ``delay`` seconds after it is ready.

        Returns None if the kill interrupted the write, else the duration the
        child reported for its finished write.
        """
        time.sleep(delay)
        self.proc.send_signal(signal.SIGKILL)
        out, err = self.proc.communicate(timeout=60)
        if "done" in out:
            return float(out.split()[-1])
        assert self.proc.returncode == -signal.SIGKILL, err
        return None


class KillSchedule:
    """Random kill delays over the write, adapting to how long writes take on this noisy machine.

    Most delays are uniform over the whole write; every fifth one lands near its end, on the
    commit (final headers, fsync, manifest, rename, deleting the old dataset). Stops after
    KILLS kills that interrupted a write, or too many attempts.
    """

    def __init__(self, first_duration: float, seed: int):
        self.durations = [first_duration]
        self.rnd = random.Random(seed)
        self.seed = seed
        self.interrupted = 0
        self.attempts = 0

    def __iter__(self):
        # Nothing here depends on the machine's speed: delays scale with the measured
        # write times, ordinary kills stay below the shortest write seen (so they
        # interrupt however the speed varies), and the cap on attempts is generous.
        while self.interrupted < KILLS and self.attempts < 5 * KILLS + 10:
            self.attempts += 1
            if self.attempts % 5 == 0:
                yield self.rnd.uniform(0.85, 1.05) * float(np.median(self.durations))
            else:
                yield self.rnd.uniform(0.0, 0.9) * min(self.durations)

    def record(self, finished_duration: float | None) -> None:
        if finished_duration is None:
            self.interrupted += 1
        else:
            self.durations.append(finished_duration)


@pytest.fixture
def writer_script(tmp_path) -> Path:
    script = tmp_path / "write_dataset.py"
    script.write_text(WRITER_SCRIPT)
    return script


def test_killed_fresh_write_leaves_no_dataset_or_a_complete_one(tmp_path, writer_script):
    work = tmp_path / "fresh"
    work.mkdir()
    rng = np.random.default_rng(0)
    # One uninterrupted run measures how long a write takes and checks the happy path.
    duration = Child(writer_script, work / "measure", 1, overwrite=False).start().finish()
    assert check_generation(work / "measure", rng) == 1
    shutil.rmtree(work / "measure")

    schedule = KillSchedule(duration, seed=int(time.time()))
    outcomes = []
    for i, delay in enumerate(schedule):
        path = work / f"ds{i}"
        gen = i + 2
        finished = Child(writer_script, path, gen, overwrite=False).start().kill_after(delay)
        schedule.record(finished)
        try:
            got = check_generation(path, rng)
        except memseq.DatasetNotFoundError:
            assert finished is None, "a write that finished left no dataset"
            assert not path.exists(), f"kill at {delay:.3f}s left an unopenable {path} (seed {schedule.seed})"
            outcomes.append(("none", round(delay, 3)))
        else:
            assert got == gen
            outcomes.append(("new", round(delay, 3)))
        assert len(leftovers(work)) <= 1
        for p in [path, *leftovers(work)]:
            shutil.rmtree(p, ignore_errors=True)
    assert schedule.interrupted >= KILLS, f"only {schedule.interrupted} kills interrupted a write: {outcomes}"
    assert any(kind == "none" for kind, _ in outcomes), outcomes


def test_killed_overwrite_leaves_the_old_or_the_new_dataset_never_a_mix(tmp_path, writer_script):
    work = tmp_path / "overwrite"
    work.mkdir()
    path = work / "ds"
    rng = np.random.default_rng(1)
    shard_rows = 20_000  # several shards: several files per field to swap at once
    duration = Child(writer_script, path, 0, overwrite=True, shard_rows=shard_rows).start().finish()
    assert check_generation(path, rng) == 0
    assert memseq.open(path).num_shards == 4

    schedule = KillSchedule(duration, seed=int(time.time()))
    current, history = 0, []
    for gen, delay in enumerate(schedule, start=1):
        finished = Child(writer_script, path, gen, overwrite=True, shard_rows=shard_rows).start().kill_after(delay)
        schedule.record(finished)
        got = check_generation(path, rng)  # must open: the old dataset stays in place until the swap
        assert got in (current, gen), (
            f"kill at {delay:.3f}s: generation {got}, expected {current} or {gen} (seed {schedule.seed})"
        )
        if finished is not None:
            assert got == gen
        history.append((gen, got, round(delay, 3)))
        current = got
        # A leftover is the unfinished new write or the old dataset not yet deleted.
        stale = leftovers(work)
        assert len(stale) <= 1, stale
        for p in stale:
            shutil.rmtree(p)
    assert schedule.interrupted >= KILLS, f"only {schedule.interrupted} kills interrupted a write: {history}"
    assert any(got != gen for gen, got, _ in history), history  # some kills hit before the commit
