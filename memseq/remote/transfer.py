"""Talking to object storage through fsspec: one place for retries, backoff and error names.

Every remote operation runs through :func:`retrying`: a missing object is
:class:`~memseq.DatasetNotFoundError` and a refused one
:class:`~memseq.DatasetPermissionError` at once; anything else that can be transient
(timeouts, refused connections, HTTP 5xx, S3 throttling) is retried with exponential
backoff and jitter, and after the last attempt becomes :class:`~memseq.RemoteError`
naming the URL, the attempts and the last error. fsspec is imported on first use, so
``import memseq`` does not need it.
"""

from __future__ import annotations

import errno
import random
import time
from typing import Any, Callable, TypeVar

from memseq.errors import (
    DatasetNotFoundError,
    DatasetPermissionError,
    FormatError,
    MemseqError,
    RemoteError,
    SchemaError,
    WriteError,
)
from memseq.util.checks import bounded_repr

__all__ = ["ATTEMPTS", "BACKOFF_S", "filesystem", "retrying", "read_bytes", "download", "upload", "exists"]

T = TypeVar("T")

# Attempts per operation, and the first wait between them (doubled each time, with
# jitter, capped at _BACKOFF_MAX_S): about 6 s of waiting in all before giving up.
ATTEMPTS = 5
BACKOFF_S = 0.4
_BACKOFF_MAX_S = 8.0


def filesystem(url: str, storage_options: dict | None = None) -> tuple[Any, str]:
    """The fsspec filesystem for ``url`` and the path within it.

    Raises:
        SchemaError: If fsspec (or the filesystem's package, e.g. s3fs) is not installed,
            or the URL's scheme is unknown.
    """
    try:
        import fsspec
    except ImportError:
        raise SchemaError(
            f"{bounded_repr(url)}: reading URLs needs fsspec: pip install 'memseq[remote]' "
            "(and s3fs, gcsfs or adlfs for s3://, gs:// or az://)."
        ) from None
    try:
        return fsspec.core.url_to_fs(url, **(storage_options or {}))
    except (ImportError, ValueError) as e:
        raise SchemaError(f"{bounded_repr(url)}: no filesystem for this URL ({bounded_repr(str(e))}).") from e


def _not_found(e: BaseException) -> bool:
    return isinstance(e, FileNotFoundError) or getattr(e, "errno", None) == errno.ENOENT


def _denied(e: BaseException) -> bool:
    return isinstance(e, PermissionError) or getattr(e, "errno", None) in (errno.EACCES, errno.EPERM)


def retrying(url: str, what: str, operation: Callable[[], T]) -> T:
    """Runs ``operation`` (one remote request on ``url``), retrying transient failures.

    Args:
        url: The URL it reads or writes, for messages.
        what: What it is ("manifest", "data file 'x.npy'"), for messages.
        operation: A callable without arguments; it must be safe to repeat.

    Raises:
        DatasetNotFoundError: If the object does not exist (not retried).
        DatasetPermissionError: If access is denied (not retried).
        RemoteError: If every attempt failed otherwise.
        MemseqError: Raised by ``operation`` itself, unchanged (not retried).
    """
    last: BaseException | None = None
    for attempt in range(ATTEMPTS):
        if attempt:
            time.sleep(min(_BACKOFF_MAX_S, BACKOFF_S * 2 ** (attempt - 1)) * random.uniform(0.5, 1.0))
        try:
            return operation()
        except MemseqError:
            raise
        except NotImplementedError as e:  # a read-only filesystem (http://) asked to write
            raise SchemaError(f"{url}: this filesystem cannot do that ({what}): {type(e).__name__} {e}".rstrip()) from e
        except Exception as e:  # fsspec's backends raise their own types (aiohttp, botocore)
            if getattr(e, "errno", None) in (errno.ENOSPC, errno.EDQUOT, errno.EFBIG):
                raise WriteError(
                    f"{url}: no space left to copy {what} ({bounded_repr(str(e))}). Free space (or lower "
                    "cache_limit) and try again; nothing partial was kept.",
                    errno=e.errno,
                    filename=url,
                ) from e
            if _not_found(e):
                raise DatasetNotFoundError(f"{url}: {what} does not exist.", errno=errno.ENOENT, filename=url) from e
            if _denied(e):
                raise DatasetPermissionError(
                    f"{url}: permission denied for {what}; check the credentials (storage_options).",
                    errno=errno.EACCES,
                    filename=url,
                ) from e
            last = e
    raise RemoteError(
        f"{url}: reading or writing {what} failed {ATTEMPTS} times (retried with backoff). "
        f"Last error: {type(last).__name__}: {bounded_repr(str(last))}",
        errno=getattr(last, "errno", None),
        filename=url,
    ) from last


def read_bytes(url: str, storage_options: dict | None, what: str, max_bytes: int) -> bytes:
    """The whole object at ``url`` (a manifest), refused if larger than ``max_bytes``."""
    fs, path = filesystem(url, storage_options)
    data = retrying(url, what, lambda: fs.cat_file(path))
    if len(data) > max_bytes:
        raise FormatError(f"{url}: the {what} is larger than {max_bytes} bytes; it is not a memseq manifest.")
    return bytes(data)


def download(url: str, storage_options: dict | None, what: str, local_path: str) -> None:
    """Copies the object at ``url`` to the local file ``local_path`` (overwritten on each attempt)."""
    fs, path = filesystem(url, storage_options)
    retrying(url, what, lambda: fs.get_file(path, local_path))


def upload(local_path: str, url: str, storage_options: dict | None, what: str) -> None:
    """Copies the local file ``local_path`` to ``url`` (replacing it)."""
    fs, path = filesystem(url, storage_options)
    retrying(url, what, lambda: fs.put_file(local_path, path))


def exists(url: str, storage_options: dict | None, what: str) -> bool:
    """Whether an object exists at ``url``."""
    fs, path = filesystem(url, storage_options)
    return bool(retrying(url, what, lambda: fs.exists(path)))
