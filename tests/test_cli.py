"""The `memseq` command: every subcommand through cli.main(), and once each as a real subprocess."""

from __future__ import annotations

import json
import os
import subprocess
import sys

import numpy as np
import pytest

import memseq
from memseq.cli import main


def _env() -> dict[str, str]:
    env = dict(os.environ)
    env.setdefault("TF_CPP_MIN_LOG_LEVEL", "3")
    return env


def run_memseq(*args: str, cwd, timeout: float = 300) -> subprocess.CompletedProcess:
    """`python -m memseq ARGS` in a fresh interpreter."""
    return subprocess.run(
        [sys.executable, "-m", "memseq", *map(str, args)],
        cwd=cwd, env=_env(), capture_output=True, text=True, timeout=timeout, check=False,
    )


@pytest.fixture
def dataset(tmp_path):
    rng = np.random.default_rng(0)
    data = {
        "image": rng.integers(0, 256, (200, 8, 8, 3), dtype=np.uint8),
        "label": rng.integers(0, 10, 200).astype(np.int64),
    }
    path = tmp_path / "train"
    memseq.save(path, data, shard_rows=150)
    return path


def _one_error_line(err: str) -> str:
    assert err.startswith("memseq: error: "), err
    assert err.count("\n") == 1 and "Traceback" not in err, err
    return err


# --------------------------------------------------------------------------- general


def test_help_lists_every_subcommand(capsys):
    assert main(["--help"]) == 0
    out = capsys.readouterr().out
    for command in ("info", "verify", "convert", "bench", "demo"):
        assert command in out
    for command in ("info", "verify", "convert", "bench", "demo"):
        assert main([command, "--help"]) == 0
        assert "usage: memseq" in capsys.readouterr().out


def test_usage_errors_exit_2(capsys):
    assert main([]) == 2
    assert "required" in capsys.readouterr().err
    assert main(["frobnicate"]) == 2
    assert main(["info"]) == 2


def test_version(capsys):
    assert main(["--version"]) == 0
    assert memseq.__version__ in capsys.readouterr().out


def test_traceback_flag_reraises(tmp_path):
    with pytest.raises(memseq.DatasetNotFoundError):
        main(["--traceback", "info", str(tmp_path / "missing")])


# --------------------------------------------------------------------------- info


def test_info_text(dataset, capsys):
    assert main(["info", str(dataset)]) == 0
    out = capsys.readouterr().out
    assert "rows:     200" in out
    assert "memseq version 1" in out
    assert "shards:   2 (rows per shard: 50..150)" in out
    assert "image  uint8  (8, 8, 3)" in out
    assert "label  int64  ()" in out
    size = sum(os.path.getsize(os.path.join(d, f)) for d, _, files in os.walk(dataset) for f in files)
    assert f"{size:,} bytes in 5 files" in out


def test_info_json(dataset, capsys):
    assert main(["info", str(dataset), "--json"]) == 0
    info = json.loads(capsys.readouterr().out)
    assert info["rows"] == 200 and info["version"] == 1 and info["shards"] == [150, 50]
    assert info["fields"]["image"] == {"dtype": "uint8", "dtype_str": "|u1", "shape": [8, 8, 3], "row_bytes": 192, "bytes": 38400}


def test_info_missing_dataset_is_one_line(tmp_path, capsys):
    assert main(["info", str(tmp_path / "missing")]) == 1
    err = _one_error_line(capsys.readouterr().err)
    assert "missing" in err


# --------------------------------------------------------------------------- verify


def test_verify_ok(dataset, capsys):
    assert main(["verify", str(dataset)]) == 0
    out = capsys.readouterr().out
    assert out.startswith("OK ") and "4 data files" in out


def test_verify_names_the_corrupt_file(dataset, capsys):
    bad = dataset / "shard-00001" / "image.npy"
    data = bytearray(bad.read_bytes())
    data[-7] ^= 0xFF
    bad.write_bytes(bytes(data))
    assert main(["verify", str(dataset)]) == 1
    err = _one_error_line(capsys.readouterr().err)
    assert str(bad) in err and "checksum" in err


def test_verify_truncated_file(dataset, capsys):
    bad = dataset / "shard-00000" / "label.npy"
    bad.write_bytes(bad.read_bytes()[:-8])
    assert main(["verify", str(dataset)]) == 1
    err = _one_error_line(capsys.readouterr().err)
    assert "label.npy" in err


# --------------------------------------------------------------------------- convert (more in test_convert.py)


def test_convert(tmp_path, capsys):
    x = np.arange(60, dtype=np.float32).reshape(20, 3)
    np.save(tmp_path / "x.npy", x)
    assert main(["convert", str(tmp_path / "out"), f"--field=x={tmp_path / 'x.npy'}", "--no-progress"]) == 0
    assert "20 rows, 1 field, 1 shard" in capsys.readouterr().out
    np.testing.assert_array_equal(memseq.open(tmp_path / "out")["x"][:], x)


def test_convert_needs_a_source(tmp_path, capsys):
    assert main(["convert", str(tmp_path / "out")]) == 1
    assert "Nothing to convert" in _one_error_line(capsys.readouterr().err)


# --------------------------------------------------------------------------- bench


def test_bench_prints_a_table_hot_and_cold(dataset, capsys):
    code = main(["bench", str(dataset), "--batch-size", "16", "--batches", "3"])
    assert code == 0
    captured = capsys.readouterr()
    lines = captured.out.splitlines()
    assert "samples/s" in lines[1] and "GB/s" in lines[1]
    rows = [line.split() for line in lines[2:]]
    methods = [" ".join(r[:-5]) for r in rows]
    caches = [r[-5] for r in rows]
    expected = ["MemmapSequence seq[i]"] * 2 + ["baseline: from_generator(np.memmap)"] * 2
    if hasattr(memseq.MemmapSequence, "to_tf_dataset"):
        expected[2:2] = ["MemmapSequence.to_tf_dataset()"] * 2
    assert methods == expected
    assert caches == ["cold", "hot"] * (len(expected) // 2)
    for r in rows:
        assert int(r[-4]) == 3  # batches
        # Rates are printed rounded: a tiny run on a slow machine may show 0.000 GB/s.
        assert float(r[-3].replace(",", "")) >= 0 and float(r[-2]) >= 0
    # "cached at start": the cold run starts after the pages were dropped (on tmpfs
    # nothing can be dropped, so only the order is checked), the hot one after a run.
    cached = [float(r[-1].rstrip("%")) for r in rows]
    for cold, hot in zip(cached[::2], cached[1::2]):
        assert cold <= hot and hot > 0


def test_bench_unknown_field(dataset, capsys):
    assert main(["bench", str(dataset), "--x", "nope"]) == 1
    assert "no field 'nope'" in _one_error_line(capsys.readouterr().err)


# --------------------------------------------------------------------------- demo (more in test_demo.py)


def test_demo_small(tmp_path, capsys):
    code = main(["demo", "--size-gb", "0.005", "--epochs", "1", "--dir", str(tmp_path), "--batch-size", "64"])
    assert code == 0
    out = capsys.readouterr().out
    assert "samples/s" in out and "peak anonymous memory" in out and "RssAnon" in out
    assert os.listdir(tmp_path) == []  # cleaned up


def test_demo_rejects_bad_size(capsys):
    assert main(["demo", "--size-gb", "0"]) == 1
    assert "--size-gb" in _one_error_line(capsys.readouterr().err)


# --------------------------------------------------------------------------- real subprocesses, one per subcommand


@pytest.mark.slow
def test_subprocess_info_verify_convert(tmp_path, dataset):
    np.save(tmp_path / "x.npy", np.arange(10))
    p = run_memseq("convert", tmp_path / "x.npy", tmp_path / "conv", "--jobs", "2", cwd=tmp_path)
    assert p.returncode == 0, p.stderr
    assert "10 rows" in p.stdout

    p = run_memseq("info", dataset, cwd=tmp_path)
    assert p.returncode == 0, p.stderr
    assert "rows:     200" in p.stdout

    p = run_memseq("verify", dataset, cwd=tmp_path)
    assert p.returncode == 0 and p.stdout.startswith("OK ")

    (dataset / "shard-00000" / "image.npy").write_bytes(b"garbage")
    p = run_memseq("verify", dataset, cwd=tmp_path)
    assert p.returncode == 1
    assert p.stderr.startswith("memseq: error: ") and "image.npy" in p.stderr and "Traceback" not in p.stderr


@pytest.mark.slow
def test_subprocess_bench(tmp_path, dataset):
    p = run_memseq("bench", dataset, "--batch-size", "16", "--batches", "2", "--no-baseline", "--no-cold", cwd=tmp_path)
    assert p.returncode == 0, p.stderr
    assert "MemmapSequence seq[i]" in p.stdout and "hot" in p.stdout and "baseline" not in p.stdout


@pytest.mark.slow
def test_subprocess_demo(tmp_path):
    p = run_memseq("demo", "--size-gb", "0.01", "--epochs", "1", "--dir", tmp_path, cwd=tmp_path)
    assert p.returncode == 0, p.stderr
    assert "memseq demo results" in p.stdout
    assert "samples/s" in p.stdout and "peak anonymous memory" in p.stdout
    assert os.listdir(tmp_path) == []


def test_cli_convert_and_demo_modules_do_not_import_tensorflow(tmp_path):
    code = (
        "import sys, memseq.cli.command, memseq.convert, memseq.demo, memseq.__main__\n"
        "from memseq.cli import main\n"
        "main(['--help'])\n"
    )
    p = subprocess.run([sys.executable, "-c", code + "print([m for m in sys.modules if m.split('.')[0] in ('tensorflow', 'keras')])"],
                       cwd=tmp_path, env=_env(), capture_output=True, text=True, timeout=120, check=False)
    assert p.returncode == 0, p.stderr
    assert p.stdout.strip().splitlines()[-1] == "[]"
