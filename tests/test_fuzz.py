"""Hostile inputs: every outcome is a MemseqError or a legitimate open, nothing hangs or blows up.

A seeded campaign of mutated manifests, mutated ``.npy`` headers, special files in place
of dataset files (FIFOs, sockets, directories, devices, symlink loops, odd paths) and
permission-denied files opened as an unprivileged user. Each case runs under an alarm
(a hang fails the case) and the whole campaign under an address-space cap (an
allocation driven by hostile input fails with MemoryError, which is not a MemseqError).

CI runs a few thousand cases. The full campaign (10,000 manifest and 10,000 header
mutations, more special-file variants) runs with::

    MEMSEQ_FUZZ_FULL=1 python -m pytest tests/test_fuzz.py -s

``-s`` shows the per-category figures; ``MEMSEQ_FUZZ_SEED`` changes the seed.
"""

from __future__ import annotations

import collections
import contextlib
import copy
import errno
import json
import os
import random
import resource
import signal
import socket
import subprocess
import sys
from pathlib import Path
from typing import Callable

import numpy as np
import pytest
from conftest import subprocess_env

import memseq

FULL = os.environ.get("MEMSEQ_FUZZ_FULL") == "1"
SEED = int(os.environ.get("MEMSEQ_FUZZ_SEED", "20240611"))
MUTATIONS = 10_000 if FULL else 1_500
CASE_SECONDS = 10  # far more than any legitimate case takes: only a hang reaches it
MEMORY_HEADROOM = 1 << 30  # address space a case may add before it counts as unbounded

FIGURES: dict[str, collections.Counter] = {}


class Hang(BaseException):
    """A case did not finish within CASE_SECONDS (BaseException: no except clause swallows it)."""


def _alarm(signum, frame):
    raise Hang()


@contextlib.contextmanager
def campaign_limits():
    """A per-case alarm handler and an address-space cap for the whole campaign."""
    old_handler = signal.signal(signal.SIGALRM, _alarm)
    soft, hard = resource.getrlimit(resource.RLIMIT_AS)
    with open("/proc/self/status") as f:
        vm_size = next(int(line.split()[1]) * 1024 for line in f if line.startswith("VmSize:"))
    cap = vm_size + MEMORY_HEADROOM
    if hard != resource.RLIM_INFINITY:
        cap = min(cap, hard)
    resource.setrlimit(resource.RLIMIT_AS, (cap, hard))
    try:
        yield
    finally:
        resource.setrlimit(resource.RLIMIT_AS, (soft, hard))
        signal.setitimer(signal.ITIMER_REAL, 0)
        signal.signal(signal.SIGALRM, old_handler)


def read_everything(ds: memseq.Dataset) -> None:
    """What a user does with a dataset that opened: read every column, verify it."""
    for name in ds:
        col = ds[name]
        if isinstance(col, memseq.RaggedColumn):
            col[:]
            col.lengths
        else:
            np.asarray(col)
        if len(col):
            col[[len(col) - 1, 0]]
    ds.verify()


def outcome(action: Callable[[], object]) -> str:
    """Runs one case under the alarm; returns "opened" or the MemseqError's class name.

    Anything else (another exception, a hang, a MemoryError) is returned as
    "BAD <description>", which the campaign counts and the test fails on.
    """
    signal.setitimer(signal.ITIMER_REAL, CASE_SECONDS)
    try:
        result = action()
        if isinstance(result, memseq.Dataset):
            with result:
                read_everything(result)
        elif isinstance(result, memseq.Column):
            np.asarray(result)
        return "opened"
    except memseq.MemseqError as e:
        if len(str(e)) > 2000:
            return f"BAD unbounded message ({len(str(e))} chars) from {type(e).__name__}"
        return type(e).__name__
    except Hang:
        return "BAD hang"
    except BaseException as e:  # noqa: BLE001 - the point is to catch everything else
        return f"BAD {type(e).__name__}: {str(e)[:200]}"
    finally:
        signal.setitimer(signal.ITIMER_REAL, 0)


def record(category: str, results: list[tuple[str, str]]) -> None:
    counts = collections.Counter(result if not result.startswith("BAD") else "BAD" for _, result in results)
    FIGURES[category] = counts
    print(f"\n[fuzz] {category}: {len(results)} cases: " + ", ".join(f"{k} {v}" for k, v in sorted(counts.items())))
    bad = [(case, result) for case, result in results if result.startswith("BAD")]
    assert not bad, f"{len(bad)} of {len(results)} {category} cases escaped: {bad[:20]}"


# --------------------------------------------------------------------------- the dataset


@pytest.fixture(scope="module")
def base(tmp_path_factory):
    """A small two-shard dataset: its directory, manifest text and data files."""
    root = tmp_path_factory.mktemp("fuzz")
    path = root / "ds"
    memseq.save(
        path,
        {
            "image": np.arange(6 * 3 * 2, dtype=np.uint8).reshape(6, 3, 2),
            "label": np.arange(6, dtype=np.int64),
            "tokens": [np.arange(n, dtype=np.uint16) for n in (3, 0, 5, 1, 2, 4)],
        },
        shard_rows=3,
    )
    files = sorted(p for p in path.rglob("*.npy"))
    return path, (path / "memseq.json").read_text(), {p: p.read_bytes() for p in files}


def restore(path: Path, manifest: str, files: dict[Path, bytes]) -> None:
    (path / "memseq.json").write_text(manifest)
    for p, data in files.items():
        if p.read_bytes() != data:
            p.write_bytes(data)


# --------------------------------------------------------------------------- manifests

# Hostile JSON values, as text: some cannot be produced by json.dumps (huge ints, NaN).
HOSTILE_VALUES = [
    "null", "true", "false", "0", "-1", "1.5", "1e999", "-1e999", "NaN", "Infinity",
    str(2**63 - 1), str(2**63), str(2**64), "-" + str(2**63), "9" * 25, "9" * 5000, "1" + "0" * 100_000,
    '""', '"\\n"', '"a\\nb"', '"\\u0000"', '"\\ud800"', '"\\udc80"', '"\\u00e9"', '"' + "x" * 100_000 + '"',
    '"' + "y" * 5000 + '"', '"../x"', '"/etc/passwd"', '"image.npy\\n"', '"shard-00000/../../x"', '"label.npy/x"',
    '"shard-00000"', '"memseq.json"', '"."', '"./image.npy"', '"loop"', '"fifo"', '"crc32:00000000"',
    '"crc32:00000000\\n"', '"CRC32:DEADBEEF"', '"|u1"', '"<i8"', '">f8"', '"|O"', '"<U5"', '"V8"', '"i4,("',
    '"[(\'a\', \'<i4\')]"', '"ragged"', '"fixed"', "[]", "{}", "[-1]", "[0]", "[2, 3]", "[3, 2]", "[1e3]",
    "[" + ", ".join(["2"] * 70) + "]", "[4294967296, 4294967296, 4294967296]", "[true]", '["3"]',
    "[" * 100_000 + "]" * 100_000, "[" * 3000 + "]" * 3000, '{"a": ' * 5000 + "1" + "}" * 5000,
]
KEYS = ["format", "version", "num_rows", "fields", "shards", "files", "path", "checksum", "dtype", "shape",
        "layout", "extra", "image", "label", "", "\n", "\u00e9"]


def _nodes(doc, prefix=()):
    """Every (path, value) in a JSON document."""
    yield prefix, doc
    if isinstance(doc, dict):
        for k, v in doc.items():
            yield from _nodes(v, (*prefix, k))
    elif isinstance(doc, list):
        for i, v in enumerate(doc):
            yield from _nodes(v, (*prefix, i))


def _set(doc, path, value):
    if not path:
        return value
    node = doc
    for key in path[:-1]:
        node = node[key]
    node[path[-1]] = value
    return doc


def mutate_manifest(text: str, rnd: random.Random) -> str:
    """One random mutation of a manifest: structural (a hostile value, a key added or dropped) or bytewise."""
    kind = rnd.random()
    if kind < 0.6:
        doc = json.loads(text)
        marker = "\x00HOSTILE\x00"
        nodes = list(_nodes(doc))
        where, value = rnd.choice(nodes)
        roll = rnd.random()
        if roll < 0.7 or not isinstance(value, (dict, list)):
            doc = _set(doc, where, marker)
            return json.dumps(doc, indent=2).replace(json.dumps(marker), rnd.choice(HOSTILE_VALUES), 1)
        if isinstance(value, dict):
            if value and roll < 0.85:
                del value[rnd.choice(list(value))]
            else:
                value[rnd.choice(KEYS)] = marker
        elif value and roll < 0.85:
            del value[rnd.randrange(len(value))]
        else:
            value.append(marker if rnd.random() < 0.5 else copy.deepcopy(rnd.choice([v for _, v in nodes])))
        return json.dumps(doc, indent=2).replace(json.dumps(marker), rnd.choice(HOSTILE_VALUES), 1)
    data = bytearray(text.encode())
    for _ in range(rnd.randint(1, 4)):
        op = rnd.random()
        i = rnd.randrange(len(data) + 1)
        if op < 0.35 and data:
            data[min(i, len(data) - 1)] = rnd.randrange(256)
        elif op < 0.55:
            del data[i : i + rnd.randint(1, 40)]
        elif op < 0.75:
            data[i:i] = rnd.choice([b"{", b"}", b"[", b"]", b'"', b",", b":", b"\\", b"\x00", b"\xff\xfe", b"\n", b"-",
                                    b"1e400", b"99999999999999999999999", rnd.randbytes(rnd.randint(1, 8))])
        elif op < 0.9:
            j = rnd.randrange(len(data) + 1)
            data[i:i] = data[min(i, j) : max(i, j)]
        else:
            del data[i:]
    return data.decode("latin1")


def test_mutated_manifests_give_memseq_errors_or_open(base):
    path, manifest, files = base
    # Things a mutated path may point at inside the dataset.
    os.symlink("loop", path / "loop")
    os.mkfifo(path / "fifo")
    rnd = random.Random(SEED)
    results = []
    with campaign_limits():
        for i in range(MUTATIONS):
            text = mutate_manifest(manifest, rnd)
            (path / "memseq.json").write_bytes(text.encode("latin1", "surrogatepass"))
            results.append((f"#{i}: {text[:300]!r}", outcome(lambda: memseq.open(path))))
    restore(path, manifest, files)
    os.remove(path / "loop")
    os.remove(path / "fifo")
    record("manifest mutations", results)
    assert len({r for _, r in results}) >= 4  # the campaign reaches several kinds of refusal


# --------------------------------------------------------------------------- .npy headers

HOSTILE_HEADERS = [
    "{'descr': '<i8', 'fortran_order': False, 'shape': ((((, }",
    "{'descr': '<i8', 'fortran_order': False, 'shape': (3,), ",
    "{'descr': '<i8', 'fortran_order': False, 'shape': (3,)}}}}",
    "{'descr': '<i8', 'fortran_order': False, 'shape': (" + "(" * 5000 + ")" * 5000 + "), }",
    "{'descr': '<i8', 'fortran_order': False, 'shape': (" + "9" * 5000 + ",), }",
    "{'descr': '<i8', 'fortran_order': False, 'shape': (10**100,), }",
    "{'descr': '<i8', 'fortran_order': False, 'shape': (-3,), }",
    "{'descr': '<i8', 'fortran_order': False, 'shape': (2**62, 2**62), }",
    "{'descr': '<i8', 'fortran_order': False, 'shape': (4611686018427387904, 4611686018427387904), }",
    "{'descr': '<i8', 'fortran_order': False, 'shape': (" + "1, " * 70 + "), }",
    "{'descr': '<i8', 'fortran_order': False, 'shape': (3.0,), }",
    "{'descr': '<i8', 'fortran_order': False, 'shape': (True,), }",
    "{'descr': '<i8', 'fortran_order': False, 'shape': [3], }",
    "{'descr': '<i8', 'fortran_order': True, 'shape': (3,), }",
    "{'descr': '<i8', 'fortran_order': 1, 'shape': (3,), }",
    "{'descr': '|O', 'fortran_order': False, 'shape': (3,), }",
    "{'descr': '<U5', 'fortran_order': False, 'shape': (3,), }",
    "{'descr': [('a', '<i4'), ('b', '<i4')], 'fortran_order': False, 'shape': (3,), }",
    "{'descr': [('a', '<i4', (2**40,))], 'fortran_order': False, 'shape': (3,), }",
    "{'descr': 'i4,(', 'fortran_order': False, 'shape': (3,), }",
    "{'descr': None, 'fortran_order': False, 'shape': (3,), }",
    "{'descr': '<i8', 'shape': (3,), }",
    "{'descr': '<i8', 'fortran_order': False, 'shape': (3,), 'extra': 1, }",
    "[1, 2, 3]", "", "'" * 3, "\\", "lambda: 0", "__import__('os').system('true')", "{1: 2}",
    "{'descr': '<i8', 'fortran_order': False, 'shape': (3,), }" + "\x00" * 10,
]


def _header_end(data: bytes) -> int:
    return 10 + int.from_bytes(data[8:10], "little")


def mutate_header(data: bytes, rnd: random.Random) -> bytes:
    """One random mutation of a .npy file's header (the data bytes stay as they are)."""
    end = _header_end(data)
    body = data[end:]
    kind = rnd.random()
    if kind < 0.35:  # a hostile header dict, re-framed properly
        text = rnd.choice(HOSTILE_HEADERS).encode("latin1") + b"\n"
        version = rnd.choice([b"\x01\x00", b"\x02\x00", b"\x03\x00"])
        size = len(text).to_bytes(2 if version == b"\x01\x00" else 4, "little")
        return b"\x93NUMPY" + version + size + text + body
    header = bytearray(data[:end])
    if kind < 0.5:  # the length or version fields
        i = rnd.choice([6, 7, 8, 9])
        header[i] = rnd.randrange(256)
        return bytes(header) + body
    if kind < 0.6:  # a huge claimed header (version 2: 4-byte length)
        return b"\x93NUMPY\x02\x00" + rnd.choice([2**31 - 1, 2**32 - 1, 70_000, 10**6]).to_bytes(4, "little") + bytes(header[10:]) + body
    if kind < 0.7:  # truncated inside the header
        return bytes(header[: rnd.randrange(end)])
    for _ in range(rnd.randint(1, 4)):  # bytes of the dict text changed
        i = rnd.randrange(10, end)
        header[i] = rnd.choice(b"{}[](),:'\"0123456789-\\\x00\xff LeTrue") if rnd.random() < 0.7 else rnd.randrange(256)
    return bytes(header) + body


def test_mutated_npy_headers_give_memseq_errors_or_open(base):
    path, manifest, files = base
    rnd = random.Random(SEED + 1)
    targets = list(files)
    results = []
    with campaign_limits():
        for i in range(MUTATIONS):
            target = rnd.choice(targets)
            mutated = mutate_header(files[target], rnd)
            target.write_bytes(mutated)
            results.append((f"#{i} {target.name}: {mutated[:120]!r}", outcome(lambda: memseq.open(path))))
            target.write_bytes(files[target])
    restore(path, manifest, files)
    record(".npy header mutations", results)


def test_mutated_offsets_give_memseq_errors_or_open(base):
    # Offsets are data, not header: every value is a possible read position. Random
    # values (huge, negative, backwards) must give CorruptFileError, never a read
    # outside the values file.
    path, manifest, files = base
    rnd = random.Random(SEED + 2)
    targets = [p for p in files if p.name.endswith(".offsets.npy")]
    values = [0, 1, -1, 2, 3, 5, 2**31, 2**62, -(2**63), 2**63 - 1]
    results = []
    with campaign_limits():
        for i in range(MUTATIONS):
            target = rnd.choice(targets)
            offsets = np.frombuffer(files[target][_header_end(files[target]):], "<i8").copy()
            for _ in range(rnd.randint(1, 3)):
                offsets[rnd.randrange(len(offsets))] = rnd.choice(values)
            target.write_bytes(files[target][: _header_end(files[target])] + offsets.tobytes())
            results.append((f"#{i} {target.parent.name}: {offsets.tolist()}", outcome(lambda: memseq.open(path))))
            target.write_bytes(files[target])
    restore(path, manifest, files)
    record("offsets mutations", results)
    assert {r for _, r in results} >= {"CorruptFileError"}


# --------------------------------------------------------------------------- special files


def _make_socket(p: Path) -> None:
    s = socket.socket(socket.AF_UNIX)
    cwd = os.getcwd()
    os.chdir(p.parent)  # AF_UNIX paths are limited to 108 bytes: bind a relative name
    try:
        s.bind(p.name)
    finally:
        os.chdir(cwd)
        s.close()  # the socket file stays


def _replace(p: Path, kind: str, tmp: Path) -> None:
    """Puts a special file of ``kind`` at ``p`` (which must not exist)."""
    if kind == "fifo":
        os.mkfifo(p)
    elif kind == "socket":
        _make_socket(p)
    elif kind == "directory":
        p.mkdir()
    elif kind == "dev-zero":
        os.symlink("/dev/zero", p)
    elif kind == "dev-null":
        os.symlink("/dev/null", p)
    elif kind == "symlink-loop":
        os.symlink(p.name, p)
    elif kind == "symlink-loop-2":
        os.symlink(p.name + ".b", p)
        os.symlink(p.name, p.with_name(p.name + ".b"))
    elif kind == "dangling-symlink":
        os.symlink(tmp / "nowhere", p)
    elif kind == "empty":
        p.write_bytes(b"")
    else:
        raise AssertionError(kind)


SPECIAL_KINDS = ["fifo", "socket", "directory", "dev-zero", "dev-null", "symlink-loop", "symlink-loop-2",
                 "dangling-symlink", "empty"]


def _special_cases(tmp: Path) -> list[tuple[str, Callable[[], object]]]:
    """(name, action) for every special file in every place a file is read, and odd paths."""
    cases = []
    for kind in SPECIAL_KINDS:
        for where in ("memseq.json", "label.npy", "shard-00001/image.npy"):
            def action(kind=kind, where=where):
                ds = tmp / f"{kind}-{where.replace('/', '-')}"
                memseq.save(ds, {"image": np.zeros((4, 2), np.uint8), "label": np.arange(4)},
                            shard_rows=2 if "shard" in where else None)
                target = ds / where
                if target.exists():
                    os.remove(target)
                _replace(target, kind, tmp)
                return memseq.open(ds)
            cases.append((f"{kind} as {where}", action))

        def raw_action(kind=kind):
            target = tmp / f"raw-{kind}"
            _replace(target, kind, tmp)
            return memseq.open_raw(target, dtype="uint8", shape=(-1,))
        cases.append((f"{kind} to open_raw", raw_action))

        def dataset_dir_action(kind=kind):
            target = tmp / f"dir-{kind}"
            _replace(target, kind, tmp)
            return memseq.open(target)
        cases.append((f"{kind} as the dataset directory", dataset_dir_action))

    for name, arg in [
        ("None", None), ("int", 3), ("NUL in path", "ds\x00x"), ("surrogate in path", "ds\ud800"),
        ("too long path", "x" * 5000), ("too long component", "y" * 300), ("deep path", "/".join(["d"] * 3000)),
        ("through a file", "file/ds"), ("empty path", ""), ("bytes path", b"nowhere"),
    ]:
        def odd_open(arg=arg):
            (tmp / "file").touch()
            cwd = os.getcwd()
            os.chdir(tmp)
            try:
                return memseq.open(arg)
            finally:
                os.chdir(cwd)
        cases.append((f"open({name})", odd_open))

        def odd_raw(arg=arg):
            cwd = os.getcwd()
            os.chdir(tmp)
            try:
                return memseq.open_raw(arg, dtype="uint8", shape=(-1,))
            finally:
                os.chdir(cwd)
        cases.append((f"open_raw({name})", odd_raw))

        if name == "deep path":
            continue  # a writer would create the first ~2,000 levels before ENAMETOOLONG: nothing gains
        def odd_write(arg=arg):
            cwd = os.getcwd()
            os.chdir(tmp)
            try:
                return memseq.save(arg, {"x": np.zeros(2)}, overwrite=True)
            finally:
                os.chdir(cwd)
        cases.append((f"save({name})", odd_write))
    return cases


def test_special_files_and_odd_paths_are_refused_without_blocking(tmp_path):
    results = []
    with campaign_limits():
        for name, action in _special_cases(tmp_path):
            results.append((name, outcome(action)))
    by_case = dict(results)
    record("special files and paths", results)
    # Nothing blocked, and the specific refusals are the named ones.
    assert by_case["fifo as memseq.json"] == by_case["fifo as label.npy"] == by_case["fifo to open_raw"] == "NotRegularFileError"
    assert by_case["socket as label.npy"] == by_case["directory as shard-00001/image.npy"] == "NotRegularFileError"
    assert by_case["dev-zero as memseq.json"] == by_case["dev-zero to open_raw"] == "NotRegularFileError"
    assert by_case["symlink-loop as memseq.json"] == by_case["symlink-loop to open_raw"] == "FileAccessError"
    assert by_case["open(None)"] == by_case["open(NUL in path)"] == by_case["open(surrogate in path)"] == "SchemaError"
    assert by_case["open(too long path)"] == "FileAccessError"
    assert by_case["open(through a file)"] == "DatasetNotFoundError"


def test_not_regular_file_error_names_the_path_and_the_kind(tmp_path):
    os.mkfifo(tmp_path / "pipe")
    with pytest.raises(memseq.NotRegularFileError, match=r"pipe: raw file is a FIFO \(named pipe\), not a regular file"):
        memseq.open_raw(tmp_path / "pipe", dtype="uint8", shape=(-1,))
    (tmp_path / "ds").mkdir()
    os.symlink("/dev/zero", tmp_path / "ds" / "memseq.json")
    with pytest.raises(memseq.NotRegularFileError, match=r"memseq\.json: manifest is a character device"):
        memseq.open(tmp_path / "ds")
    with pytest.raises(memseq.FileAccessError, match="Too many levels of symbolic links") as info:
        os.symlink("loop", tmp_path / "loop")
        memseq.open_raw(tmp_path / "loop", dtype="uint8", shape=(-1,))
    assert info.value.errno == errno.ELOOP and info.value.filename == str(tmp_path / "loop")


# --------------------------------------------------------------------------- permissions

PERMISSION_SCRIPT = """
import json, os, pwd, sys
import numpy as np
import memseq

root = sys.argv[1]
nobody = pwd.getpwnam("nobody")
os.setgid(nobody.pw_gid)
os.setgroups([])
os.setuid(nobody.pw_uid)
cases = {
    "unreadable manifest": lambda: memseq.open(os.path.join(root, "no-manifest")),
    "unreadable data file": lambda: memseq.open(os.path.join(root, "no-data")),
    "untraversable directory": lambda: memseq.open(os.path.join(root, "no-exec")),
    "unreadable raw file": lambda: memseq.open_raw(os.path.join(root, "raw"), dtype="uint8", shape=(-1,)),
    "unwritable parent": lambda: memseq.save(os.path.join(root, "locked", "new"), {"x": np.zeros(3)}),
    "readable control": lambda: len(memseq.open(os.path.join(root, "ok"))),
}
out = {}
for name, case in cases.items():
    try:
        case()
        out[name] = "opened"
    except memseq.MemseqError as e:
        out[name] = [type(e).__name__, isinstance(e, PermissionError), e.errno if isinstance(e, OSError) else None, str(e)]
    except BaseException as e:
        out[name] = ["BAD " + type(e).__name__, False, None, str(e)[:300]]
print(json.dumps(out))
"""


@pytest.mark.skipif(os.geteuid() != 0, reason="needs root to drop privileges to 'nobody' in a child")
def test_permission_denied_as_an_unprivileged_user_is_a_named_error(tmp_path):
    import tempfile

    root = Path(tempfile.mkdtemp(prefix="memseq-perm-", dir="/tmp"))  # pytest's tmp dirs are 0700
    try:
        os.chmod(root, 0o755)
        data = {"x": np.arange(4)}
        for name in ("no-manifest", "no-data", "no-exec", "ok"):
            memseq.save(root / name, data)
            for p in (root / name).rglob("*"):
                os.chmod(p, 0o644)
            os.chmod(root / name, 0o755)
        os.chmod(root / "no-manifest" / "memseq.json", 0)
        os.chmod(root / "no-data" / "x.npy", 0)
        os.chmod(root / "no-exec", 0o600)
        (root / "raw").write_bytes(b"\0" * 8)
        os.chmod(root / "raw", 0)
        (root / "locked").mkdir(mode=0o555)
        proc = subprocess.run([sys.executable, "-c", PERMISSION_SCRIPT, str(root)], capture_output=True, text=True,
                              env=subprocess_env(), timeout=120)
        assert proc.returncode == 0, proc.stderr
        out = json.loads(proc.stdout)
    finally:
        subprocess.run(["rm", "-rf", str(root)], check=False)
    assert out.pop("readable control") == "opened"
    results = [(name, r if r == "opened" else r[0]) for name, r in out.items()]
    record("permission denied (as nobody)", [(n, r if not r.startswith("BAD") else r) for n, r in results])
    for name, (cls, is_permission, code, message) in out.items():
        assert cls == "DatasetPermissionError" and is_permission and code == errno.EACCES, (name, out[name])
        assert "permission denied" in message, message
