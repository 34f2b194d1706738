"""``memseq.writer``: the streaming Writer, defined in :mod:`memseq.write.writer` (this import path is kept for compatibility)."""

from memseq.write.save import save
from memseq.write.writer import Writer, check_block, checked_rows

__all__ = ["Writer", "save", "check_block", "checked_rows"]
