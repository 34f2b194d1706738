"""Hot reads with the SIGBUS guard against the plain mapping copy and a process_vm_readv copy, in one run.

Usage:
    python benchmarks/bench_safe_reads.py [--dir DIR] [--rounds 3] [--repeats 5] [--batches 200]

Three ways to copy rows out of memseq's mappings (see ``memseq/_sigbus.py``):

- ``mapping``: the mapping copy with the guard off (``MEMSEQ_SIGBUS_GUARD=0``): numpy
  copies straight from the mapping, and a file truncated during the copy kills the
  process with SIGBUS (memseq before the guard);
- ``guarded``: the same copy with the guard on (the default): a fault in a mapping
  becomes CorruptFileError;
- ``process_vm_readv``: rows copied by the kernel, one ``process_vm_readv`` call on
  the own process per 1,024 rows (contiguous rows merged into one iovec), which
  returns EFAULT where a plain copy would fault; no signal handler needed.

Cases, each on a hot page cache, batch 256: ``seq[i]`` of 12 KiB rows (100k rows,
full shuffle and block shuffle), ``seq[i]`` of 64-byte rows (1M rows, full shuffle),
and slices ``ds["image"][a:a + 256]`` of 12 KiB rows. Every (case, path) runs in a fresh
process that times ``--repeats`` passes of ``--batches`` batches (ten times as many
of 64-byte rows) after a warm-up pass and reports their median; the processes are interleaved over ``--rounds`` rounds, and
the figures printed are medians over rounds of each path's rate and of its ratio to
``mapping`` in the same round (the machine's load drifts between rounds more than the
paths differ).
"""

from __future__ import annotations

import argparse
import os
import statistics
import sys
import tempfile
import time

import numpy as np

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
import _common  # noqa: E402

BATCH = 256
PATHS = ("mapping", "guarded", "process_vm_readv")
CASES = ("seq full 12KiB", "seq block 12KiB", "seq full 64B", "slice 12KiB")
IOV_MAX = 1024


def build(directory: str) -> dict[str, str]:
    """The two datasets: 100k rows of 12 KiB images (+ labels), 1M rows of 64 bytes (+ labels)."""
    import memseq

    big = os.path.join(directory, "rows-12k")
    _common.build_images(big, 100_000)
    small = os.path.join(directory, "rows-64b")
    try:
        ok = len(memseq.open(small)) == 1_000_000
    except memseq.MemseqError:
        ok = False
    if not ok:
        rng = np.random.default_rng(0)
        memseq.save(small, {"x": rng.integers(0, 256, (1_000_000, 64), dtype=np.uint8), "label": np.arange(1_000_000) % 10},
                    overwrite=True)
    return {"12k": big, "64b": small}


# --------------------------------------------------------------------------- the process_vm_readv copy


def use_process_vm_readv() -> None:
    """Replaces Column's copies out of the mappings by process_vm_readv on the own process."""
    import ctypes

    from memseq.errors import CorruptFileError
    from memseq.read import columns
    from memseq.util import libc

    call = libc.bind("process_vm_readv", ctypes.c_ssize_t,
                     [ctypes.c_int, ctypes.c_void_p, ctypes.c_ulong, ctypes.c_void_p, ctypes.c_ulong, ctypes.c_ulong])
    pid = os.getpid()

    def copy(part, name, starts: np.ndarray, lengths: np.ndarray, out: np.ndarray) -> None:
        """Copies the mapped byte ranges (offsets from the data start) one after another into ``out``."""
        base = part.address()
        remote = np.empty((len(starts), 2), np.uint64)
        remote[:, 0] = starts + base
        remote[:, 1] = lengths
        local = np.empty(2, np.uint64)
        done = 0
        dst = out.ctypes.data
        for a in range(0, len(remote), IOV_MAX):
            piece = remote[a : a + IOV_MAX]
            want = int(piece[:, 1].sum())
            local[0], local[1] = dst + done, want
            got = call(pid, local.ctypes.data, 1, piece.ctypes.data, len(piece), 0)
            if got != want:
                part.check_size(name)  # names the file: shorter, or replaced
                raise CorruptFileError(f"{part.path} (field {name!r}): the file was truncated while it was being read.")
            done += want
        part.check_size(name)

    def runs(idx: np.ndarray, row: int) -> tuple[np.ndarray, np.ndarray]:
        """Ascending rows as byte ranges, consecutive rows merged (a block shuffle's batch is a few runs)."""
        if len(idx) == 0:
            return np.empty(0, np.int64), np.empty(0, np.int64)
        new = np.flatnonzero(np.diff(idx) != 1) + 1
        first = np.concatenate([[0], new])
        count = np.diff(np.concatenate([first, [len(idx)]]))
        return idx[first] * row, count * row

    def gather_sorted(self, idx, out):
        parts = self.parts()
        bounds = np.searchsorted(idx, self._starts)
        for p, part in enumerate(parts):
            a, b = int(bounds[p]), int(bounds[p + 1])
            if a < b:
                starts, lengths = runs(np.asarray(idx[a:b], np.int64) - int(self._starts[p]), self._row_nbytes)
                copy(part, self.name, starts, lengths, out[a:b])

    def read_range(self, start, stop):
        out = columns.allocate((stop - start, *self.row_shape), self.dtype, self.name)
        for p, part in enumerate(self.parts()):
            lo, hi = max(start, int(self._starts[p])), min(stop, int(self._starts[p + 1]))
            if lo < hi:
                base = int(self._starts[p])
                step = max(1, (1 << 30) // max(self._row_nbytes, 1))  # a call copies at most 2 GiB
                for a in range(lo, hi, step):
                    b = min(hi, a + step)
                    copy(part, self.name, np.array([(a - base) * self._row_nbytes]), np.array([(b - a) * self._row_nbytes]),
                         out[a - start : b - start])
        return out

    columns.Column.gather_sorted = gather_sorted
    columns.Column.read_range = read_range


# --------------------------------------------------------------------------- one case, one process


def run_case(case: str, path: str, directory: str, batches: int, repeats: int) -> dict:
    import memseq

    if path == "process_vm_readv":
        use_process_vm_readv()
    data = build(directory)
    ds = memseq.open(data["64b" if "64B" in case else "12k"])
    x, y = ("x", "label") if "64B" in case else ("image", "label")
    nbytes = BATCH * (ds[x].nbytes // len(ds) + 8)
    if case.startswith("seq"):
        shuffle = "block" if "block" in case else True
        reader = memseq.MemmapSequence(ds, x=x, y=y, batch_size=BATCH, seed=0, shuffle=shuffle, readahead=False)
        count = len(reader)

        def one(i):
            reader[i]
    else:
        column = ds[x]
        count = len(ds) // BATCH

        def one(i):
            column[i * BATCH : (i + 1) * BATCH]

    if "64B" in case:
        batches *= 10  # 16 KiB batches: a pass of --batches would be over in milliseconds
    rng = np.random.default_rng(0)
    for i in rng.integers(0, count, batches):  # warm-up: page tables, buffers
        one(int(i))
    rates = []
    for _ in range(repeats):
        picks = rng.integers(0, count, batches).tolist()
        t = time.perf_counter()
        for i in picks:
            one(i)
        rates.append(batches * nbytes / (time.perf_counter() - t) / 1e9)
    from memseq.read import sigbus as _sigbus

    return {"rate": statistics.median(rates), "guard": _sigbus.ACTIVE}


def main(argv=None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--dir", default=os.path.join(tempfile.gettempdir(), "memseq-bench-safe-reads"))
    parser.add_argument("--rounds", type=int, default=3)
    parser.add_argument("--repeats", type=int, default=5)
    parser.add_argument("--batches", type=int, default=200)
    parser.add_argument("--case", help=argparse.SUPPRESS)
    parser.add_argument("--path", help=argparse.SUPPRESS)
    args = parser.parse_args(argv)
    if args.case:
        _common.print_result(run_case(args.case, args.path, args.dir, args.batches, args.repeats))
        return 0

    data = build(args.dir)
    for directory in data.values():
        _common.warm(_common.data_files(directory))
    rates: dict[tuple[str, str], list[float]] = {(c, p): [] for c in CASES for p in PATHS}
    for r in range(args.rounds):
        for case in CASES:
            # The order of the paths turns every round, so that load drifting during a
            # round does not always favour the same path.
            for path in PATHS[r % len(PATHS) :] + PATHS[: r % len(PATHS)]:
                env = dict(os.environ, MEMSEQ_SIGBUS_GUARD="0" if path == "mapping" else "1")
                out = _common.run_case(
                    [sys.executable, __file__, "--case", case, "--path", path, "--dir", args.dir,
                     "--batches", str(args.batches), "--repeats", str(args.repeats)],
                    f"{case} / {path}", env=env,
                )
                if out["guard"] != (path != "mapping"):
                    raise SystemExit(f"{case} / {path}: the guard is {'on' if out['guard'] else 'off'}")
                rates[case, path].append(out["rate"])
                print(f"round {r + 1} {case:<16} {path:<17} {out['rate']:6.2f} GB/s", file=sys.stderr, flush=True)
    print(f"\nhot reads, batch {BATCH}: GB/s, median of {args.rounds} rounds (each the median of {args.repeats} "
          "repeats), and in brackets the median over rounds of the ratio to the mapping copy of the same round:")
    print(f"  {'case':<16} " + "  ".join(f"{p:>22}" for p in PATHS))
    for case in CASES:
        cells = []
        for path in PATHS:
            rate = statistics.median(rates[case, path])
            ratio = statistics.median(a / b for a, b in zip(rates[case, path], rates[case, "mapping"]))
            cells.append(f"{rate:7.2f} ({ratio:5.2f}x)".rjust(22))
        print(f"  {case:<16} " + "  ".join(cells))
    return 0


if __name__ == "__main__":
    sys.exit(main())
