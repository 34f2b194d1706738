"""``memseq.adapters.keras.fit``: the names this module held before the package was split by role.

Kept so that existing imports work; the code lives in :mod:`memseq.adapters.keras`
(``install``), :mod:`~memseq.adapters.keras.adapter`, :mod:`~memseq.adapters.keras.clock`
and :mod:`~memseq.adapters.keras.legacy`.
"""

from memseq.adapters.keras import (
    BatchBuilder,
    SequenceAdapter,
    current_start,
    install,
    install_legacy,
    resume_at,
    standardize,
)

__all__ = ["BatchBuilder", "SequenceAdapter", "current_start", "install", "install_legacy", "resume_at", "standardize"]
