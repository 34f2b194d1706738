"""Hostile reads: files truncated while they are read (no SIGBUS), corrupt ragged lengths, huge reads.

The campaign (``test_truncate_during_reads``) runs in one child process (Keras is
imported once): for each reader kind, 100 times it opens the data, starts reader
threads, truncates the file under them at a page boundary, waits for every reader to
stop on an error (or a timeout), restores the file and closes the data. The child
prints its counts per kind; the parent asserts the child was not killed (SIGBUS), every
error was a CorruptFileError (or DatasetReplacedError) naming the file, and no read
returned a wrong byte. Truncations fall on page boundaries because a file truncated
inside a page and restored before a read's size check can leave zeros in that page
without a fault: that is a file modified in place during a read, which only
``verify()`` detects. The same campaign prints a report: ``python tests/test_hostile_reads.py``.
"""

from __future__ import annotations

import json
import os
import re
import signal
import subprocess
import sys

import numpy as np
import pytest

import memseq
from memseq.errors import CorruptFileError, SchemaError

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
from conftest import subprocess_env  # noqa: E402

ROWS = 3000
ROW_SHAPE = (3000,)  # not a multiple of the page: rows straddle pages
TOKENS = 2**21

KINDS = [
    "take",
    "seq-full",
    "seq-full-readahead",
    "seq-block",
    "seq-block-readahead",
    "slice",
    "asarray",
    "ragged-take",
    "ragged-padded",
    "ragged-lengths",
    "windows",
    "verify",
]

CAMPAIGN = r'''
import json, os, random, sys, threading, time
import numpy as np
import memseq
from memseq.read import sigbus as _sigbus

root, kinds, runs = sys.argv[1], sys.argv[2].split(","), int(sys.argv[3])
READERS, PAGE = 2, 4096
ds_path, tokens_path = os.path.join(root, "ds"), os.path.join(root, "tokens.bin")


def campaign(kind):
    probe = memseq.open(ds_path)
    files = probe.manifest.shards[0].files
    if kind.startswith("ragged"):
        target = os.path.join(ds_path, (files["tokens"].offsets if kind == "ragged-lengths" else files["tokens"]).path)
    elif kind == "windows":
        target = tokens_path
    else:
        target = os.path.join(ds_path, files["image"].path)
    probe.close()
    original = open(target, "rb").read()
    size = len(original)
    counts = {"runs": 0, "reads": 0, "errors": 0, "torn": 0, "wrong": 0, "other": 0, "timeouts": 0}
    others = []


    def image_rows_ok(rows, idx):
        return bool((rows == ((np.asarray(idx) % 251) + 1).astype(np.uint8)[:, None]).all())


    def make(rng):
        """(objects to keep, a function doing one read and returning whether its data are right)."""
        if kind == "windows":
            col = memseq.open_raw(tokens_path, dtype="uint16", shape=(-1,))
            win = memseq.windows(col, length=257, stride=256)
            def read():
                idx = rng.integers(0, len(win), 32)
                w = win[idx]
                return bool((w == (((idx * 256)[:, None] + np.arange(257)) % 60000 + 1).astype(np.uint16)).all())
            return [col], read, [col]
        ds = memseq.open(ds_path)
        image, tokens = ds["image"], ds["tokens"]
        n = len(ds)
        if kind == "take":
            def read():
                idx = rng.integers(0, n, 64)
                return image_rows_ok(image.take(idx), idx)
        elif kind.startswith("seq"):
            shuffle = memseq.BlockShuffle(block_rows=32, window_blocks=4) if "block" in kind else True
            seq = memseq.MemmapSequence(ds, x="image", y="label", batch_size=64, seed=int(rng.integers(1 << 30)),
                                        shuffle=shuffle, readahead=kind.endswith("readahead"))
            def read():
                x, y = seq[int(rng.integers(0, len(seq)))]
                return image_rows_ok(x, y)
        elif kind == "slice":
            def read():
                a = int(rng.integers(0, n - 64))
                return image_rows_ok(image[a : a + 64], np.arange(a, a + 64))
        elif kind == "asarray":
            def read():
                return image_rows_ok(np.asarray(image), np.arange(n))
        elif kind == "ragged-take":
            def read():
                idx = rng.integers(0, n, 64)
                return all(len(r) == i % 50 + 1 and (r == i % 1000 + 1).all() for r, i in zip(tokens[idx], idx.tolist()))
        elif kind == "ragged-padded":
            seq = memseq.MemmapSequence(ds, x="tokens", y="label", batch_size=64, seed=int(rng.integers(1 << 30)), readahead=False)
            def read():
                x, y = seq[int(rng.integers(0, len(seq)))]
                want = np.where(np.arange(x.shape[1]) < (y % 50 + 1)[:, None], (y % 1000 + 1)[:, None], 0)
                return bool((x == want).all())
        elif kind == "ragged-lengths":
            def read():
                return bool((tokens.lengths == np.arange(n) % 50 + 1).all())
        elif kind == "verify":
            def read():
                ds.verify()
                return True
        return [ds], read, [image, tokens]


    def torn(columns):
        regions = []
        for col in columns:
            for part in col.parts():
                regions += [p._region for p in ((part.values, part.offsets) if hasattr(part, "offsets") else (part,))]
        return any(r.torn for r in regions)


    for run in range(runs):
        rng = np.random.default_rng(run)
        keep, read, columns = make(rng)
        failed = threading.Event()
        stop = threading.Event()
        errors = []

        def reader():
            while not stop.is_set():
                try:
                    ok = read()
                except (memseq.CorruptFileError, memseq.DatasetReplacedError) as e:
                    errors.append(str(e))
                    return
                except BaseException as e:  # anything else is a finding
                    others.append(f"{type(e).__name__}: {e}"[:300])
                    counts["other"] += 1
                    return
                counts["reads"] += 1
                if not ok:
                    counts["wrong"] += 1

        threads = [threading.Thread(target=reader) for _ in range(READERS)]
        for t in threads:
            t.start()
        time.sleep(random.Random(run).uniform(0, 0.004))
        cut = random.Random(run).randrange(0, size // PAGE) * PAGE  # a page boundary: see the module docstring
        os.truncate(target, cut)
        deadline = time.monotonic() + 10
        for t in threads:
            t.join(max(0.0, deadline - time.monotonic()))
        if any(t.is_alive() for t in threads):
            counts["timeouts"] += 1
            stop.set()
            for t in threads:
                t.join()
        with open(target, "r+b") as f:  # restore
            f.seek(cut)
            f.write(original[cut:])
        counts["errors"] += len(errors)
        counts["torn"] += torn(columns)
        bad = [e for e in errors if os.path.basename(target) not in e]
        if bad:
            others.append("error without the file name: " + bad[0][:300])
            counts["other"] += 1
        counts["runs"] += 1
        for obj in keep:
            obj.close() if hasattr(obj, "close") else None
        del keep, read, columns

    assert open(target, "rb").read() == original
    print(json.dumps({"kind": kind, **counts, "others": others[:5]}), flush=True)


for kind in kinds:
    print("START", kind, flush=True)
    campaign(kind)
'''


def build(root) -> None:
    """The dataset (image rows i filled with i % 251 + 1, labels i, token rows of length i % 50 + 1) and a token file."""
    images = np.empty((ROWS, *ROW_SHAPE), np.uint8)
    images[:] = ((np.arange(ROWS) % 251) + 1).astype(np.uint8)[:, None]
    with memseq.Writer(root / "ds", fields={"image": ("uint8", ROW_SHAPE), "label": ("int64", ()),
                                            "tokens": ("uint16", (None,))}) as w:
        for a in range(0, ROWS, 500):
            rows = range(a, min(a + 500, ROWS))
            w.append({
                "image": images[a : a + 500],
                "label": np.arange(a, a + len(rows)),
                "tokens": [np.full(i % 50 + 1, i % 1000 + 1, np.uint16) for i in rows],
            })
    (np.arange(TOKENS) % 60000 + 1).astype(np.uint16).tofile(root / "tokens.bin")


def run_campaign(root, kinds: list[str], runs: int, timeout: float = 900) -> tuple[subprocess.CompletedProcess, dict]:
    """Runs the campaign for ``kinds`` in one child; returns it and the counts of each kind it finished."""
    script = root / "_campaign.py"
    script.write_text(CAMPAIGN)
    result = subprocess.run([sys.executable, str(script), str(root), ",".join(kinds), str(runs)], env=subprocess_env(),
                            capture_output=True, text=True, timeout=timeout)
    counts = {}
    for line in result.stdout.splitlines():
        if line.startswith("{"):
            entry = json.loads(line)
            counts[entry["kind"]] = entry
    return result, counts


@pytest.fixture(scope="module")
def hostile_root(tmp_path_factory):
    root = tmp_path_factory.mktemp("hostile")
    build(root)
    return root


def _assert_clean(result, counts, runs):
    running = [line for line in result.stdout.splitlines() if line.startswith("START")][-1:]
    assert result.returncode != -signal.SIGBUS, f"killed by SIGBUS during {running}\n{result.stderr[-3000:]}"
    assert result.returncode == 0, f"returncode {result.returncode} during {running}\n{result.stderr[-3000:]}"
    assert sorted(counts) == sorted(KINDS)
    for kind, c in counts.items():
        assert c["runs"] == runs, c
        assert c["wrong"] == 0, c
        assert c["other"] == 0, c
        assert c["timeouts"] == 0, c
        assert c["errors"] >= runs, c  # every run's truncation was seen by its readers


def test_truncate_during_reads_quick(hostile_root):
    result, counts = run_campaign(hostile_root, KINDS, 3)
    _assert_clean(result, counts, 3)


@pytest.mark.slow
def test_truncate_during_reads(hostile_root):
    """The issue's 'must show': 100 truncate-during-read runs per reader kind, zero SIGBUS, zero wrong data."""
    result, counts = run_campaign(hostile_root, KINDS, 100)
    _assert_clean(result, counts, 100)


# --------------------------------------------------------------------------- the guard in this process


def _image_file(path):
    ds = memseq.open(path)
    return path / ds.manifest.shards[0].files["image"].path


def test_fault_in_a_read_tears_the_mapping_for_good(tmp_path):
    # Runs in the test process itself: a regression here is a SIGBUS of pytest.
    images = np.full((64, 4096), 7, np.uint8)
    memseq.save(tmp_path / "ds", {"image": images})
    file = _image_file(tmp_path / "ds")
    ds = memseq.open(tmp_path / "ds")
    original = file.read_bytes()
    os.truncate(file, 8192)
    with pytest.raises(CorruptFileError, match=re.escape(str(file)) + r": the file is 8192 bytes but \d+ bytes are expected"):
        ds["image"][60]  # faults inside the copy: the guard turns it into zeros, the check after it into this
    file.write_bytes(original)
    # Restored, but the mapping's pages are zeros now: never served, however the file looks.
    with pytest.raises(CorruptFileError, match=r"image\.npy \(field 'image'\): the file was truncated while it was being read"):
        ds["image"][0]
    with pytest.raises(CorruptFileError, match="truncated while it was being read"):
        ds.verify()
    assert (memseq.open(tmp_path / "ds")["image"][60] == 7).all()  # a new open reads the restored file


def test_torn_mapping_of_a_replaced_file_is_dataset_replaced(tmp_path):
    memseq.save(tmp_path / "ds", {"image": np.full((64, 4096), 7, np.uint8)})
    ds = memseq.open(tmp_path / "ds")
    file = _image_file(tmp_path / "ds")
    with open(file, "r+b") as f:  # truncate the mapped inode through a descriptor, then replace the path
        os.truncate(f.fileno(), 4096)
        memseq.save(tmp_path / "ds", {"image": np.full((64, 4096), 9, np.uint8)}, overwrite=True)
    with pytest.raises(memseq.DatasetReplacedError, match="truncated while it was being read, and the path now names another"):
        ds["image"][:]


SCRIPT_FOREIGN_SIGBUS = """
import os, sys
import numpy as np
import memseq
if sys.argv[1] == "faulthandler":
    import faulthandler; faulthandler.enable()
memseq.save("ds", {"x": np.zeros((16, 4096), np.uint8)})
ds = memseq.open("ds")  # installs the guard
np.zeros(4 * 4096, np.uint8).tofile("other.bin")
other = np.memmap("other.bin", np.uint8, "r")  # not memseq's mapping
os.truncate("other.bin", 0)
print("reading", flush=True)
print(int(other[-1]))
print("NOT KILLED")
"""


@pytest.mark.parametrize("before", ["nothing", "faulthandler"])
def test_sigbus_outside_memseq_still_ends_the_process(run_python, before):
    result = run_python(SCRIPT_FOREIGN_SIGBUS, before, timeout=60)
    assert result.returncode == -signal.SIGBUS, (result.returncode, result.stdout, result.stderr)
    assert "NOT KILLED" not in result.stdout
    if before == "faulthandler":
        assert "Fatal Python error: Bus error" in result.stderr  # the previous handler still ran


SCRIPT_SENT_SIGBUS = """
import os, signal, sys
import numpy as np
import memseq
seen = []
if sys.argv[1] == "handler":
    signal.signal(signal.SIGBUS, lambda *a: seen.append(1))
memseq.save("ds", {"x": np.zeros(4, np.uint8)})
memseq.open("ds")["x"][:]  # installs the guard
os.kill(os.getpid(), signal.SIGBUS)
print("SURVIVED", seen)
"""


@pytest.mark.parametrize("before", ["default", "handler"])
def test_sent_sigbus_gets_the_previous_action(run_python, before):
    result = run_python(SCRIPT_SENT_SIGBUS, before, timeout=60)
    if before == "default":
        assert result.returncode == -signal.SIGBUS, (result.returncode, result.stdout, result.stderr)
    else:
        assert result.returncode == 0, result.stderr
        assert "SURVIVED [1]" in result.stdout


def test_guard_off_by_environment(run_python, tmp_path, monkeypatch):
    monkeypatch.setenv("MEMSEQ_SIGBUS_GUARD", "0")
    script = """
import os
import numpy as np
import memseq
from memseq.read import sigbus as _sigbus

print("ACTIVE", _sigbus.ACTIVE, flush=True)
memseq.save("ds", {"x": np.zeros((16, 4096), np.uint8)})
ds = memseq.open("ds")
os.truncate(os.path.join("ds", ds.manifest.shards[0].files["x"].path), 0)
ds["x"][:]
"""
    result = run_python(script, timeout=60)
    assert "ACTIVE False" in result.stdout
    assert result.returncode == -signal.SIGBUS, (result.returncode, result.stderr)


# --------------------------------------------------------------------------- finding 4: ragged lengths


def test_lengths_refuse_decreasing_offsets(tmp_path):
    with memseq.Writer(tmp_path / "ds", fields={"tokens": ("uint16", (None,))}) as w:
        w.append({"tokens": [np.arange(3), np.arange(5), np.arange(2)]})
    ds_dir = tmp_path / "ds"
    manifest = json.loads((ds_dir / "memseq.json").read_text())
    offsets_file = ds_dir / manifest["shards"][0]["files"]["tokens"]["offsets"]["path"]
    offsets = np.load(offsets_file)
    offsets[1] = 9  # [0, 9, 8, 10]: row 0 is 9 long, row 1 is -1 long; the ends still match
    np.save(offsets_file, offsets)
    tokens = memseq.open(ds_dir)["tokens"]
    with pytest.raises(CorruptFileError, match=re.escape(str(offsets_file)) + r": offsets decrease at row 1 \(a length of -1\)"):
        tokens.lengths
    with pytest.raises(CorruptFileError, match="offsets decrease at row 1"):
        memseq.LengthBuckets(tokens)  # reads the column's lengths: never a negative one


def test_lengths_refuse_offsets_past_the_values(tmp_path):
    with memseq.Writer(tmp_path / "ds", fields={"tokens": ("uint16", (None,))}) as w:
        w.append({"tokens": [np.arange(3), np.arange(5)]})
    ds_dir = tmp_path / "ds"
    manifest = json.loads((ds_dir / "memseq.json").read_text())
    offsets_file = ds_dir / manifest["shards"][0]["files"]["tokens"]["offsets"]["path"]
    offsets = np.load(offsets_file)
    offsets[-1] = 1000
    np.save(offsets_file, offsets)
    with pytest.raises(CorruptFileError):  # refused on open already (the ends), never a length past the values
        memseq.open(ds_dir)["tokens"].lengths


# --------------------------------------------------------------------------- finding 11: reads larger than memory


def test_whole_column_larger_than_memory_is_refused_before_allocating(tmp_path):
    path = tmp_path / "huge.bin"
    with open(path, "wb") as f:
        f.truncate(2**40)  # 1 TiB, sparse
    col = memseq.open_raw(path, dtype="uint8", shape=(-1, 2**20))
    for read in (lambda: col[:], lambda: np.asarray(col), lambda: col[10:2**20 - 10]):
        with pytest.raises(SchemaError, match=r"this read needs 1024\.0 GiB|this read needs 1\.0 TiB|needs .* of memory is available"):
            read()
    with pytest.raises(SchemaError, match=r"Read it in slices"):
        col[:]
    assert col[5:7].shape == (2, 2**20)  # a small read still works


def test_read_larger_than_reported_memory_names_both_sizes(tmp_path, monkeypatch):
    from memseq.read import columns

    memseq.save(tmp_path / "ds", {"x": np.zeros((300, 2**20), np.uint8)})
    monkeypatch.setattr(columns, "available_memory", lambda: 100 * 2**20)
    with pytest.raises(SchemaError, match=r"x: this read needs 300\.0 MiB \(314572800 bytes\) for \(300, 1048576\) of uint8 "
                                          r"but 100\.0 MiB of memory is available"):
        memseq.open(tmp_path / "ds")["x"][:]
    ds = memseq.open(tmp_path / "ds")
    assert ds["x"][0:50].shape == (50, 2**20)  # below the size at which memory is asked


def test_available_memory_is_a_positive_number():
    available = memseq.read.columns.available_memory()
    assert available is None or available > 0


# --------------------------------------------------------------------------- finding 11: absurd window sizes


@pytest.mark.parametrize("kwargs, name", [
    (dict(length=2**64), "length"),
    (dict(length=2**63), "length"),
    (dict(length=2**62), "length"),  # uint16: 2**63 bytes per window
    (dict(length=4, stride=2**64), "stride"),
    (dict(length=np.uint64(2**64 - 1)), "length"),
])
def test_windows_absurd_sizes_are_schema_errors(kwargs, name):
    tokens = np.arange(100, dtype=np.uint16)
    with pytest.raises(SchemaError, match=rf"windows\(\): {name} must be an int (in|from) .*Received: .*\d"):
        memseq.windows(tokens, **kwargs)


def test_windows_largest_sizes_still_work():
    tokens = np.arange(100, dtype=np.uint16)
    assert memseq.windows(tokens, length=4, stride=2**63 - 1).shape == (1, 4)
    assert len(memseq.windows(tokens, length=2**62 - 1)) == 0


if __name__ == "__main__":  # the campaign as a report: python tests/test_hostile_reads.py [RUNS]
    import tempfile
    from pathlib import Path

    with tempfile.TemporaryDirectory() as tmp:
        root = Path(tmp)
        build(root)
        result, counts = run_campaign(root, KINDS, int(sys.argv[1]) if len(sys.argv) > 1 else 100)
        for kind in KINDS:
            print(json.dumps(counts.get(kind, {"kind": kind, "missing": True})))
        print(f"child returncode {result.returncode}" + (" (SIGBUS)" if result.returncode == -signal.SIGBUS else ""))
        if result.returncode:
            print(result.stderr[-3000:])
