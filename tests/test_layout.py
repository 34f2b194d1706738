"""Size limits of the source: package modules of at most 600 lines; functions of at most 80, in the
package, ``benchmarks/`` and ``tests/``.

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
REPO = pathlib.Path(__file__).resolve().parents[1]
_NOT_CODE = {tokenize.COMMENT, tokenize.NL, tokenize.NEWLINE, tokenize.INDENT, tokenize.DEDENT, tokenize.ENDMARKER}


def _modules() -> list[pathlib.Path]:
    return sorted(ROOT.rglob("*.py"))


def _scripts() -> list[pathlib.Path]:
    """The benchmarks' and the tests' Python files."""
    return sorted(p for folder in ("benchmarks", "tests") for p in (REPO / folder).rglob("*.py"))


def _code_lines(source: str) -> set[int]:
    """Line numbers that hold code: not blank, not only a comment."""
    lines = set()
    for token in tokenize.generate_tokens(io.StringIO(source).readline):
        if token.type in _NOT_CODE:
            continue
        lines.update(range(token.start[0], token.end[0] + 1))
    return lines


def function_lengths(source: str) -> list[tuple[str, int]]:
    """``(qualified name, lines of code)`` of every function and method in ``source``."""
    code = _code_lines(source)
    found = []

    def visit(node: ast.AST, prefix: str) -> None:
        for child in ast.iter_child_nodes(node):
            if isinstance(child, (ast.FunctionDef, ast.AsyncFunctionDef, ast.ClassDef)):
                name = f"{prefix}{child.name}"
                if not isinstance(child, ast.ClassDef):
                    span = set(range(child.lineno, child.end_lineno + 1)) & code
                    if ast.get_docstring(child, clean=False) is not None:
                        docstring = child.body[0]
                        span -= set(range(docstring.lineno, docstring.end_lineno + 1))
                    found.append((name, len(span)))
                visit(child, name + ".")
            else:
                visit(child, prefix)

    visit(ast.parse(source), "")
    return found


def test_function_lengths_count_code_only():
    source = '''
def f(x):
    """A docstring

    of three lines."""
    # a comment

    return (x +
            1)
'''
    assert function_lengths(source) == [("f", 3)]


def test_no_module_is_over_600_lines():
    long = {str(p.relative_to(ROOT)): n for p in _modules() if (n := len(p.read_text().splitlines())) > MAX_MODULE_LINES}
    assert long == {}


def test_no_function_is_over_80_lines_of_code():
    long = {
        f"{p.relative_to(ROOT)}:{name}": n
        for p in _modules()
        for name, n in function_lengths(p.read_text())
        if n > MAX_FUNCTION_LINES
    }
    assert long == {}


def test_no_function_in_benchmarks_or_tests_is_over_80_lines_of_code():
    scripts = _scripts()
    assert any(p.parent.name == "benchmarks" for p in scripts), "no benchmarks found"  # the scan looks where they are
    long = {
        f"{p.relative_to(REPO)}:{name}": n
        for p in scripts
        for name, n in function_lengths(p.read_text())
        if n > MAX_FUNCTION_LINES
    }
    assert long == {}


def test_benchmark_scripts_import_only_their_common_module():
    scripts = {p.stem for p in (REPO / "benchmarks").glob("*.py")}
    imported = {}
    for p in sorted((REPO / "benchmarks").glob("*.py")):
        for node in ast.walk(ast.parse(p.read_text())):
            names = [a.name for a in node.names] if isinstance(node, ast.Import) else []
            if isinstance(node, ast.ImportFrom) and node.module:
                names = [node.module]
            siblings = {name.split(".")[0] for name in names} & scripts - {"_common"}
            if siblings:
                imported[p.name] = sorted(siblings)
    assert imported == {}
