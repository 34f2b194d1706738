"""The ``memseq`` command: ``info``, ``verify``, ``convert``, ``bench`` and ``demo`` (see :mod:`memseq.cli.command`)."""

from memseq.cli.command import build_parser, main

__all__ = ["build_parser", "main"]
