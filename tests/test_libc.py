"""memseq.util.libc: real calls into the C library; failures raise OSError with the call's errno."""

from __future__ import annotations

import ctypes
import errno
import mmap
import os
import signal
import subprocess
import sys
import textwrap

import numpy as np
import pytest

from memseq.util import libc

linux = pytest.mark.skipif(not sys.platform.startswith("linux"), reason="Linux calls")
PAGE = mmap.PAGESIZE


def _address(mapping: mmap.mmap) -> int:
    view = np.frombuffer(mapping, np.uint8)
    try:
        return view.ctypes.data
    finally:
        del view


@pytest.fixture
def mapped_file(tmp_path):
    """A 16-page file mapped read-only; its address; the mapping closed afterwards."""
    path = tmp_path / "data.bin"
    path.write_bytes(np.arange(16 * PAGE, dtype=np.uint8).tobytes())
    with open(path, "rb") as f:
        mapping = mmap.mmap(f.fileno(), 16 * PAGE, access=mmap.ACCESS_READ)
    yield path, mapping, _address(mapping)
    mapping.close()


@linux
def test_mincore_reports_the_residency_of_a_mapped_file(mapped_file):
    path, mapping, address = mapped_file
    fd = os.open(path, os.O_RDONLY)
    try:
        os.fsync(fd)
        os.posix_fadvise(fd, 0, 0, os.POSIX_FADV_DONTNEED)
    finally:
        os.close(fd)
    before = libc.mincore(address, 16 * PAGE)
    assert before.dtype == np.uint8 and before.shape == (16,)
    if (before & 1).all():
        pytest.skip("this file system keeps the file in memory (tmpfs?)")
    mapping[5 * PAGE]  # faults page 5 in (and maybe some around it)
    after = libc.mincore(address, 16 * PAGE)
    assert after[5] & 1 and libc.mincore_page(address + 5 * PAGE)
    assert libc.mincore(address, 16 * PAGE - 1).shape == (16,)  # a partial last page counts


@linux
def test_mincore_of_an_anonymous_page_sees_it_once_written():
    mapping = mmap.mmap(-1, 4 * PAGE)
    address = _address(mapping)
    mapping[2 * PAGE] = 1
    assert libc.mincore_page(address + 2 * PAGE)
    assert libc.mincore(address, 4 * PAGE)[2] & 1
    mapping.close()


@linux
def test_mincore_errors_raise_oserror_with_errno():
    mapping = mmap.mmap(-1, 2 * PAGE)
    address = _address(mapping)
    with pytest.raises(OSError) as unaligned:
        libc.mincore(address + 1, PAGE)
    assert unaligned.value.errno == errno.EINVAL
    mapping.close()  # the range is unmapped now
    with pytest.raises(OSError) as unmapped:
        libc.mincore_page(address)
    assert unmapped.value.errno == errno.ENOMEM and unmapped.value.strerror == os.strerror(errno.ENOMEM)


@linux
def test_madvise_advises_and_its_errors_raise_oserror_with_errno(mapped_file):
    _, _, address = mapped_file
    libc.madvise(address, 16 * PAGE, mmap.MADV_WILLNEED)  # no error
    with pytest.raises(OSError) as unknown:
        libc.madvise(address, PAGE, 12345)  # no such advice
    assert unknown.value.errno == errno.EINVAL
    with pytest.raises(OSError) as unaligned:
        libc.madvise(address + 1, PAGE, mmap.MADV_WILLNEED)
    assert unaligned.value.errno == errno.EINVAL


@linux
def test_madvise_populate_read_faults_a_file_range_in(mapped_file):
    _, _, address = mapped_file
    try:
        libc.madvise(address, 16 * PAGE, libc.MADV_POPULATE_READ)
    except OSError as error:
        if error.errno == errno.EINVAL:
            pytest.skip("a kernel before 5.14: no MADV_POPULATE_READ")
        raise
    assert (libc.mincore(address, 16 * PAGE) & 1).all()


@linux
def test_mmap_and_munmap_map_a_file_without_a_descriptor(tmp_path):
    path = tmp_path / "m.bin"
    path.write_bytes(b"memseq!!" * 1024)
    fd = os.open(path, os.O_RDONLY)
    address = libc.mmap(None, 8192, mmap.PROT_READ, mmap.MAP_SHARED, fd, 0)
    os.close(fd)
    assert ctypes.string_at(address, 8) == b"memseq!!"
    libc.munmap(address, 8192)
    with pytest.raises(OSError) as unmapped:
        libc.mincore_page(address)
    assert unmapped.value.errno == errno.ENOMEM


@linux
def test_mmap_errors_raise_oserror_with_errno():
    with pytest.raises(OSError) as bad_fd:
        libc.mmap(None, PAGE, mmap.PROT_READ, mmap.MAP_SHARED, -1, 0)
    assert bad_fd.value.errno == errno.EBADF
    with pytest.raises(OSError) as unaligned:
        libc.munmap(PAGE + 1, PAGE)
    assert unaligned.value.errno == errno.EINVAL


@linux
def test_renameat2_exchanges_two_paths_or_says_why_not(tmp_path):
    a, b = tmp_path / "a", tmp_path / "b"
    a.write_text("A")
    b.write_text("B")
    try:
        libc.renameat2(str(a), str(b), libc.RENAME_EXCHANGE)
    except OSError as error:
        if error.errno in (errno.EINVAL, errno.ENOSYS, errno.ENOTSUP):
            pytest.skip("this file system cannot exchange")
        raise
    assert a.read_text() == "B" and b.read_text() == "A"
    missing = tmp_path / "missing"
    with pytest.raises(OSError) as gone:
        libc.renameat2(str(missing), str(a), libc.RENAME_EXCHANGE)
    # As os.rename reports it: errno, strerror and both paths.
    assert gone.value.errno == errno.ENOENT
    assert gone.value.filename == str(missing) and gone.value.filename2 == str(a)
    assert isinstance(gone.value, FileNotFoundError)


@linux
def test_prctl_sets_and_reads_the_parent_death_signal():
    script = textwrap.dedent(
        """
        import ctypes, signal
        from memseq.util import libc
        libc.prctl(libc.PR_SET_PDEATHSIG, signal.SIGKILL)
        got = ctypes.c_int(0)
        libc.prctl(2, ctypes.addressof(got))  # PR_GET_PDEATHSIG
        print(got.value)
        try:
            libc.prctl(-1)
        except OSError as error:
            print(error.errno)
        """
    )
    out = subprocess.run([sys.executable, "-c", script], capture_output=True, text=True, timeout=60, check=True).stdout
    assert out.split() == [str(int(signal.SIGKILL)), str(errno.EINVAL)]


@linux
def test_sigaction_reads_and_installs_an_action_and_raise_signal_delivers_it():
    # In a child: installs a C-level SA_SIGINFO handler for SIGUSR1, raises it, and
    # reads si_code back (SI_TKILL, < 0: a sent signal, not a fault).
    script = textwrap.dedent(
        """
        import signal
        from memseq.util import libc
        seen = []
        handler = libc.SIGACTION_HANDLER(lambda signo, info, context: seen.append((signo, libc.siginfo_code(info))))
        old = libc.Sigaction()
        libc.sigaction(signal.SIGUSR1, None, old)
        print(old.handler or 0)
        action = libc.Sigaction()
        action.handler = libc.handler_address(handler)
        action.flags = 0x4  # SA_SIGINFO
        libc.sigaction(signal.SIGUSR1, action, None)
        now = libc.Sigaction()
        libc.sigaction(signal.SIGUSR1, None, now)
        print(now.handler == libc.handler_address(handler))
        libc.raise_signal(signal.SIGUSR1)
        print(seen[0][0], seen[0][1] <= 0)
        try:
            libc.sigaction(signal.SIGKILL, action, None)
        except OSError as error:
            print(error.errno)
        """
    )
    out = subprocess.run([sys.executable, "-c", script], capture_output=True, text=True, timeout=60, check=True).stdout
    assert out.split() == ["0", "True", str(int(signal.SIGUSR1)), "True", str(errno.EINVAL)]


def test_available_names_the_calls_the_c_library_has():
    if sys.platform.startswith("linux"):
        assert libc.available("madvise", "mincore", "mmap", "munmap", "prctl", "sigaction", "raise")
    assert not libc.available("no_such_call")
    assert libc.bind("no_such_call_either", None, []) is None


def test_a_missing_call_raises_enosys(monkeypatch):
    monkeypatch.setattr(libc, "_c_madvise", None)
    monkeypatch.setattr(libc, "_c_renameat2", None)
    with pytest.raises(OSError) as missing:
        libc.madvise(0, PAGE, mmap.MADV_WILLNEED)
    assert missing.value.errno == errno.ENOSYS and "madvise" in str(missing.value)
    with pytest.raises(OSError) as missing:
        libc.renameat2("a", "b", libc.RENAME_EXCHANGE)
    assert missing.value.errno == errno.ENOSYS


def test_exchange_falls_back_where_renameat2_is_missing(tmp_path, monkeypatch):
    from memseq.storage import commit

    monkeypatch.setitem(libc._BOUND, "renameat2", None)
    (tmp_path / "a").mkdir()
    (tmp_path / "b").mkdir()
    assert commit.exchange(str(tmp_path / "a"), str(tmp_path / "b")) is False


@linux
def test_exchange_raises_other_errors_with_both_paths(tmp_path):
    from memseq.storage import commit

    (tmp_path / "b").mkdir()
    with pytest.raises(FileNotFoundError) as gone:
        commit.exchange(str(tmp_path / "a"), str(tmp_path / "b"))
    assert gone.value.filename == str(tmp_path / "a") and gone.value.filename2 == str(tmp_path / "b")


def test_readahead_asks_nothing_without_madvise(monkeypatch):
    from memseq.readahead import pagein

    monkeypatch.setattr(pagein, "_HAVE_MADVISE", False)
    buffer = np.zeros(2 * PAGE, np.uint8)
    assert pagein.read_ahead(buffer, np.array([buffer.ctypes.data]), np.array([buffer.ctypes.data + PAGE])) == 0


def test_residency_probes_fall_back_without_mincore(monkeypatch):
    from memseq import bench
    from memseq.readahead import pagein

    monkeypatch.setattr(pagein, "_HAVE_MINCORE", False)
    monkeypatch.setitem(libc._BOUND, "mincore", None)
    buffer = np.ones(2 * PAGE, np.uint8)
    assert pagein.resident(buffer.ctypes.data) is False
    assert pagein._first_missing(0, PAGE) == 0  # cannot tell: read it
    assert np.isnan(bench.cached_fraction([]))


@linux
def test_populate_falls_back_to_advice_on_a_kernel_without_populate_read(monkeypatch):
    from memseq.readahead import pagein

    calls = []

    def old_kernel(address, length, advice):
        calls.append(advice)
        if advice == libc.MADV_POPULATE_READ:
            raise OSError(errno.EINVAL, os.strerror(errno.EINVAL))

    monkeypatch.setattr(pagein, "_madvise", old_kernel)
    monkeypatch.setattr(pagein, "_populate_works", True)
    assert pagein._populate(0, PAGE) is True
    assert calls == [libc.MADV_POPULATE_READ, mmap.MADV_WILLNEED] and pagein._populate_works is False
    calls.clear()
    assert pagein._populate(0, PAGE) is True
    assert calls == [mmap.MADV_WILLNEED]  # never asked again


@linux
def test_populate_drops_a_range_that_is_gone(monkeypatch):
    from memseq.readahead import pagein

    def gone(address, length, advice):
        raise OSError(errno.ENOMEM, os.strerror(errno.ENOMEM))

    monkeypatch.setattr(pagein, "_madvise", gone)
    monkeypatch.setattr(pagein, "_populate_works", True)
    assert pagein._populate(0, PAGE) is False and pagein._populate_works is True
    monkeypatch.setattr(pagein, "_first_missing", lambda start, stop: start)
    assert pagein._read_block(0, PAGE) is False
