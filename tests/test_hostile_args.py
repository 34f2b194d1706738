"""Hostile campaign, second round (issue 21): absurd integers, pickles that outlive their file,
fork under load, tf.data exits after a failing ``augment``, headerless dtypes.

Each kind is a table of cases; every case must end in the named memseq error (never an
``OverflowError``, an ``AttributeError``, a hang or data from another file).
"""

from __future__ import annotations

import multiprocessing
import operator
import os
import pickle
import subprocess
import sys
import time

import numpy as np
import pytest
from conftest import assert_same_array, subprocess_env

import memseq
from memseq import (
    BatchIndexError,
    CorruptFileError,
    DatasetClosedError,
    DatasetReplacedError,
    SchemaError,
)

N = 64
HUGE = [2**63, 2**64 - 1, 2**70, 10**30, np.uint64(2**64 - 1)]
HUGE_IDS = ["2**63", "2**64-1", "2**70", "10**30", "np.uint64"]


@pytest.fixture(scope="module")
def data(tmp_path_factory):
    root = tmp_path_factory.mktemp("hostile")
    path = root / "ds"
    rng = np.random.default_rng(0)
    tokens = [rng.integers(1, 100, int(k)).astype(np.int32) for k in rng.integers(0, 9, N)]
    memseq.save(path, {"x": np.arange(N * 4, dtype=np.float32).reshape(N, 4), "y": np.arange(N), "tokens": tokens})
    raw = root / "x.mmap"
    np.arange(N * 4, dtype=np.float32).tofile(raw)
    return path, raw


@pytest.fixture(scope="module")
def seq(data):
    return memseq.MemmapSequence(data[0], x="x", y="y", batch_size=8, seed=3)


# --------------------------------------------------------------------------- absurd integers

def _sequence(data, **kwargs):
    args = {"x": "x", "y": "y", "batch_size": 8, "seed": 0}
    args.update(kwargs)
    return memseq.MemmapSequence(data[0], **args)


def _grain():
    pytest.importorskip("grain")
    from memseq.adapters.grain import to_grain

    return to_grain


def _tfdata():
    pytest.importorskip("tensorflow")
    import memseq.adapters.tf_data

    return memseq.adapters.tf_data.to_tf_dataset


# Every public integer argument: (name, callable of (data, seq, huge value), errors accepted).
INTEGER_CASES = [
    ("BlockShuffle.block_rows", lambda d, s, v: memseq.BlockShuffle(block_rows=v), SchemaError),
    ("BlockShuffle.window_blocks", lambda d, s, v: memseq.BlockShuffle(window_blocks=v), SchemaError),
    ("LengthBuckets.window_batches", lambda d, s, v: memseq.LengthBuckets(np.ones(N, int), window_batches=v), SchemaError),
    ("Padding.max_length", lambda d, s, v: memseq.Padding(max_length=v), SchemaError),
    ("Padding.multiple", lambda d, s, v: memseq.Padding(multiple=v), SchemaError),
    ("MemmapSequence.batch_size", lambda d, s, v: _sequence(d, batch_size=v), SchemaError),
    ("MemmapSequence.seed", lambda d, s, v: _sequence(d, seed=v), SchemaError),
    ("MemmapSequence.readahead", lambda d, s, v: _sequence(d, readahead=v), SchemaError),
    ("MemmapSequence.workers", lambda d, s, v: _sequence(d, workers=v), SchemaError),
    ("MemmapSequence.max_queue_size", lambda d, s, v: _sequence(d, max_queue_size=v), SchemaError),
    ("MemmapSequence.indices", lambda d, s, v: _sequence(d, indices=[0, v]), (SchemaError, BatchIndexError)),
    ("MemmapSequence.shuffle=BlockShuffle", lambda d, s, v: _sequence(d, shuffle=memseq.BlockShuffle(v, 1)), SchemaError),
    ("seq.set_epoch", lambda d, s, v: s.set_epoch(v), SchemaError),
    ("seq.get_batch(epoch=)", lambda d, s, v: s.get_batch(0, epoch=v), SchemaError),
    ("seq.batch_rows(epoch=)", lambda d, s, v: s.batch_rows(0, epoch=v), SchemaError),
    ("seq[index]", lambda d, s, v: s[v], BatchIndexError),
    ("seq.get_share(replica=)", lambda d, s, v: s.get_share(0, 0, v, 2), SchemaError),
    ("seq.get_share(num_replicas=)", lambda d, s, v: s.get_share(0, 0, 0, v), SchemaError),
    ("seq.get_share(epoch=)", lambda d, s, v: s.get_share(0, v, 0, 2), SchemaError),
    ("to_grain(epoch=)", lambda d, s, v: _grain()(s, epoch=v), SchemaError),
    ("to_grain(num_epochs=)", lambda d, s, v: _grain()(s, num_epochs=v), SchemaError),
    ("to_tf_dataset(epoch=)", lambda d, s, v: _tfdata()(s, epoch=v), SchemaError),
    ("to_tf_dataset(num_parallel_calls=)", lambda d, s, v: _tfdata()(s, num_parallel_calls=v), SchemaError),
    ("open_raw(offset=)", lambda d, s, v: memseq.open_raw(d[1], "float32", (-1, 4), offset=v), SchemaError),
    ("Dataset.take", lambda d, s, v: memseq.open(d[0]).take([v]), (SchemaError, BatchIndexError)),
    ("Column[[index]]", lambda d, s, v: memseq.open(d[0])["x"][[v]], (SchemaError, BatchIndexError)),
    ("RaggedColumn.take", lambda d, s, v: memseq.open(d[0])["tokens"].take([v]), (SchemaError, BatchIndexError)),
    ("records()[index]", lambda d, s, v: memseq.open(d[0]).records()[v], BatchIndexError),
]


@pytest.mark.parametrize("value", HUGE, ids=HUGE_IDS)
@pytest.mark.parametrize("case", INTEGER_CASES, ids=[c[0] for c in INTEGER_CASES])
def test_absurd_integers_are_schema_errors_not_overflow(data, seq, case, value):
    _, call, errors = case
    with pytest.raises(errors) as info:
        call(data, seq, value)
    assert not isinstance(info.value, OverflowError)
    assert "Received" in str(info.value) or "out of range" in str(info.value)


@pytest.mark.parametrize("multiple", [2**40, 2**63 - 1])
def test_padding_beyond_memory_is_refused_before_allocating(data, multiple):
    s = _sequence(data, x="tokens", padding=memseq.Padding(multiple=multiple))
    with pytest.raises(SchemaError, match=rf"padded batch of field 'tokens' would have shape \(8, {multiple}\) of int32"):
        s.get_batch(0)


def test_replica_outside_num_replicas_is_refused(seq):
    with pytest.raises(SchemaError, match="replica must be an int from 0 to 1. Received: 2"):
        seq.get_share(0, 0, 2, 2)
    with pytest.raises(SchemaError, match="num_replicas must be an int >= 1. Received: 0"):
        seq.get_share(0, 0, 0, 0)


def test_the_largest_epoch_is_served_and_the_next_one_refused(data):
    s = _sequence(data)
    s.set_epoch(2**63 - 1)
    assert s.get_batch(0)[0].shape == (8, 4)
    with pytest.raises(SchemaError, match=r"epoch must be an int from 0 to 2\*\*63 - 1. Received: 9223372036854775808"):
        s.on_epoch_end()
    assert s.epoch == 2**63 - 1


def test_length_buckets_refuse_lengths_beyond_int64_and_negative_ones():
    with pytest.raises(SchemaError, match=r"lengths must be from 0 to 2\*\*63 - 1. Received: 18446744073709551615 at row 1"):
        memseq.LengthBuckets(np.array([3, 2**64 - 1], np.uint64))
    with pytest.raises(SchemaError, match="Received: -4 at row 2"):
        memseq.LengthBuckets(np.array([3, 1, -4]))


def test_length_buckets_window_beyond_the_epoch_is_the_epoch(data):
    lengths = memseq.open(data[0])["tokens"].lengths
    big = _sequence(data, x="tokens", shuffle=memseq.LengthBuckets(lengths, window_batches=2**63 - 1))
    whole = _sequence(data, x="tokens", shuffle=memseq.LengthBuckets(lengths, window_batches=N))
    assert_same_array(big.plan.permutation(1), whole.plan.permutation(1))


def test_uint64_indices_beyond_int64_do_not_wrap_to_negative_ones(data):
    column = memseq.open(data[0])["x"]
    # 2**64 - 1 cast to int64 is -1: it would read the last row.
    with pytest.raises(BatchIndexError, match="row index 18446744073709551615 is out of range"):
        column[np.array([2**64 - 1], np.uint64)]
    assert_same_array(column[np.array([1, 0], np.uint64)], column[[1, 0]])


def test_grain_num_epochs_bounded_by_len(seq):
    to_grain = _grain()
    most = sys.maxsize // len(seq)
    assert len(to_grain(seq, num_epochs=most)) == most * len(seq)
    with pytest.raises(SchemaError, match=rf"num_epochs must be an int from 1 to {most}. Received: {most + 1}"):
        to_grain(seq, num_epochs=most + 1)
    with pytest.raises(SchemaError, match="num_epochs must be an int from 1 to 2. Received: 3"):
        to_grain(seq, epoch=2**63 - 2, num_epochs=3)


# --------------------------------------------------------------------------- tf.data arguments

def test_num_parallel_calls_has_a_documented_maximum(seq):
    to_tf_dataset = _tfdata()
    import memseq.tfdata

    assert memseq.tfdata.MAX_PARALLEL_CALLS == 1024
    ds = to_tf_dataset(seq, num_parallel_calls=memseq.tfdata.MAX_PARALLEL_CALLS)
    first = next(iter(ds))
    assert_same_array(first[0].numpy(), seq.get_batch(0)[0])
    with pytest.raises(SchemaError, match=r"num_parallel_calls must be an int from 1 to 1024 \(memseq.tfdata.MAX_PARALLEL_CALLS\)"):
        to_tf_dataset(seq, num_parallel_calls=10**9)


@pytest.mark.parametrize("context", ["ctx", 3, object()], ids=["str", "int", "object"])
def test_input_context_of_the_wrong_type_is_a_schema_error(seq, context):
    to_tf_dataset = _tfdata()
    with pytest.raises(SchemaError, match="input_context must be a tf.distribute.InputContext"):
        to_tf_dataset(seq, input_context=context)


def test_input_context_pipeline_out_of_range_says_so(seq):
    to_tf_dataset = _tfdata()
    import tensorflow as tf

    context = tf.distribute.InputContext(num_input_pipelines=3, input_pipeline_id=5, num_replicas_in_sync=3)
    with pytest.raises(SchemaError, match=r"input pipeline id 5 is out of range for 3 input pipelines \(ids 0 to 2\)"):
        to_tf_dataset(seq, input_context=context)
    uneven = tf.distribute.InputContext(num_input_pipelines=2, input_pipeline_id=0, num_replicas_in_sync=3)
    with pytest.raises(SchemaError, match="3 replicas do not split evenly over 2 input pipelines"):
        to_tf_dataset(seq, input_context=uneven)


_AUGMENT_FAILS = """
import os, sys
import numpy as np
import memseq
from memseq.adapters.tf_data import to_tf_dataset

class Failing(memseq.MemmapSequence):
    def augment(self, batch, rng):
        if rng.random() < 0.3:
            raise ValueError("augment failed")
        return batch

seq = Failing(sys.argv[1], x="x", y="y", batch_size=2, seed=int(sys.argv[2]))
ds = to_tf_dataset(seq)
def batches():
    for batch in ds:
        yield batch
try:
    for _ in batches():
        pass
except Exception as e:
    kept = e  # a global holds the traceback, hence the iterator, until the interpreter exits
print("raised", type(kept).__name__, flush=True)
if sys.argv[3] == "uncaught":
    for _ in ds:
        pass
"""


@pytest.mark.slow
def test_interpreter_exits_after_augment_fails_inside_tf_data(data, tmp_path):
    """Finding 8: 10 runs (5 with an uncaught error, 5 with the error kept in a global) all exit."""
    pytest.importorskip("tensorflow")
    script = tmp_path / "augment_fails.py"
    script.write_text(_AUGMENT_FAILS)
    runs = [(seed, mode) for seed in range(5) for mode in ("uncaught", "kept")]
    outcomes = []
    for start in range(0, len(runs), 2):  # two at a time: 2 cores
        procs = [
            (run, subprocess.Popen([sys.executable, str(script), str(data[0]), str(run[0]), run[1]], env=subprocess_env(),
                                   stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True))
            for run in runs[start : start + 2]
        ]
        for run, proc in procs:
            try:
                out, err = proc.communicate(timeout=90)
            except subprocess.TimeoutExpired:
                proc.kill()
                proc.communicate()
                outcomes.append((run, "hang"))
                continue
            assert "raised InvalidArgumentError" in out, err[-2000:]
            outcomes.append((run, proc.returncode))
    assert [o for _, o in outcomes] == [1 if mode == "uncaught" else 0 for _, mode in runs], outcomes


# --------------------------------------------------------------------------- pickles and the file they name

def _write_raw(path, value, rows=N):
    np.full((rows, 4), value, np.float32).tofile(path)


@pytest.fixture(params=["spawn", "forkserver"])
def pool_elsewhere(request, tmp_path):
    """A one-process pool of ``request.param`` whose working directory is another one than the parent's."""
    elsewhere = tmp_path / "elsewhere"
    elsewhere.mkdir()
    _write_raw(elsewhere / "x.mmap", 9.0)  # the same relative name there: must not be read
    with multiprocessing.get_context(request.param).Pool(1, initializer=os.chdir, initargs=(str(elsewhere),)) as pool:
        yield pool


def test_relative_path_reads_the_same_file_in_workers_with_another_cwd(tmp_path, monkeypatch, pool_elsewhere):
    monkeypatch.chdir(tmp_path)
    _write_raw(tmp_path / "x.mmap", 1.0)
    column = memseq.open_raw("x.mmap", "float32", (-1, 4))
    assert column.path == str(tmp_path / "x.mmap")
    assert_same_array(pool_elsewhere.apply(operator.getitem, (column, [0, 5])), np.ones((2, 4), np.float32))


def test_raw_file_replaced_by_rename_is_refused_in_workers(tmp_path, pool_elsewhere):
    path = tmp_path / "x.mmap"
    _write_raw(path, 1.0)
    column = memseq.open_raw(path, "float32", (-1, 4))
    _write_raw(tmp_path / "new.mmap", 2.0)
    os.replace(tmp_path / "new.mmap", path)
    assert_same_array(column[[3]], np.ones((1, 4), np.float32))  # the parent serves the old file
    with pytest.raises(DatasetReplacedError, match="names another file than the raw column that was pickled"):
        pool_elsewhere.apply(operator.getitem, (column, [3]))


def test_raw_file_truncated_is_refused_in_workers(tmp_path, pool_elsewhere):
    path = tmp_path / "x.mmap"
    _write_raw(path, 1.0)
    column = memseq.open_raw(path, "float32", (-1, 4))
    os.truncate(path, 10 * 4 * 4)
    with pytest.raises(CorruptFileError, match=r"the file is 160 bytes but 1024 bytes are expected \(its size when"):
        pool_elsewhere.apply(operator.getitem, (column, [0]))


def _loads_and_read(blob, key):
    """In a worker: unpickle, then read (so that the file can change in between)."""
    return pickle.loads(blob)[key]


def test_raw_file_written_after_pickling_is_refused_in_workers(tmp_path, pool_elsewhere):
    path = tmp_path / "x.mmap"
    _write_raw(path, 1.0)
    column = memseq.open_raw(path, "float32", (-1, 4))
    with open(path, "r+b") as f:  # before pickling: the parent reads these bytes too, so do workers
        f.write(np.float32(5).tobytes())
    assert pool_elsewhere.apply(operator.getitem, (column, [0]))[0, 0] == column[[0]][0, 0] == 5.0
    blob = pickle.dumps(column)
    with open(path, "r+b") as f:
        f.write(np.float32(6).tobytes())
    os.utime(path, ns=(time.time_ns(), time.time_ns() + 10**9))  # coarse filesystem clocks
    with pytest.raises(DatasetReplacedError, match="was modified after the raw column was pickled"):
        pool_elsewhere.apply(_loads_and_read, (blob, [0]))


def test_memmap_in_a_sequence_or_records_is_checked_in_workers(tmp_path, pool_elsewhere):
    path = tmp_path / "x.mmap"
    _write_raw(path, 1.0)
    mm = np.memmap(path, np.float32, "r", shape=(N, 4))
    source = memseq.records({"x": mm})
    assert_same_array(pool_elsewhere.apply(operator.getitem, (source, 2))["x"], np.ones(4, np.float32))
    _write_raw(tmp_path / "new.mmap", 2.0)
    os.replace(tmp_path / "new.mmap", path)
    with pytest.raises(DatasetReplacedError, match="names another file"):
        pool_elsewhere.apply(operator.getitem, (source, 2))


def test_memmap_given_to_a_sequence_is_checked_when_unpickled(tmp_path):
    path = tmp_path / "x.mmap"
    _write_raw(path, 1.0)
    s = memseq.MemmapSequence({"x": np.memmap(path, np.float32, "r", shape=(N, 4)), "y": np.arange(N)},
                              x="x", y="y", batch_size=8, seed=0)
    blob = pickle.dumps(s)
    assert len(blob) < 64 * 1024  # by reference, not the data
    assert_same_array(pickle.loads(blob).get_batch(0)[0], np.ones((8, 4), np.float32))
    _write_raw(tmp_path / "new.mmap", 2.0)
    os.replace(tmp_path / "new.mmap", path)
    with pytest.raises(DatasetReplacedError, match="names another file than the raw column that was pickled"):
        pickle.loads(blob).get_batch(0)


def test_memmap_written_after_the_sequence_was_made_is_read_in_that_process(tmp_path):
    mm = np.memmap(tmp_path / "x.mmap", np.float32, "w+", shape=(N, 4))
    s = memseq.MemmapSequence({"x": mm, "y": np.arange(N)}, x="x", y="y", batch_size=8, seed=0, shuffle=False)
    mm[:] = 3
    mm.flush()
    os.utime(tmp_path / "x.mmap", ns=(time.time_ns(), time.time_ns() + 10**9))
    assert_same_array(s.get_batch(0)[0], np.full((8, 4), 3, np.float32))


def test_dataset_data_file_replaced_by_rename_is_refused_in_workers(tmp_path, pool_elsewhere):
    path = tmp_path / "ds"
    memseq.save(path, {"x": np.ones((N, 4), np.float32)})
    ds = memseq.open(path)
    data_file = ds["x"].parts()[0].path
    # Same header, same size, other values: the manifest does not change.
    np.save(tmp_path / "new.npy", np.full((N, 4), 2, np.float32))
    os.replace(tmp_path / "new.npy", data_file)
    assert_same_array(ds["x"][[0]], np.ones((1, 4), np.float32))
    for obj, key in ((ds, "x"), (ds["x"], [0])):
        with pytest.raises(DatasetReplacedError, match="names another file than the dataset that was pickled"):
            pool_elsewhere.apply(operator.getitem, (obj, key))[0]


def test_identity_from_another_machine_compares_sizes_only(tmp_path):
    from memseq.read.raw import reopen_raw
    from memseq.storage.identity import identity_of

    path = tmp_path / "x.mmap"
    _write_raw(path, 1.0)
    real = identity_of(os.stat(path))
    other = ("boot:another-machine", real.dev + 1, real.ino + 1, real.size, real.mtime_ns + 1)
    column = reopen_raw(str(path), "<f4", (N, 4), 0, other)
    assert_same_array(column[[1]], np.ones((1, 4), np.float32))  # a copy of the data at the same path
    wrong_size = reopen_raw(str(path), "<f4", (N, 4), 0, (*other[:3], real.size + 4, other[4]))
    with pytest.raises(CorruptFileError, match="1024 bytes but 1028 bytes are expected"):
        wrong_size[[1]]


def test_old_pickles_without_identity_still_open(tmp_path):
    from memseq.read.raw import reopen_raw

    path = tmp_path / "x.mmap"
    _write_raw(path, 1.0)
    assert_same_array(reopen_raw(str(path), "<f4", (N, 4), 0)[[2]], np.ones((1, 4), np.float32))


@pytest.mark.parametrize("when", ["opened", "unpickled-then-repickled"])
def test_closed_dataset_and_columns_stay_closed_when_unpickled(data, when):
    ds = memseq.open(data[0])
    raw = memseq.open_raw(data[1], "float32", (-1, 4))
    column = ds["x"]
    if when == "unpickled-then-repickled":
        ds, column, raw = pickle.loads(pickle.dumps((ds, column, raw)))
    ds.close()
    raw.close()
    ds2, column2, raw2 = pickle.loads(pickle.dumps((ds, column, raw)))
    for read in (lambda: ds2.take([0]), lambda: column2[0], lambda: raw2[0], lambda: len(ds2)):
        with pytest.raises(DatasetClosedError):
            read()
    # An open one pickled beside them still reads.
    assert_same_array(pickle.loads(pickle.dumps(memseq.open(data[0])))["y"][[3]], np.array([3]))


# --------------------------------------------------------------------------- fork under load

_FORK_UNDER_LOAD = """
import faulthandler, os, sys, threading, time
import numpy as np
import memseq

path, children = sys.argv[1], int(sys.argv[2])
seq = memseq.MemmapSequence(path, x="x", y="y", batch_size=4, seed=1, readahead=True)
raw = memseq.open_raw(sys.argv[3], "float32", (-1, 4))
stop = threading.Event()

def hammer(k):
    epoch = 10**6 * k
    while not stop.is_set():
        epoch += 1  # a new epoch every call: the plan's lock is taken
        seq.get_batch(epoch % len(seq), epoch=epoch)
        seq.get_share(0, epoch + 7, 0, 2)
        memseq.open(path).take([epoch % 64])  # a dataset opened under its lock
        raw[[epoch % 64]]

threads = [threading.Thread(target=hammer, args=(k,), daemon=True) for k in range(3)]
for t in threads:
    t.start()
time.sleep(0.3)
finished = 0
for k in range(children):
    time.sleep(0.005 * (k % 5))
    pid = os.fork()
    if pid == 0:
        faulthandler.dump_traceback_later(20, exit=True)  # a hang prints where, then fails
        try:
            x, y = seq.get_batch(3, epoch=99999 + k)
            share = seq.get_share(1, 88888 + k, 1, 2)
            ok = x.shape == (4, 4) and len(share["y"]) == 2 and raw[[5]][0, 0] == 20.0
            os._exit(0 if ok else 3)
        except BaseException:
            os._exit(4)
    deadline = time.monotonic() + 30
    while True:
        done, status = os.waitpid(pid, os.WNOHANG)
        if done:
            finished += os.waitstatus_to_exitcode(status) == 0
            break
        if time.monotonic() > deadline:
            os.kill(pid, 9)
            os.waitpid(pid, 0)
            break
        time.sleep(0.01)
stop.set()
print(f"{finished}/{children} children finished")
"""


@pytest.mark.slow
def test_fork_while_threads_hammer_the_sequence(data, run_python):
    """Finding 5: 12 forks under load, each child reads a new epoch; all 12 finish."""
    result = run_python(_FORK_UNDER_LOAD, data[0], 12, data[1], timeout=600)
    assert result.returncode == 0, result.stderr[-3000:]
    assert "12/12 children finished" in result.stdout, result.stdout + result.stderr[-3000:]


def test_every_lock_owner_is_renewed_in_a_forked_child(data):
    """The one fork mechanism: a lock held at the fork is a fresh one in the child."""
    from memseq import order
    from memseq.adapters import tf_data as tfdata
    from memseq.batching import buffers as _buffers
    from memseq.readahead import pagein as _readahead
    from memseq.storage import commit as _commit
    from memseq.util import forksafe as _forksafe

    ds = memseq.open(data[0])
    raw = memseq.open_raw(data[1], "float32", (-1, 4))
    plan = order.BatchPlan(N, 8)
    pool = _buffers.BufferPool()
    counter = tfdata._EpochCounter(0)
    _readahead._pool()
    locks = [ds._state._lock, raw._lock, plan._lock, pool._lock, counter._lock, _readahead._lock, _commit._locks_guard]
    for lock in locks:
        lock.acquire()
    try:
        read, write = os.pipe()
        pid = os.fork()
        if pid == 0:
            os.close(read)
            try:
                renewed = [
                    ds._state._lock, raw._lock, plan._lock, pool._lock, counter._lock, _readahead._lock,
                    _commit._locks_guard,
                ]
                free = all(lock.acquire(timeout=1) for lock in renewed)
                for lock in renewed:
                    lock.release()
                result = free and _readahead._queue is None and len(ds.take([1])["y"]) == 1 and plan.batch_rows(0, 5).size == 8
                os.write(write, b"1" if result else b"0")
            finally:
                os._exit(0)
        os.close(write)
        answer = os.read(read, 1)
        os.waitpid(pid, 0)
        os.close(read)
    finally:
        for lock in locks:
            lock.release()
    assert answer == b"1"
    assert plan in set(_forksafe._objects)


# --------------------------------------------------------------------------- headerless dtypes

def test_full_shape_makes_a_wrong_dtype_an_error(data):
    with pytest.raises(CorruptFileError, match="expected 2048 bytes .* but the file is 1024 bytes"):
        memseq.open_raw(data[1], "float64", (N, 4))


def test_minus_one_cannot_tell_a_wrong_dtype_of_a_headerless_file(data):
    # Documented limit: float64 halves the rows and reads wrong values. Nothing records the dtype.
    column = memseq.open_raw(data[1], "float64", (-1, 4))
    assert column.shape == (N // 2, 4)


def test_npy_file_opened_raw_must_agree_with_its_header(tmp_path):
    path = tmp_path / "a.npy"
    np.save(path, np.arange(12, dtype="<f8").reshape(3, 4))
    for dtype, shape, offset in (("float64", (-1, 4), 0), ("float32", (-1,), 128), ("<f8", (4, 3), 128)):
        with pytest.raises(SchemaError, match=r"this is a .npy file.*header says dtype float64, shape \(3, 4\), data at byte 128"):
            memseq.open_raw(path, dtype, shape, offset)
    assert_same_array(memseq.open_raw(path, "<f8", (3, 4), 128)[:], np.arange(12, dtype="<f8").reshape(3, 4))
