"""`import memseq` stays light: no TensorFlow, no Keras until a Keras part is used."""

from __future__ import annotations

import json


def test_import_memseq_does_not_import_tensorflow_or_keras(run_python):
    result = run_python(
        """
        import json, sys
        import memseq
        import memseq.format, memseq.dataset, memseq.writer, memseq.errors
        heavy = sorted(m for m in sys.modules if m.split(".")[0] in ("tensorflow", "keras", "tf_keras"))
        print(json.dumps({"heavy": heavy, "all": memseq.__all__}))
        """
    )
    assert result.returncode == 0, result.stderr
    report = json.loads(result.stdout.strip().splitlines()[-1])
    assert report["heavy"] == []
    # The lazy MemmapSequence is still advertised as a public name.
    assert "MemmapSequence" in report["all"]


def test_foundation_works_without_tensorflow_importable(run_python, tmp_path):
    # Block tensorflow and keras entirely: writing and reading must still work.
    result = run_python(
        """
        import sys
        for name in ("tensorflow", "keras", "tf_keras"):
            sys.modules[name] = None  # makes `import name` raise ImportError
        import numpy as np
        import memseq
        memseq.save("ds", {"x": np.arange(6, dtype=np.int32).reshape(3, 2)})
        print(memseq.open("ds")["x"][[2, 0]].tolist())
        """
    )
    assert result.returncode == 0, result.stderr
    assert result.stdout.strip() == "[[4, 5], [0, 1]]"
    assert (tmp_path / "ds" / "memseq.json").is_file()
