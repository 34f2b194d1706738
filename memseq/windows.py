"""``memseq.windows``: token windows, defined in :mod:`memseq.read.windows` (this import path is kept for compatibility)."""

from memseq.read.windows import *  # noqa: F403
from memseq.read.windows import __all__  # noqa: F401
