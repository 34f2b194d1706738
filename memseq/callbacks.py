"""``memseq.callbacks``: the resume callback, defined in :mod:`memseq.adapters.keras.callbacks` (this import path is kept for compatibility)."""

from memseq.adapters.keras.callbacks import *  # noqa: F403
from memseq.adapters.keras.callbacks import __all__  # noqa: F401
