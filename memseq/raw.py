"""``memseq.raw``: headerless raw files, defined in :mod:`memseq.read.raw` (this import path is kept for compatibility)."""

from memseq.read.raw import *  # noqa: F403
from memseq.read.raw import __all__  # noqa: F401
