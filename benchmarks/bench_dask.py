"""Writing a Dask array: memseq.save (threads, 2-process LocalCluster) against to_npy_stack and the old path.

Usage:
    python benchmarks/bench_dask.py [--dir DIR] [--size-gb 4] [--repeats 3]

The array: ``size_gb`` of float32 rows of 1024 values, 64 MiB chunks, each chunk
computed with some CPU work (random numbers, then ``sin``/``sqrt`` arithmetic).
Cases, each in a fresh process, output deleted after each run:

- ``sequential``: today's path before Dask support, ``memseq.Writer.append`` of
  64 MiB slices (what ``memseq.save`` did: it streams the array piece by piece in
  one process, computing each 16 MiB piece separately, so chunks are recomputed);
- ``to_npy_stack``: ``dask.array.to_npy_stack`` on the threaded scheduler (one
  ``.npy`` per chunk, no checksums, no fsync, no atomic commit), and the same
  followed by an fsync of its files (memseq.save fsyncs before it commits);
- ``save threads``: ``memseq.save`` on Dask's threaded scheduler;
- ``save LocalCluster``: ``memseq.save`` inside a ``dask.distributed`` LocalCluster of
  2 worker processes (cluster start-up excluded).

Targets: ``memseq.save`` >= 1.5x the sequential path, and no slower than ``to_npy_stack``.
"""

from __future__ import annotations

import argparse
import os
import shutil
import statistics
import sys
import tempfile
import time

import numpy as np

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))

import _common  # noqa: E402

ROW = 1024
CHUNK_ROWS = 16384  # 64 MiB of float32 rows
CASES = {
    "sequential": "sequential Writer path (before)",
    "to_npy_stack": "dask.array.to_npy_stack (threads)",
    "to_npy_stack_sync": "to_npy_stack + fsync of its files",
    "save_threads": "memseq.save, threaded scheduler",
    "save_cluster": "memseq.save, LocalCluster 2 processes",
}


def _work(block):
    return (np.sin(block) * np.sqrt(block + 1.0)).astype(np.float32)


def make_array(size_gb: float):
    import dask.array as da

    rows = int(size_gb * 1e9) // (ROW * 4)
    x = da.random.default_rng(0).random((rows, ROW), chunks=(CHUNK_ROWS, ROW), dtype=np.float32)
    return x.map_blocks(_work, dtype=np.float32)


def run_case(case: str, size_gb: float, directory: str) -> float:
    import dask.array as da

    import memseq

    x = make_array(size_gb)
    target = os.path.join(directory, case)
    shutil.rmtree(target, ignore_errors=True)
    cluster = client = None
    if case == "save_cluster":
        from distributed import Client, LocalCluster

        cluster = LocalCluster(n_workers=2, threads_per_worker=1, processes=True, host="127.0.0.1", dashboard_address=None)
        client = Client(cluster)
    try:
        t = time.perf_counter()
        if case == "sequential":
            step = 16 * 2**20 * 4 // (ROW * 4)  # memseq.save's old loop
            with memseq.Writer(target, {"x": ("float32", (ROW,))}) as w:
                for start in range(0, x.shape[0], step):
                    w.append({"x": x[start : start + step]})
        elif case.startswith("to_npy_stack"):
            da.to_npy_stack(target, x, axis=0)
            if case == "to_npy_stack_sync":  # the durability memseq.save pays (it fsyncs before committing)
                for name in os.listdir(target):
                    fd = os.open(os.path.join(target, name), os.O_RDONLY)
                    os.fsync(fd)
                    os.close(fd)
        else:
            memseq.save(target, {"x": x})
        seconds = time.perf_counter() - t
    finally:
        if client is not None:
            client.close()
            cluster.close()
        shutil.rmtree(target, ignore_errors=True)
    return seconds


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--dir", default=None, help="where to write (a temporary directory under /tmp by default)")
    parser.add_argument("--size-gb", type=float, default=4.0)
    parser.add_argument("--repeats", type=int, default=3)
    parser.add_argument("--case", choices=sorted(CASES), help=argparse.SUPPRESS)
    args = parser.parse_args()
    if args.case:
        _common.print_result(run_case(args.case, args.size_gb, args.dir))
        return
    directory = tempfile.mkdtemp(prefix="memseq-bench-dask-", dir=args.dir)

    def one(case: str) -> float | None:
        command = [sys.executable, __file__, "--dir", directory, "--size-gb", str(args.size_gb), "--case", case]
        return _common.run_case(command, CASES[case], check=False)

    try:
        # Rounds: every case once per round, so a slow spell of this shared machine
        # hits all cases alike; medians over the rounds.
        runs = _common.rounds(list(CASES), args.repeats, one)
    finally:
        shutil.rmtree(directory, ignore_errors=True)
    times = {case: statistics.median(r) for case, r in runs.items() if r}
    for case, r in runs.items():
        print(f"  ({CASES[case]}: {', '.join(f'{x:.1f}' for x in r)} s)", file=sys.stderr)
    gb = int(args.size_gb * 1e9) // (ROW * 4) * ROW * 4 / 1e9
    print(f"bench_dask: {gb:.2f} GB float32 array, 64 MiB chunks with CPU work each, {os.cpu_count()} cores, median of {args.repeats}")
    seq, stack = times.get("sequential"), times.get("to_npy_stack")
    for case, seconds in times.items():
        parts = [f"{CASES[case]:40s} {seconds:7.1f} s  {gb / seconds:6.2f} GB/s"]
        if seq:
            parts.append(f"{seq / seconds:5.2f}x sequential")
        if stack:
            parts.append(f"{stack / seconds:5.2f}x to_npy_stack")
        print("  " + "  ".join(parts))
    for case in ("save_threads", "save_cluster"):
        if case in times and seq and stack:
            ok = seq / times[case] >= 1.5 and times[case] <= stack
            print(f"  target {CASES[case]}: >= 1.5x sequential and no slower than to_npy_stack: {'met' if ok else 'NOT met'}")


if __name__ == "__main__":
    main()
