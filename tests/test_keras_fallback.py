"""A Keras without the internals memseq's fit adapter needs: ``fit(seq)`` falls back to Keras' own.

Each case runs in a fresh interpreter that removes one internal from the installed
Keras before memseq installs its adapters (memseq/adapters/keras/internals.py), then
trains: one KerasFallbackWarning naming what is missing and what is lost, at the
user's line; Keras' PyDatasetAdapter serves the sequence; every step runs.
"""

from __future__ import annotations

import json

import pytest

pytest.importorskip("keras")

FALLBACK_SCRIPT = '''
import json, os, sys, types, warnings

os.environ["KERAS_BACKEND"] = sys.argv[2]
import numpy as np
import keras
import keras.src.trainers.data_adapters as data_adapters
from keras.src.trainers import epoch_iterator

case = sys.argv[1]
if case == "module unimportable":
    sys.modules["keras.src.trainers.data_adapters.data_adapter"] = None
elif case == "get_data_adapter moved":
    # Keras keeps working (its epoch iterator holds the function); memseq finds nothing.
    epoch_iterator.data_adapters = types.SimpleNamespace(get_data_adapter=data_adapters.get_data_adapter)
    del data_adapters.get_data_adapter

used = []
original_init = epoch_iterator.EpochIterator.__init__

def recording_init(self, *args, **kwargs):
    original_init(self, *args, **kwargs)
    used.append(type(self.data_adapter).__name__)

epoch_iterator.EpochIterator.__init__ = recording_init

import memseq

rng = np.random.default_rng(0)
memseq.save("ds", {"image": rng.integers(0, 256, (100, 4, 4, 3), dtype=np.uint8), "label": rng.integers(0, 3, 100)})
steps = []

class CountSteps(keras.callbacks.Callback):
    def on_train_batch_end(self, batch, logs=None):
        steps.append(batch)

with warnings.catch_warnings(record=True) as caught:
    warnings.simplefilter("always")
    seq = memseq.MemmapSequence("ds", x="image", y="label", batch_size=32, seed=0)  # LINE OF INTEREST
    import memseq.sequence  # imports (adapters already installed: no second warning)
    model = keras.Sequential([keras.Input((4, 4, 3)), keras.layers.Flatten(), keras.layers.Dense(3)])
    model.compile("sgd", keras.losses.SparseCategoricalCrossentropy(from_logits=True))
    history = model.fit(seq, epochs=2, verbose=0, callbacks=[CountSteps()])

from memseq.adapters.keras import KerasFallbackWarning

line = next(i for i, text in enumerate(open(__file__), 1) if text.rstrip().endswith("LINE OF INTEREST"))
fallback = [w for w in caught if issubclass(w.category, KerasFallbackWarning)]
print(json.dumps({
    "warnings": [str(w.message) for w in fallback],
    "where": [[w.filename == __file__, w.lineno == line] for w in fallback],
    "adapters": used,
    "steps": len(steps),
    "batches": len(seq),
    "epochs": len(history.history["loss"]),
}))
'''


# Two backends, one per case: the fallback is Keras' own code path under both.
@pytest.mark.parametrize(
    ("case", "backend", "named"),
    [
        ("module unimportable", "tensorflow", "keras.src.trainers.data_adapters.data_adapter.DataAdapter"),
        ("get_data_adapter moved", "jax", "keras.src.trainers.data_adapters.get_data_adapter"),
    ],
)
def test_fit_falls_back_to_keras_own_adapter_with_one_warning(run_python, case, backend, named):
    if backend == "jax":
        pytest.importorskip("jax")
    result = run_python(FALLBACK_SCRIPT, case, backend, timeout=300)
    assert result.returncode == 0, result.stderr[-3000:]
    report = json.loads(result.stdout.strip().splitlines()[-1])
    assert len(report["warnings"]) == 1, report["warnings"]
    message = report["warnings"][0]
    assert named in message
    assert "Keras' own PyDataset adapter" in message and "persistent worker processes" in message
    assert report["where"] == [[True, True]]  # the user's line, not memseq's
    assert report["adapters"] == ["PyDatasetAdapter"]
    assert report["batches"] == 4 and report["epochs"] == 2
    assert report["steps"] == 2 * 4
