"""tf.distribute with memseq.adapters.tf_data: every row once per epoch across input pipelines.

Each test runs TensorFlow in subprocesses (this file doubles as their script), so
the logical-device configuration and the multi-worker cluster never touch the
pytest process. A subprocess that hangs is killed by the timeout.
"""

from __future__ import annotations

import json
import os
import socket
import subprocess
import sys

import numpy as np
import pytest

pytestmark = pytest.mark.slow

NUM_ROWS = 96
BATCH_SIZE = 16  # global batch size; 8 rows per replica with 2 replicas
FEATURES = 4
TIMEOUT = 90


def _make_dataset(path: str) -> None:
    import memseq

    rows = np.arange(NUM_ROWS)
    feat = np.zeros((NUM_ROWS, FEATURES), np.float32)
    feat[:, 0] = rows  # column 0 names the row, so a batch tells which rows it holds
    feat[:, 1:] = np.random.default_rng(0).normal(size=(NUM_ROWS, FEATURES - 1))
    memseq.save(path, {"feat": feat, "label": (rows % 3).astype(np.int64)})


def _env() -> dict[str, str]:
    env = dict(os.environ)
    env.pop("TF_CONFIG", None)
    env["TF_CPP_MIN_LOG_LEVEL"] = "2"
    env["CUDA_VISIBLE_DEVICES"] = "-1"
    return env


def _run(args: list[str], **kwargs) -> subprocess.Popen:
    return subprocess.Popen(
        [sys.executable, __file__, *args],
        stdout=subprocess.PIPE,
        stderr=subprocess.STDOUT,
        text=True,
        **kwargs,
    )


def _finish(procs: list[subprocess.Popen]) -> list[str]:
    outputs = []
    try:
        for proc in procs:
            out, _ = proc.communicate(timeout=TIMEOUT)
            outputs.append(out)
    except subprocess.TimeoutExpired:
        for proc in procs:
            proc.kill()
        logs = "\n".join(proc.communicate()[0][-3000:] for proc in procs)
        pytest.fail(f"distributed run did not finish in {TIMEOUT} s:\n{logs}")
    for proc, out in zip(procs, outputs):
        assert proc.returncode == 0, f"worker failed (exit {proc.returncode}):\n{out[-5000:]}"
    return outputs


def _free_ports(n: int) -> list[int]:
    socks = []
    try:
        for _ in range(n):
            s = socket.socket()
            s.bind(("127.0.0.1", 0))
            socks.append(s)
        return [s.getsockname()[1] for s in socks]
    finally:
        for s in socks:
            s.close()


def _check_coverage(per_pipeline: list[dict], seq_rows) -> None:
    """Each epoch: the pipelines' shares are disjoint, cover every row once, and
    every step's shares together are the sequence's global batch of that step."""
    epochs = per_pipeline[0]["epochs"]
    assert len(epochs) == 2
    for e, epoch in enumerate(epochs):
        steps = [p["rows"][e] for p in per_pipeline]  # [pipeline][step][replica] -> rows
        assert len({len(s) for s in steps}) == 1, "pipelines ran different numbers of steps"
        served = np.concatenate([np.concatenate(replica) for s in steps for replica in s])
        np.testing.assert_array_equal(np.sort(served), np.arange(NUM_ROWS))
        for step in range(len(steps[0])):
            together = np.concatenate([np.concatenate(s[step]) for s in steps])
            np.testing.assert_array_equal(np.sort(together), seq_rows(step, epoch))
            for s in steps:
                for share in s[step]:
                    assert len(share) == BATCH_SIZE // 2
    first = np.concatenate([np.concatenate(r) for r in per_pipeline[0]["rows"][0]])
    second = np.concatenate([np.concatenate(r) for r in per_pipeline[0]["rows"][1]])
    assert not np.array_equal(first, second), "the second epoch repeated the first order"


def _sequence_rows(path: str):
    import memseq

    seq = memseq.MemmapSequence(path, x="feat", y="label", batch_size=BATCH_SIZE, seed=7)
    return lambda step, epoch: seq.batch_rows(step, epoch)


def test_mirrored_strategy_two_logical_cpus(tmp_path):
    data = str(tmp_path / "data")
    _make_dataset(data)
    out = tmp_path / "mirrored.json"
    (log,) = _finish([_run(["mirrored", data, str(out)], env=_env())])
    result = json.loads(out.read_text())
    assert result["replicas"] == 2
    _check_coverage([result], _sequence_rows(data))
    # model.fit over the distributed dataset and over a plain to_tf_dataset() both trained.
    assert len(result["fit_losses"]) == 2 and all(np.isfinite(result["fit_losses"])), log
    assert len(result["plain_fit_losses"]) == 2 and all(np.isfinite(result["plain_fit_losses"])), log


def test_multi_worker_mirrored_strategy_two_processes(tmp_path):
    data = str(tmp_path / "data")
    _make_dataset(data)
    ports = _free_ports(2)
    cluster = {"worker": [f"127.0.0.1:{port}" for port in ports]}
    procs = []
    for index in range(2):
        env = _env()
        env["TF_CONFIG"] = json.dumps({"cluster": cluster, "task": {"type": "worker", "index": index}})
        procs.append(_run(["multiworker", data, str(tmp_path / f"worker{index}.json")], env=env))
    logs = _finish(procs)
    results = [json.loads((tmp_path / f"worker{i}.json").read_text()) for i in range(2)]
    assert [r["pipeline"] for r in results] == [0, 1], logs
    assert all(r["replicas"] == 2 for r in results)
    _check_coverage(results, _sequence_rows(data))
    for r in results:
        assert len(r["fit_losses"]) == 2 and all(np.isfinite(r["fit_losses"])), logs


# -- the subprocess side


def _model(tf_keras_module):
    keras = tf_keras_module
    model = keras.Sequential(
        [keras.Input((FEATURES,)), keras.layers.Dense(8, activation="relu"), keras.layers.Dense(3)]
    )
    model.compile(optimizer="adam", loss=keras.losses.SparseCategoricalCrossentropy(from_logits=True))
    return model


def _collect(strategy, dist, epochs: int) -> list:
    """Rows each local replica got, per epoch and step: [epoch][step][replica] -> list of rows."""
    per_epoch = []
    for _ in range(epochs):
        steps = []
        for x, _y in dist:
            shares = strategy.experimental_local_results(x)
            steps.append([t.numpy()[:, 0].astype(int).tolist() for t in shares])
        per_epoch.append(steps)
    return per_epoch


def _worker(mode: str, data: str, out: str) -> None:
    import tensorflow as tf

    if mode == "mirrored":
        cpu = tf.config.list_physical_devices("CPU")[0]
        tf.config.set_logical_device_configuration(cpu, [tf.config.LogicalDeviceConfiguration()] * 2)
        strategy = tf.distribute.MirroredStrategy(["/cpu:0", "/cpu:1"])
    else:
        strategy = tf.distribute.MultiWorkerMirroredStrategy()

    import memseq
    import memseq.adapters.tf_data

    seq = memseq.MemmapSequence(data, x="feat", y="label", batch_size=BATCH_SIZE, seed=7)
    contexts = []

    def dataset_fn(ctx):
        contexts.append(ctx)
        return seq.to_tf_dataset(input_context=ctx)

    dist = strategy.distribute_datasets_from_function(dataset_fn)
    result = {
        "replicas": strategy.num_replicas_in_sync,
        "pipeline": contexts[0].input_pipeline_id,
        "epochs": [0, 1],
        "rows": _collect(strategy, dist, 2),
    }
    if mode == "mirrored":
        import keras

        with strategy.scope():
            model = _model(keras)
        history = model.fit(memseq.adapters.tf_data.distribute(seq, strategy), epochs=2, verbose=0)
    else:
        # Keras 3's fit cannot train under MultiWorkerMirroredStrategy (keras-team/keras#20585:
        # its symbolic build reduces the first (x, y) batch with a strategy.reduce that
        # fails for nested values). Legacy tf_keras (a test dependency) can; it needs
        # steps_per_epoch with a distributed dataset and keeps one iterator for the
        # whole run, so each pipeline repeats: every pass is the next epoch.
        import tf_keras

        with strategy.scope():
            model = _model(tf_keras)
        dist = strategy.distribute_datasets_from_function(lambda ctx: seq.to_tf_dataset(input_context=ctx).repeat())
        history = model.fit(dist, epochs=2, steps_per_epoch=len(seq), verbose=0)
    result["fit_losses"] = [float(v) for v in history.history["loss"]]
    if mode == "mirrored":
        # The plain dataset under a strategy: Keras splits each global batch itself.
        with strategy.scope():
            model = _model(keras)
        history = model.fit(seq.to_tf_dataset(), epochs=2, verbose=0)
        result["plain_fit_losses"] = [float(v) for v in history.history["loss"]]
    with open(out, "w") as f:
        json.dump(result, f)


if __name__ == "__main__":
    _worker(*sys.argv[1:4])
