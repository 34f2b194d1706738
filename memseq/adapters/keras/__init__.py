"""``model.fit(seq)`` through memseq's data adapters (Keras 3 and legacy tf_keras), and the resume callback.

Importing this package installs the adapters for :class:`~memseq.MemmapSequence`,
once. The sequence layer never imports its adapters: this package is imported from
above, when ``memseq.MemmapSequence``, ``memseq.BackupAndRestore``,
``memseq.sequence`` or ``memseq.callbacks`` is first used.
"""

from memseq.adapters.keras import fit
from memseq.batching.sequence import LEGACY_BASES, MemmapSequence

fit.install(MemmapSequence)
if LEGACY_BASES:
    fit.install_legacy(MemmapSequence)
