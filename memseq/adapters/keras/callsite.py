"""Warnings shown at the user's line: the first frame outside memseq, Keras and TensorFlow.

memseq wraps Keras' adapter lookup, so a Keras warning raised there with
``stacklevel=2`` would name memseq's wrapper; :func:`warnings_at_caller` re-emits
such warnings at the line that called ``fit``, ``evaluate`` or ``predict``.
"""

from __future__ import annotations

import os
import sys
import warnings

__all__ = ["warn_at_caller", "warnings_at_caller"]


def _package_dirs() -> tuple[str, ...]:
    dirs = [os.path.dirname(os.path.dirname(os.path.dirname(os.path.abspath(__file__))))]  # memseq/
    for name in ("keras", "tf_keras", "tensorflow"):
        module = sys.modules.get(name)
        path = getattr(module, "__file__", None)
        if path:
            dirs.append(os.path.dirname(os.path.abspath(path)))
    return tuple(d + os.sep for d in dirs)


def _internal(filename: str, dirs: tuple[str, ...]) -> bool:
    # Frozen import machinery (<frozen importlib._bootstrap>) is never the user's line either.
    return filename.startswith("<frozen ") or os.path.abspath(filename).startswith(dirs)


def _caller() -> tuple[str, int, dict]:
    """``(filename, lineno, module globals)`` of the innermost frame outside memseq, Keras and TensorFlow."""
    dirs = _package_dirs()
    frame = sys._getframe(1)
    outermost = frame
    while frame is not None:
        if not _internal(frame.f_code.co_filename, dirs):
            return frame.f_code.co_filename, frame.f_lineno, frame.f_globals
        outermost = frame
        frame = frame.f_back
    return outermost.f_code.co_filename, outermost.f_lineno, outermost.f_globals


def _emit(message: Warning | str, category: type[Warning], filename: str, lineno: int, module_globals: dict) -> None:
    module = module_globals.get("__name__", "<string>")
    registry = module_globals.setdefault("__warningregistry__", {})
    # No module_globals: its loader may not serve source (``python -c``'s __main__ raises).
    warnings.warn_explicit(message, category, filename, lineno, module=module, registry=registry)


def warn_at_caller(message: str, category: type[Warning] = UserWarning) -> None:
    """Warns ``message`` at the user's line (subject to the user's warning filters)."""
    _emit(message, category, *_caller())


class warnings_at_caller:  # noqa: N801  (used as a context manager, like warnings.catch_warnings)
    """Re-emits the warnings that memseq, Keras or TensorFlow code raises in the block at the user's line.

    Warnings are recorded with every filter set to "always", then re-emitted once each
    when the block ends (also when it raises), so the user's own filters (``ignore``,
    ``error``, ``once``) decide at the user's line, as they would for a warning raised
    there. Warnings that name any other file keep their location.
    """

    def __enter__(self) -> None:
        self._recorder = warnings.catch_warnings(record=True)
        self._caught = self._recorder.__enter__()
        warnings.simplefilter("always")

    def __exit__(self, *exc_info: object) -> None:
        self._recorder.__exit__(*exc_info)  # the user's filters are back before re-emitting
        if not self._caught:
            return
        dirs = _package_dirs()
        where = _caller()
        for item in self._caught:
            if _internal(item.filename, dirs):
                _emit(item.message, item.category, *where)
            else:
                warnings.warn_explicit(item.message, item.category, item.filename, item.lineno, source=item.source)
