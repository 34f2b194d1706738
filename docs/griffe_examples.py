"""A Griffe extension for the API reference: memseq's docstrings rendered as Markdown.

memseq's docstrings are Google style with a few reStructuredText habits, which the
Markdown renderer would show verbatim or misread:

- ``Example:`` heads doctest snippets; Griffe's Google parser reads it as an
  admonition of plain Markdown (so ``ds["image"][0:4]`` would be taken for a Markdown
  link). Renamed ``Examples:``, it renders as Python console code.
- Sphinx roles (``:class:`memseq.Writer```, ``:func:`~memseq.save```) become inline
  code of the name (the last component for ``~``), as Sphinx would display them.
"""

from __future__ import annotations

import re
from typing import Any

import griffe

_EXAMPLE = re.compile(r"^(\s*)Example:[ \t]*$", re.MULTILINE)
_ROLE = re.compile(r":(?:py:)?(?:class|func|meth|mod|attr|exc|data|obj):`(~?)([^`]+)`")


def _role(match: re.Match) -> str:
    tilde, target = match.groups()
    return f"`{target.rsplit('.', 1)[-1] if tilde else target}`"


class ExampleSections(griffe.Extension):
    """Rewrites ``Example:`` headers and Sphinx roles before docstrings are parsed."""

    def on_instance(self, *, obj: griffe.Object, **kwargs: Any) -> None:
        if obj.docstring is not None:
            text = _EXAMPLE.sub(r"\1Examples:", obj.docstring.value)
            obj.docstring.value = _ROLE.sub(_role, text)
