"""Strict reading of the manifest's JSON values: required keys, exact types, no unknown keys.

Small helpers for :mod:`memseq.storage.format`'s parsers; each failure is a
:class:`~memseq.FormatError` that names the manifest, the place in it and the value.
"""

from __future__ import annotations

from typing import Any

from memseq.errors import FormatError
from memseq.storage.npy import MAX_ROWS
from memseq.util.checks import bounded_repr

__all__ = ["count", "expect", "json_object", "no_unknown_keys"]


def expect(obj: Any, key: str, kind: type | tuple[type, ...], where: str, path: str) -> Any:
    if not isinstance(obj, dict) or key not in obj:
        raise FormatError(f"{path}: {where} is missing the key {key!r}.")
    value = obj[key]
    # bool is an int subclass; JSON true/false must never pass as a number.
    if isinstance(value, bool) and bool not in (kind if isinstance(kind, tuple) else (kind,)):
        raise FormatError(f"{path}: {where}[{key!r}] has the wrong type. Received: {bounded_repr(value)}")
    if not isinstance(value, kind):
        raise FormatError(f"{path}: {where}[{key!r}] has the wrong type. Received: {bounded_repr(value)}")
    return value


def no_unknown_keys(obj: dict, allowed: set[str], where: str, path: str) -> None:
    unknown = sorted(set(obj) - allowed)
    if unknown:
        raise FormatError(f"{path}: {where} has unknown keys {bounded_repr(unknown)}; allowed: {sorted(allowed)}.")


def count(obj: dict, key: str, where: str, path: str) -> int:
    value = expect(obj, key, int, where, path)
    if value < 0:
        raise FormatError(f"{path}: {where}[{key!r}] must be >= 0. Received: {bounded_repr(value)}")
    if value > MAX_ROWS:
        raise FormatError(f"{path}: {where}[{key!r}] must be <= 2**63 - 1. Received: {bounded_repr(value)}")
    return value


def json_object(value: Any, allowed: set[str], where: str, path: str) -> dict:
    """``value`` if it is a JSON object with no keys but ``allowed``."""
    if not isinstance(value, dict):
        raise FormatError(f"{path}: {where} must be an object. Received: {bounded_repr(value)}")
    no_unknown_keys(value, allowed, where, path)
    return value
