"""``memseq.sequence``: :class:`~memseq.MemmapSequence`, defined in :mod:`memseq.batching.sequence`.

Importing it installs memseq's Keras data adapters (:mod:`memseq.adapters.keras`), as
``memseq.MemmapSequence`` does, so ``model.fit(seq)`` keeps memseq's contract
whichever path the class was imported from.
"""

import memseq.adapters.keras  # noqa: F401  (installs the fit adapters)
from memseq.batching.sequence import MemmapSequence

__all__ = ["MemmapSequence"]
