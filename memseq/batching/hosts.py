"""Several hosts, and datasets in object storage: what MemmapSequence settles before its plan.

- :func:`resolve_hosts`: the ``hosts=`` argument as ``(num_hosts, host_index)``.
- :func:`shard_aware_order`: a :class:`~memseq.ShardShuffle` without ``part_rows`` gets
  the shards of the sequence's :class:`~memseq.Dataset`.
- :func:`remote_order_cost`: for a dataset at a URL whose ``cache_limit`` is smaller
  than the dataset, what an order costs in downloads per epoch, as a warning.
"""

from __future__ import annotations

import warnings
from typing import Any

from memseq.errors import SchemaError
from memseq.order import EpochOrder, FullShuffle, ShardShuffle, resolve_shuffle
from memseq.read.dataset import Dataset
from memseq.read.remote import remote_files_of
from memseq.read.remote_prefetch import RemoteCacheWarning
from memseq.util.checks import bounded_repr, check_int

__all__ = ["RemoteCacheWarning", "resolve_hosts", "shard_aware_order", "remote_order_cost"]


def resolve_hosts(hosts: Any) -> tuple[int, int]:
    """``(num_hosts, host_index)`` from ``None`` (one host), a pair, a ``tf.distribute.InputContext``, or ``"jax"``.

    Raises:
        SchemaError: For anything else, or an index out of range.
    """
    if hosts is None:
        return (1, 0)
    if isinstance(hosts, str) and hosts == "jax":  # one input pipeline per JAX process (a Keras distribution's)
        import jax

        hosts = (jax.process_count(), jax.process_index())
    if hasattr(hosts, "num_input_pipelines") and hasattr(hosts, "input_pipeline_id"):
        hosts = (hosts.num_input_pipelines, hosts.input_pipeline_id)
    if not isinstance(hosts, (tuple, list)) or len(hosts) != 2:
        raise SchemaError(
            "hosts must be None, (num_hosts, host_index), \"jax\" ((jax.process_count(), jax.process_index())) "
            f"or a tf.distribute.InputContext. Received: {bounded_repr(hosts)}"
        )
    count = check_int(hosts[0], "num_hosts", 1)
    return count, check_int(hosts[1], "host_index", 0, maximum=count - 1)


def shard_aware_order(shuffle: Any, data: Any, row_nbytes: int) -> Any:
    """``shuffle``, with a :class:`ShardShuffle`'s ``part_rows`` filled in from ``data``'s shards."""
    if isinstance(shuffle, ShardShuffle) and shuffle.part_rows is None:
        if not isinstance(data, Dataset):
            raise SchemaError(
                "ShardShuffle without part_rows needs a memseq.Dataset (or a dataset path or URL) as data. "
                f"Received: {type(data).__name__}"
            )
        return ShardShuffle(shuffle.window_shards, tuple(s.num_rows for s in data.manifest.shards))
    return shuffle


def remote_order_cost(data: Any, order: EpochOrder | Any, row_nbytes: int) -> bool:
    """Warns when ``order`` is a full shuffle over a dataset at a URL with a cache smaller than the dataset; returns whether it warned.

    A full shuffle draws every batch from all shards: with a cache that holds a
    fraction ``f`` of the dataset, about ``1 - f`` of a batch's shards are not
    cached, so nearly every batch downloads shards again.
    """
    remote = remote_files_of(data)
    if remote is None or remote.cache.cache_limit is None:
        return False
    total = sum(remote.shard_nbytes(s) for s in range(len(remote.manifest.shards)))
    limit = remote.cache.cache_limit
    if limit >= total or not isinstance(resolve_shuffle(order, row_nbytes), FullShuffle):
        return False
    shards = len(remote.manifest.shards)
    warnings.warn(
        f"{remote.path}: a full shuffle (shuffle=True) with cache_limit={limit} bytes, smaller than the dataset "
        f"({total} bytes in {shards} shards): every batch reads rows from nearly all shards, and about "
        f"{1 - limit / total:.0%} of them are not cached at any time, so shards are downloaded again for almost "
        f"every batch (up to about {shards} shard downloads per batch instead of {shards} per epoch). Use "
        "shuffle=memseq.ShardShuffle(window_shards=...) (each shard downloaded once per epoch), or a "
        "cache_limit that holds the whole dataset.",
        RemoteCacheWarning,
        stacklevel=4,
    )
    return True
