"""A Griffe extension for the API reference: ``Example:`` sections render as examples.

memseq's docstrings head doctest snippets with ``Example:``, which Griffe's Google
parser reads as an admonition of plain Markdown (so ``ds["image"][0:4]`` would be
taken for a Markdown link). Renamed ``Examples:``, they render as Python console code.
"""

from __future__ import annotations

import re
from typing import Any

import griffe

_EXAMPLE = re.compile(r"^(\s*)Example:[ \t]*$", re.MULTILINE)


class ExampleSections(griffe.Extension):
    """Renames ``Example:`` section headers to ``Examples:`` before docstrings are parsed."""

    def on_instance(self, *, obj: griffe.Object, **kwargs: Any) -> None:
        if obj.docstring is not None:
            obj.docstring.value = _EXAMPLE.sub(r"\1Examples:", obj.docstring.value)
