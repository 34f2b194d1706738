"""``memseq.ragged``: variable-length fields, defined in :mod:`memseq.read.ragged` (this import path is kept for compatibility)."""

from memseq.read.ragged import *  # noqa: F403
from memseq.read.ragged import __all__  # noqa: F401
