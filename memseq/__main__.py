"""``python -m memseq``: the ``memseq`` command (see :mod:`memseq.cli.command`)."""

import sys

from memseq.cli import main

# The guard matters: `convert --jobs N` starts worker processes with spawn, which
# imports this module again in each worker (as __mp_main__, not __main__).
if __name__ == "__main__":
    sys.exit(main())
