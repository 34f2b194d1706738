"""TensorFlow's start-up noise is dropped when memseq imports it; nothing else is (memseq/adapters/tf_import.py)."""

from __future__ import annotations

import importlib.util
import os

import pytest
from conftest import subprocess_env

from memseq.adapters.tf_import import is_startup_noise

CUINIT = (b"E0000 00:00:1796564403.098590   25714 cuda_platform.cc:52] failed call to cuInit: INTERNAL: "
          b"CUDA error: Failed call to cuInit: UNKNOWN ERROR (303)")
ABSL = b"WARNING: All log messages before absl::InitializeLog() is called are written to STDERR"
CUDART = (b"I0000 00:00:1796564389.459986   25633 cudart_stub.cc:31] Could not find cuda drivers on your machine, "
          b"GPU will not be used.")


def test_known_lines_are_noise_and_a_failing_cuinit_on_a_gpu_machine_is_not():
    assert is_startup_noise(ABSL) and is_startup_noise(CUDART)
    assert is_startup_noise(CUINIT, nvidia_driver=False)
    assert not is_startup_noise(CUINIT, nvidia_driver=True)
    assert not is_startup_noise(b"E0000 00:00:1.0   1 some_kernel.cc:1] a real error")
    assert not is_startup_noise(b"Traceback (most recent call last):")


FILTER_SCRIPT = r'''
import os, sys
sys.modules["tensorflow"] = None  # no TensorFlow needed to check the filter
from memseq.adapters.tf_import import stderr_without_noise

os.write(2, b"before\n")
with stderr_without_noise():
    os.write(2, {absl!r} + b"\nE0000 00:00:1.0   1 op_kernel.cc:1] a real err")
    os.write(2, b"or, split across two writes\n" + {cuinit!r} + b"\n")
    print("python's own stderr", file=sys.stderr)
    os.write(2, {cudart!r} + b"\nlast line without newline")
os.write(2, b"\nafter\n")
'''


def test_the_filter_drops_exactly_the_noise_and_forwards_everything_else(run_python):
    result = run_python(FILTER_SCRIPT.format(absl=ABSL, cuinit=CUINIT, cudart=CUDART))
    assert result.returncode == 0, result.stderr
    expected = ["before", "E0000 00:00:1.0   1 op_kernel.cc:1] a real error, split across two writes"]
    if os.path.exists("/proc/driver/nvidia/version"):
        expected.append(CUINIT.decode())  # a machine with a driver: a failing cuInit is a real error
    expected += ["python's own stderr", "last line without newline", "after"]
    assert result.stderr.splitlines() == expected


TF_SCRIPT = '''
import sys
import memseq
memseq.MemmapSequence  # memseq imports Keras, hence TensorFlow, first
import tensorflow as tf
tf.config.list_physical_devices()
tf.constant(1.0)
try:
    tf.raw_ops.MatMul(a=tf.zeros((2, 3)), b=tf.zeros((2, 3)))
except tf.errors.InvalidArgumentError as e:
    print("raised", type(e).__name__)
'''


@pytest.mark.slow
@pytest.mark.skipif(importlib.util.find_spec("tensorflow") is None, reason="tensorflow not installed")
def test_memseqs_import_of_tensorflow_hides_the_gpu_probe_but_not_later_errors(tmp_path):
    import subprocess
    import sys

    script = tmp_path / "tf_script.py"
    script.write_text(TF_SCRIPT)

    def run(**env_changes):
        env = subprocess_env()
        env.pop("TF_CPP_MIN_LOG_LEVEL", None)
        env.update(KERAS_BACKEND="tensorflow", **env_changes)
        return subprocess.run([sys.executable, str(script)], cwd=tmp_path, env=env, capture_output=True, text=True,
                              timeout=300)

    # The user's own TF_CPP_MIN_LOG_LEVEL: memseq leaves TensorFlow's output alone.
    theirs = run(TF_CPP_MIN_LOG_LEVEL="0")
    assert theirs.returncode == 0, theirs.stderr[-3000:]
    if "failed call to cuInit" not in theirs.stderr:
        pytest.skip("this TensorFlow prints no cuInit line on this machine")
    quiet = run()
    assert quiet.returncode == 0, quiet.stderr[-3000:]
    assert "raised InvalidArgumentError" in quiet.stdout
    assert "cuInit" not in quiet.stderr
    assert "absl::InitializeLog" not in quiet.stderr
    assert "Could not find cuda drivers" not in quiet.stderr
    # TensorFlow's own logging is untouched: the failing op's C++ log line still shows.
    assert "Matrix size-incompatible" in quiet.stderr, quiet.stderr[-3000:]
