"""Write faults: a full disk (ENOSPC), a file size limit (EFBIG), writers killed mid-write.

Each fault gives a named error that is also an ``OSError`` with its errno; nothing is
committed, no temporary directory is left, and a dataset being overwritten is intact.
Temporary directories of killed writers are removed by the next write to the same
target, but never those of a live writer.
"""

from __future__ import annotations

import errno
import json
import os
import signal
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
from conftest import assert_same_array, subprocess_env

import memseq


def leftovers(parent: Path) -> list[str]:
    return sorted(p.name for p in parent.iterdir() if ".memseq-tmp-" in p.name or ".memseq-new-" in p.name)


def test_disk_full_is_a_write_error_nothing_committed_old_dataset_intact(small_tmpfs):
    old = {"x": np.arange(1000, dtype=np.int64)}
    memseq.save(small_tmpfs / "ds", old)
    big = {"x": np.ones(3 * 2**20 // 8, np.int64)}  # 3 MiB on a 2 MiB disk

    with pytest.raises(memseq.WriteError, match=r"ds: writing dataset failed: No space left on device\. The disk is full") as info:
        memseq.save(small_tmpfs / "ds", big, overwrite=True)
    assert isinstance(info.value, OSError) and info.value.errno == errno.ENOSPC
    assert info.value.filename == str(small_tmpfs / "ds")
    assert leftovers(small_tmpfs) == []
    with memseq.open(small_tmpfs / "ds") as ds:
        assert_same_array(ds["x"][:], old["x"])
        ds.verify()

    with pytest.raises(memseq.WriteError) as info:  # a fresh write, streamed by a Writer
        with memseq.Writer(small_tmpfs / "new", {"x": ("int64", ())}) as w:
            for _ in range(10):
                w.append(big)
    assert info.value.errno == errno.ENOSPC
    assert not (small_tmpfs / "new").exists() and leftovers(small_tmpfs) == []
    memseq.save(small_tmpfs / "after", {"x": np.arange(10)})  # the space was given back
    assert len(memseq.open(small_tmpfs / "after")) == 10


EFBIG_SCRIPT = """
import errno, json, os, resource, signal, sys
import numpy as np
import memseq

path = sys.argv[1]
memseq.save(path, {"x": np.arange(100, dtype=np.int64)})  # the old dataset, under the limit
signal.signal(signal.SIGXFSZ, signal.SIG_IGN)  # else the kernel kills us instead of failing the write
resource.setrlimit(resource.RLIMIT_FSIZE, (2**20, 2**20))
out = {}
for name, overwrite in (("overwrite", True), ("fresh", False)):
    target = path if overwrite else path + "-fresh"
    try:
        memseq.save(target, {"x": np.ones(2**19, np.int64)}, overwrite=overwrite)  # 4 MiB
        out[name] = "committed"
    except memseq.WriteError as e:
        out[name] = [type(e).__name__, isinstance(e, OSError), e.errno, str(e)]
    except BaseException as e:
        out[name] = ["BAD " + type(e).__name__, False, None, str(e)]
print(json.dumps(out))
"""


def test_file_size_limit_is_a_write_error_nothing_committed_old_dataset_intact(tmp_path):
    proc = subprocess.run([sys.executable, "-c", EFBIG_SCRIPT, str(tmp_path / "ds")], capture_output=True, text=True,
                          env=subprocess_env(), timeout=120)
    assert proc.returncode == 0, proc.stderr
    out = json.loads(proc.stdout)
    for name in ("overwrite", "fresh"):
        cls, is_os_error, code, message = out[name]
        assert (cls, is_os_error, code) == ("WriteError", True, errno.EFBIG), out[name]
        assert "File too large" in message and "file size limit" in message and "Nothing was committed" in message
    assert not (tmp_path / "ds-fresh").exists() and leftovers(tmp_path) == []
    with memseq.open(tmp_path / "ds") as ds:
        assert_same_array(ds["x"][:], np.arange(100, dtype=np.int64))
        ds.verify()


# --------------------------------------------------------------------------- temp dirs of killed writers

HOLDING_WRITER = """
import sys
import numpy as np
import memseq

w = memseq.Writer(sys.argv[1], {"x": ("int64", ())}, overwrite=True)
w.append({"x": np.arange(5)})
print(w._tmp, flush=True)
sys.stdin.readline()  # hold the Writer open until told
w.append({"x": np.arange(5, 10)})
w.close()
print("committed", flush=True)
"""


def _start_holding_writer(path: Path) -> tuple[subprocess.Popen, Path]:
    proc = subprocess.Popen([sys.executable, "-c", HOLDING_WRITER, str(path)], stdin=subprocess.PIPE,
                            stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True, env=subprocess_env())
    line = proc.stdout.readline().strip()
    assert line, proc.stderr.read()
    return proc, Path(line)


def test_next_write_removes_temp_dirs_of_killed_writers_only(tmp_path):
    path = tmp_path / "ds"
    memseq.save(path, {"x": np.arange(3)})
    live, live_tmp = _start_holding_writer(path)
    killed, killed_tmp = _start_holding_writer(path)  # its own sweep left the live one alone
    killed.send_signal(signal.SIGKILL)
    killed.wait(timeout=60)
    try:
        # An empty directory a writer killed between creating and locking it would leave.
        (tmp_path / ".ds.memseq-new-1-abc").mkdir()
        assert killed_tmp.is_dir() and live_tmp.is_dir()

        memseq.save(path, {"x": np.arange(7)}, overwrite=True)

        assert not killed_tmp.exists(), "the killed writer's temporary directory was left behind"
        assert not (tmp_path / ".ds.memseq-new-1-abc").exists()
        assert live_tmp.is_dir(), "a live writer's temporary directory was deleted"
        assert len(memseq.open(path)) == 7
        out, err = live.communicate("go\n", timeout=60)
        assert live.returncode == 0 and "committed" in out, err
    finally:
        if live.poll() is None:
            live.kill()
            live.wait()
    assert_same_array(memseq.open(path)["x"][:], np.arange(10))
    assert leftovers(tmp_path) == []


def test_a_writer_in_this_process_keeps_its_temp_dir_while_another_writes(tmp_path):
    path = tmp_path / "ds"
    with memseq.Writer(path, {"x": ("int64", ())}, overwrite=True) as first:
        first.append({"x": np.arange(4)})
        memseq.save(path, {"x": np.arange(2)}, overwrite=True)  # sweeps, and commits first
        assert os.path.isdir(first._tmp)
        assert len(memseq.open(path)) == 2
    assert_same_array(memseq.open(path)["x"][:], np.arange(4))  # the later commit wins
    assert leftovers(tmp_path) == []
