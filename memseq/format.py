"""``memseq.format``: the manifest format, defined in :mod:`memseq.storage.format` (this import path is kept for compatibility)."""

from memseq.storage.format import *  # noqa: F403
from memseq.storage.format import __all__  # noqa: F401
