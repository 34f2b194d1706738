"""``memseq.tfdata``: the tf.data adapter, defined in :mod:`memseq.adapters.tf_data` (this import path is kept for compatibility)."""

from memseq.adapters.tf_data import *  # noqa: F403
from memseq.adapters.tf_data import __all__  # noqa: F401
