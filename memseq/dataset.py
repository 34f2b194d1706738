"""``memseq.dataset``: opening datasets, defined in :mod:`memseq.read.dataset` (this import path is kept for compatibility)."""

from memseq.read.dataset import *  # noqa: F403
from memseq.read.dataset import __all__  # noqa: F401
