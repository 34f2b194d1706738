"""Datasets in object storage: URLs, retried transfers, and the verified local shard cache.

This layer sits on :mod:`memseq.storage` and below :mod:`memseq.read`: the reader maps
the files it keeps exactly like local ones (:class:`ShardCache`), and the writer uploads
through :mod:`memseq.remote.transfer`. fsspec is needed only when a URL is used
(``pip install 'memseq[remote]'``, plus s3fs, gcsfs or adlfs for their schemes).
"""

from __future__ import annotations

from memseq.remote.cache import ShardCache
from memseq.remote.urls import default_cache_dir, is_url, parse_size

__all__ = ["ShardCache", "default_cache_dir", "is_url", "parse_size"]
