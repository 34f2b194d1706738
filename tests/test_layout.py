"""Size limits of the package's source: modules of at most 600 lines, functions of at most 80.

A function's length counts its lines of code: ``end_lineno - lineno + 1`` (decorators
excluded) minus the lines of its docstring and of comment-only or blank lines.
"""

from __future__ import annotations

import ast
import io
import pathlib
import tokenize

import memseq

MAX_MODULE_LINES = 600
MAX_FUNCTION_LINES = 80
ROOT = pathlib.Path(memseq.__file__).parent


def _modules() -> list[pathlib.Path]:
    return sorted(ROOT.rglob("*.py"))


def _code_lines(source: str) -> set[int]:
    """Line numbers that hold code: not blank, not only a comment."""
    lines = set()
    for token in tokenize.generate_tokens(io.StringIO(source).readline):
        if token.type in (tokenize.COMMENT, tokenize.NL, tokenize.NEWLINE, tokenize.INDENT, tokenize.DEDENT,
                          tokenize.ENDMARKER):
            continue
        lines.update(range(token.start[0], token.end[0] + 1))
    return lines


def function_lengths(path: pathlib.Path) -> list[tuple[str, int]]:
    """``(qualified name, lines of code)`` of every function and method in ``path``."""
    source = path.read_text()
    code = _code_lines(source)
    found = []

    def visit(node: ast.AST, prefix: str) -> None:
        for child in ast.iter_child_nodes(node):
            if isinstance(child, (ast.FunctionDef, ast.AsyncFunctionDef, ast.ClassDef)):
                name = f"{prefix}{child.name}"
                if not isinstance(child, ast.ClassDef):
                    span = set(range(child.lineno, child.end_lineno + 1)) & code
                    body = child.body
                    if body and isinstance(body[0], ast.Expr) and isinstance(getattr(body[0], "value", None), ast.Constant) \
                            and isinstance(body[0].value.value, str):
                        span -= set(range(body[0].lineno, body[0].end_lineno + 1))
                    found.append((name, len(span)))
                visit(child, name + ".")
            else:
                visit(child, prefix)

    visit(ast.parse(source), "")
    return found


def test_no_module_is_over_600_lines():
    long = {str(p.relative_to(ROOT)): n for p in _modules() if (n := len(p.read_text().splitlines())) > MAX_MODULE_LINES}
    assert long == {}


def test_no_function_is_over_80_lines_of_code():
    long = {
        f"{p.relative_to(ROOT)}:{name}": n
        for p in _modules()
        for name, n in function_lengths(p)
        if n > MAX_FUNCTION_LINES
    }
    assert long == {}
