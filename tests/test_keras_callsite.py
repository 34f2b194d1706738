"""Keras warnings raised inside memseq's wrapped adapter lookup name the user's line (memseq/adapters/keras/callsite.py)."""

from __future__ import annotations

import warnings

import numpy as np
import pytest

import memseq

keras = pytest.importorskip("keras")

SHUFFLE_IGNORED = "`shuffle=True` was passed, but will be ignored"


@pytest.fixture(scope="module")
def installed():
    memseq.MemmapSequence  # noqa: B018  (installs memseq's adapters: Keras' lookup is now wrapped)
    if keras.backend.backend() != "tensorflow":
        pytest.skip("the warning used here is raised for a tf.data.Dataset (TensorFlow backend)")
    import tensorflow as tf

    model = keras.Sequential([keras.Input((2,)), keras.layers.Dense(1)])
    model.compile("sgd", "mse")
    data = tf.data.Dataset.from_tensor_slices((np.zeros((4, 2), np.float32), np.zeros((4, 1), np.float32))).batch(2)
    return model, data


def test_keras_warning_from_the_adapter_lookup_names_the_callers_line(installed):
    model, data = installed
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        model.fit(data, epochs=1, verbose=0)  # fit's shuffle=True: Keras warns in get_data_adapter
    shuffle = [w for w in caught if SHUFFLE_IGNORED in str(w.message)]
    assert len(shuffle) == 1
    assert shuffle[0].filename == __file__
    assert "model.fit(data" in open(__file__).read().splitlines()[shuffle[0].lineno - 1]


def test_the_users_warning_filters_decide_at_the_users_line(installed):
    model, data = installed
    with warnings.catch_warnings():
        warnings.filterwarnings("error", message=SHUFFLE_IGNORED, module=__name__)
        with pytest.raises(UserWarning, match="will be ignored"):
            model.fit(data, epochs=1, verbose=0)
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        warnings.filterwarnings("ignore", message=SHUFFLE_IGNORED, module=__name__)
        model.fit(data, epochs=1, verbose=0)
    assert not [w for w in caught if SHUFFLE_IGNORED in str(w.message)]
