"""Telling URLs from paths, joining them, and where the local shard cache lives by default."""

from __future__ import annotations

import hashlib
import os
import re
from typing import Any

from memseq.errors import SchemaError
from memseq.util.checks import bounded_repr

__all__ = ["is_url", "join", "default_cache_dir", "cache_key", "parse_size"]

# "scheme://" as fsspec understands it (s3, gs, az, abfs, http, https, file, memory, ...).
_URL_RE = re.compile(r"^[A-Za-z][A-Za-z0-9+.\-]*://")
_SIZE_RE = re.compile(r"^\s*([0-9]+(?:\.[0-9]*)?)\s*([KMGTP]?)(i?)B?\s*$", re.IGNORECASE)
_UNITS = {"": 0, "K": 1, "M": 2, "G": 3, "T": 4, "P": 5}


def is_url(path: Any) -> bool:
    """Whether ``path`` is a ``str`` URL with a scheme (``s3://...``), not a local path."""
    return isinstance(path, str) and bool(_URL_RE.match(path))


def join(url: str, relative: str) -> str:
    """``url`` / ``relative``, with exactly one slash between them."""
    return url.rstrip("/") + "/" + relative


def default_cache_dir() -> str:
    """``$MEMSEQ_CACHE_DIR``, else ``$XDG_CACHE_HOME/memseq``, else ``~/.cache/memseq``."""
    explicit = os.environ.get("MEMSEQ_CACHE_DIR")
    if explicit:
        return explicit
    base = os.environ.get("XDG_CACHE_HOME") or os.path.join(os.path.expanduser("~"), ".cache")
    return os.path.join(base, "memseq")


def cache_key(url: str) -> str:
    """The folder name of ``url``'s datasets in the cache: readable, unique and filesystem-safe."""
    url = url.rstrip("/")
    tail = re.sub(r"[^A-Za-z0-9._-]+", "_", url.rsplit("/", 1)[-1])[:40] or "dataset"
    return f"{tail}-{hashlib.sha256(url.encode()).hexdigest()[:16]}"


def parse_size(value: Any, what: str = "cache_limit") -> int | None:
    """A byte count from ``None``, an int, or a string such as ``"200GB"``, ``"1.5 GiB"``, ``"512M"``.

    Units are powers of 1024 (``GB`` and ``GiB`` alike: a cache limit is about disk
    space, where the difference does not decide anything).

    Raises:
        SchemaError: For a negative number, a bool, or a string that is not a size.
    """
    if value is None:
        return None
    if isinstance(value, bool):
        raise SchemaError(f"{what} must be a number of bytes or a size such as '200GB'. Received: {value!r}")
    if isinstance(value, int):
        number = value
    else:
        match = _SIZE_RE.match(value) if isinstance(value, str) else None
        if match is None:
            raise SchemaError(f"{what} must be a number of bytes or a size such as '200GB'. Received: {bounded_repr(value)}")
        number = int(float(match.group(1)) * 1024 ** _UNITS[match.group(2).upper()])
    if number < 0:
        raise SchemaError(f"{what} must not be negative. Received: {value!r}")
    return number
