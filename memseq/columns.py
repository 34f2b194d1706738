"""``memseq.columns``: columns, defined in :mod:`memseq.read.columns` (this import path is kept for compatibility)."""

from memseq.read.columns import *  # noqa: F403
from memseq.read.columns import __all__  # noqa: F401
