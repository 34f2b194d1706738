"""Where a cold block-shuffled epoch spends its time: the disk, or the reader's CPU.

Usage::

    python benchmarks/bench_block_reads.py [--dir DIR] [--repeats 3]

The same dataset as ``bench_cold.py`` (200,000 rows of 12 KiB, 2.46 GB). Every case
runs in a fresh process, with the page cache emptied first exactly as ``bench_cold.py``
does (and checked with ``mincore``); each round runs every case once, and medians over
the rounds are printed with ratios to the sequential read of the same round.

- ``numpy sequential``: ``memmap[i:i+B]`` copies, the baseline of ``bench_cold.py``.
- ``blocks, no reader``: every 4 MiB block of the file, in random order, read into the
  page cache by 4 threads with ``sendfile`` to ``/dev/null`` (nothing copied, nothing
  mapped): what the disk gives block shuffle's reads when no one uses the data.
- ``seq[i] block + readahead``, cold and hot: one epoch of ``MemmapSequence`` with
  ``shuffle="block"``; besides GB/s, the reading thread's own CPU seconds
  (``time.thread_time``). Hot means the file is in the page cache but not yet mapped
  by the process, so both take the same page faults (counted) and copy the same bytes.
  The sequential read is also timed hot, for the same comparison.
- ``private buffers`` (buffered or ``O_DIRECT``): the same epoch, same order and
  readahead bound, built another way: 4 threads ``pread`` each block, as its first
  batch comes within the bound, into a slot of one private anonymous arena (slots are
  reused once a block's last batch is built), and the reading thread gathers every
  batch from the arena with one ``np.take``, never touching the mapping. Buffered
  reads copy from the page cache; ``O_DIRECT`` reads go from the disk straight to the
  arena and leave the page cache alone. Not how memseq reads: a measured alternative
  (each process would hold its own arena, about a window plus the bound; its peak
  ``RssAnon`` above the case's start is printed).
- ``first touch``: pages put in the page cache by those block reads, or by one
  sequential stream, then mapped (``MADV_POPULATE_READ``, so no faults follow) and read
  twice, one load per 64-byte line: the first pass's extra CPU over the second is the
  cost of first touching freshly read pages.
"""

from __future__ import annotations

import argparse
import concurrent.futures
import mmap
import os
import resource
import statistics
import sys
import tempfile
import time

import numpy as np

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))

import _common  # noqa: E402

import memseq  # noqa: E402
from memseq import bench  # noqa: E402

BLOCK = 4 * 2**20
TIMED = ("numpy sequential", "numpy sequential, hot", "blocks, no reader", "seq[i] block + readahead",
         "seq[i] block + readahead, hot", "private buffers, buffered", "private buffers, O_DIRECT")
FIRST_TOUCH = ("first touch, block reads", "first touch, sequential read")
CASES = TIMED + FIRST_TOUCH


def _sendfile_to_null(path: str, start: int, stop: int, chunk: int = BLOCK) -> None:
    """Reads bytes ``[start, stop)`` of ``path`` into the page cache: nothing copied to us, nothing mapped."""
    fd, null = os.open(path, os.O_RDONLY), os.open(os.devnull, os.O_WRONLY)
    try:
        while start < stop:
            start += os.sendfile(null, fd, start, min(chunk, stop - start))
    finally:
        os.close(fd)
        os.close(null)


def _fill_by_blocks(path: str, size: int, threads: int = 4) -> None:
    """Reads every whole block of ``path`` below ``size`` into the page cache, in random order."""
    order = np.random.default_rng(0).permutation(size // BLOCK).tolist()
    with concurrent.futures.ThreadPoolExecutor(threads) as pool:
        list(pool.map(lambda block: _sendfile_to_null(path, block * BLOCK, (block + 1) * BLOCK), order))


def _first_touch(path: str, by_blocks: bool) -> dict:
    """CPU seconds of two no-fault passes over pages just read (see the module docstring)."""
    from memseq.util import libc

    size = os.path.getsize(path) // BLOCK * BLOCK
    if by_blocks:
        _fill_by_blocks(path, size)
    else:  # one stream, also through sendfile: a read() would copy, touching every page first
        _sendfile_to_null(path, 0, size, chunk=8 * BLOCK)
    fd = os.open(path, os.O_RDONLY)
    mapping = mmap.mmap(fd, size, prot=mmap.PROT_READ)
    os.close(fd)
    data = np.frombuffer(mapping, np.uint8)
    try:
        libc.madvise(data.ctypes.data, size, libc.MADV_POPULATE_READ)  # map every page, so the passes take no faults
    except OSError:
        pass  # a kernel before 5.14: the passes then fault, and the check below says so
    passes = []
    for _ in range(2):
        faults = resource.getrusage(resource.RUSAGE_SELF)
        start = time.thread_time()
        for i in range(0, size, 64 * BLOCK):
            data[i : i + 64 * BLOCK : 64].sum(dtype=np.uint64)
        passes.append(time.thread_time() - start)
        after = resource.getrusage(resource.RUSAGE_SELF)
        # A few faults are numpy's own scratch memory; the file's 600,000 pages are all mapped already.
        assert after.ru_minflt + after.ru_majflt - faults.ru_minflt - faults.ru_majflt < 100, "a pass faulted pages in"
    del data
    mapping.close()
    return {"seconds": passes[0], "bytes": size, "cpu": passes[0] - passes[1]}


def _rss_anon() -> int:
    """This process's resident anonymous memory, in bytes."""
    with open("/proc/self/status") as f:
        return next(int(line.split()[1]) * 1024 for line in f if line.startswith("RssAnon:"))


def _private_buffers_epoch(seq: memseq.MemmapSequence, path: str, direct: bool) -> tuple[int, int]:
    """Epoch 0 of ``seq`` gathered from blocks read into a private arena (see the module docstring).

    Returns (bytes of the batches, peak RssAnon).
    """
    from memseq.readahead import ranges as readahead_ranges

    plan, block_rows = seq.plan, seq.plan.order.block_rows
    array = np.load(path, mmap_mode="r")
    offset, row_bytes, num_rows = array.offset, array.strides[0], len(array)
    del array
    page = mmap.PAGESIZE
    # Rows a whole number of pages: slots (and so O_DIRECT buffers) start on a page, and
    # every block at the same offset within its first page, so the arena is one grid of rows.
    assert row_bytes % page == 0, "the arena layout needs rows of whole pages"
    skew = offset % page
    slot_rows = block_rows + -(-2 * page // row_bytes)  # a block plus its page-rounded ends
    batch_rows = [plan.batch_rows(i, 0) for i in range(len(seq))]
    batch_blocks = [np.unique(rows // block_rows).tolist() for rows in batch_rows]
    last_use = {block: i for i, blocks in enumerate(batch_blocks) for block in blocks}
    lookahead = seq.readahead // (row_bytes * seq.batch_size)
    # Held at once: the blocks within the bound ahead, plus the two windows it starts and
    # ends in (each asked whole by its first batch), plus spare. 200 at the defaults.
    slots = seq.readahead // (block_rows * row_bytes) + 2 * plan.order.window_blocks + 8
    arena = mmap.mmap(-1, slots * slot_rows * row_bytes, flags=mmap.MAP_PRIVATE | mmap.MAP_ANONYMOUS)  # as np.empty
    rows_view = np.frombuffer(arena, np.uint8)[skew : skew + (slots * slot_rows - 1) * row_bytes].reshape(-1, row_bytes)
    fd = os.open(path, os.O_RDONLY | (os.O_DIRECT if direct else 0))
    file_size = os.path.getsize(path)
    free, slot_of, pending = list(range(slots)), {}, {}

    def read(block: int, slot: int) -> None:
        first = (offset + block * block_rows * row_bytes) // page * page
        last = min(offset + min(num_rows, (block + 1) * block_rows) * row_bytes, file_size)
        last = -(-last // page) * page
        base = slot * slot_rows * row_bytes
        done = 0
        while done < last - first:
            got = os.preadv(fd, [memoryview(arena)[base + done : base + last - first]], first + done)
            if got == 0:
                break
            done += got

    touches = readahead_ranges.block_touches(plan, 0)

    def ask(index: int, pool) -> None:
        for start, _ in readahead_ranges.batch_ranges(plan, index, 0, touches=touches).tolist():
            block = start // block_rows
            slot = slot_of[block] = free.pop()
            pending[block] = pool.submit(read, block, slot)

    nbytes = peak = 0
    with concurrent.futures.ThreadPoolExecutor(4) as pool:
        for i, rows in enumerate(batch_rows):
            for ahead in range(0 if i == 0 else i + lookahead, min(i + lookahead, len(seq) - 1) + 1):
                if readahead_ranges.reads_new_blocks(plan, ahead, 0, touches):
                    ask(ahead, pool)
            for block in batch_blocks[i]:
                if block in pending:
                    pending.pop(block).result()
            blocks = rows // block_rows
            slot = np.array([slot_of[b] for b in blocks.tolist()], np.int64)
            batch = np.take(rows_view, slot * slot_rows + rows - blocks * block_rows, axis=0)
            nbytes += batch.nbytes
            for block in batch_blocks[i]:
                if last_use[block] == i:
                    free.append(slot_of.pop(block))
            if i % 16 == 0:
                peak = max(peak, _rss_anon())
    os.close(fd)
    del rows_view
    arena.close()
    return nbytes, peak


def _clock() -> tuple[float, float, resource.struct_rusage, int]:
    """Wall clock, this thread's CPU, the process's usage and RssAnon, read when a case starts (after its imports)."""
    return time.perf_counter(), time.thread_time(), resource.getrusage(resource.RUSAGE_SELF), _rss_anon()


def run_case(name: str, directory: str) -> dict:
    """One case, in this (fresh) process; the clock runs from the first read."""
    image = os.path.join(directory, "image.npy")
    if name.startswith("first touch"):
        return _first_touch(image, by_blocks=name.endswith("block reads"))
    peak = 0
    if name.startswith("numpy sequential"):
        array = np.load(image, mmap_mode="r")
        start, cpu, usage, anon = _clock()
        nbytes = sum(np.array(array[i : i + _common.BATCH]).nbytes for i in range(0, len(array), _common.BATCH))
    elif name == "blocks, no reader":
        nbytes = os.path.getsize(image) // BLOCK * BLOCK
        start, cpu, usage, anon = _clock()
        _fill_by_blocks(image, nbytes)
    else:
        seq = memseq.MemmapSequence(directory, x="image", batch_size=_common.BATCH, seed=0, shuffle="block",
                                    readahead=True)
        start, cpu, usage, anon = _clock()
        if name.startswith("private buffers"):
            nbytes, peak = _private_buffers_epoch(seq, image, direct=name.endswith("O_DIRECT"))
        else:
            nbytes = sum(seq[i][0].nbytes for i in range(len(seq)))
    seconds, cpu = time.perf_counter() - start, time.thread_time() - cpu
    peak = max(peak, _rss_anon()) - anon
    after = resource.getrusage(resource.RUSAGE_SELF)
    return {"seconds": seconds, "bytes": nbytes, "cpu": cpu, "faults": after.ru_minflt - usage.ru_minflt,
            "major_faults": after.ru_majflt - usage.ru_majflt, "peak_rss_anon": peak,
            "process_cpu": after.ru_utime + after.ru_stime - usage.ru_utime - usage.ru_stime}


def measure(name: str, directory: str, paths: list[str], device: str) -> dict:
    if name.endswith(", hot"):
        _common.warm(paths)
        cached = bench.cached_fraction(paths)
        assert cached > 0.99, f"{name}: only {cached:.1%} cached"
    else:
        cached = _common.evict(paths)
        assert cached < 0.01, f"{name}: {cached:.1%} cached at start"
    requests0, _ = _common.read_counts(device)
    out = _common.run_case([sys.executable, __file__, "--case", name, "--dir", directory], name)
    out["requests"] = _common.read_counts(device)[0] - requests0
    return out


def main(argv=None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--dir", default=os.path.join(tempfile.gettempdir(), "memseq-bench-fit"))
    parser.add_argument("--rows", type=int, default=200_000)
    parser.add_argument("--repeats", type=int, default=3, help="rounds of every case; medians are reported")
    parser.add_argument("--case", help=argparse.SUPPRESS)
    args = parser.parse_args(argv)
    if args.case:
        _common.print_result(run_case(args.case, args.dir))
        return 0

    _common.build_images(args.dir, args.rows, random_labels=True)
    paths = _common.data_files(args.dir)
    device = _common.device_of(paths[0])
    runs = _common.rounds(CASES, args.repeats, lambda name: measure(name, args.dir, paths, device))

    def median(name: str, key: str) -> float:
        return statistics.median(r[key] for r in runs[name])

    def gbs(name: str) -> float:
        return statistics.median(r["bytes"] / r["seconds"] / 1e9 for r in runs[name])

    base = gbs("numpy sequential")
    print(f"dataset {args.dir}, device {device}; medians of {args.repeats} rounds, every case in a fresh process")
    print(f"  {'case':<32} {'GB/s':>6} {'x seq':>6} {'req/GB':>7} {'thread CPU s':>12} {'process CPU s':>13} "
          f"{'faults':>8} {'major':>6} {'RssAnon +MiB':>12}")
    for name in TIMED:
        req = statistics.median(r["requests"] / (r["bytes"] / 1e9) for r in runs[name])
        rate = f"{gbs(name):6.2f} {gbs(name) / base:6.2f}" if not name.endswith("hot") else f"{gbs(name):6.2f} {'':>6}"
        print(f"  {name:<32} {rate} {req:7.0f} {median(name, 'cpu'):12.2f} {median(name, 'process_cpu'):13.2f} "
              f"{median(name, 'faults'):8.0f} {median(name, 'major_faults'):6.0f} {median(name, 'peak_rss_anon') / 2**20:12.0f}")
    for what in ("numpy sequential", "seq[i] block + readahead"):
        cold, hot = median(what, "cpu"), median(what + ", hot", "cpu")
        print(f"  {what}: the reading thread's CPU cold / hot (same bytes): {cold:.2f} / {hot:.2f} s = {cold / hot:.1f}x")
    print(f"\n  block reads alone vs the sequential read: {gbs('blocks, no reader') / base:.2f}x; "
          f"seq[i] block + readahead: {gbs('seq[i] block + readahead') / base:.2f}x; private buffers, buffered / "
          f"O_DIRECT: {gbs('private buffers, buffered') / base:.2f}x / {gbs('private buffers, O_DIRECT') / base:.2f}x")
    for name in FIRST_TOUCH:
        gb = runs[name][0]["bytes"] / 1e9
        print(f"  {name}: first pass costs {median(name, 'cpu') / gb * 1e3:.0f} ms of CPU per GB more than the second"
              f" ({median(name, 'seconds') / gb * 1e3:.0f} ms per GB in all)")
    return 0


if __name__ == "__main__":
    sys.exit(main())
