"""``memseq.writer``: the streaming Writer, defined in :mod:`memseq.write.writer` (this import path is kept for compatibility)."""

from memseq.write.writer import *  # noqa: F403
from memseq.write.writer import __all__  # noqa: F401
