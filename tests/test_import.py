"""`import memseq` stays light: no TensorFlow, no Keras until a Keras part is used."""

from __future__ import annotations

import json

import memseq


def test_import_memseq_does_not_import_tensorflow_or_keras(run_python):
    result = run_python(
        """
        import json, sys
        import memseq
        import memseq.storage.format, memseq.read.dataset, memseq.write.writer, memseq.errors
        heavy = sorted(m for m in sys.modules if m.split(".")[0] in ("tensorflow", "keras", "tf_keras"))
        print(json.dumps({"heavy": heavy, "all": memseq.__all__}))
        """
    )
    assert result.returncode == 0, result.stderr
    report = json.loads(result.stdout.strip().splitlines()[-1])
    assert report["heavy"] == []
    # The lazy MemmapSequence is still advertised as a public name.
    assert "MemmapSequence" in report["all"]


def test_foundation_works_without_tensorflow_importable(run_python, tmp_path):
    # Block tensorflow and keras entirely: writing and reading must still work.
    result = run_python(
        """
        import sys
        for name in ("tensorflow", "keras", "tf_keras"):
            sys.modules[name] = None  # makes `import name` raise ImportError
        import numpy as np
        import memseq
        memseq.save("ds", {"x": np.arange(6, dtype=np.int32).reshape(3, 2)})
        print(memseq.open("ds")["x"][[2, 0]].tolist())
        """
    )
    assert result.returncode == 0, result.stderr
    assert result.stdout.strip() == "[[4, 5], [0, 1]]"
    assert (tmp_path / "ds" / "memseq.json").is_file()


def _memseq_imports() -> dict[str, set[str]]:
    """Module -> the memseq modules it imports anywhere in its source (function-level imports included)."""
    import ast
    import pathlib

    root = pathlib.Path(memseq.__file__).parent
    modules = {}
    for path in root.rglob("*.py"):
        parts = path.relative_to(root.parent).with_suffix("").parts
        name = ".".join(parts[:-1] if parts[-1] == "__init__" else parts)
        modules[name] = path
    graph: dict[str, set[str]] = {}
    for name, path in modules.items():
        package = name if path.name == "__init__.py" else name.rpartition(".")[0]
        targets = set()
        for node in ast.walk(ast.parse(path.read_text())):
            if isinstance(node, ast.Import):
                candidates = [alias.name for alias in node.names]
            elif isinstance(node, ast.ImportFrom):
                base = node.module or ""
                if node.level:
                    base = ".".join(package.split(".")[: len(package.split(".")) - node.level + 1] + ([base] if base else []))
                candidates = [base] + [f"{base}.{alias.name}" for alias in node.names]
            else:
                continue
            found = {c for c in candidates if c in modules and c != name}
            # Importing "a.b.c" runs the __init__ of every package on the way ("a.b").
            for c in list(found):
                parts = c.split(".")
                found |= {".".join(parts[:k]) for k in range(2, len(parts)) if ".".join(parts[:k]) in modules}
            # A module's own packages are already being imported when it runs: not a cycle.
            targets |= {t for t in found if t != name and not name.startswith(t + ".")}
        graph[name] = targets
    return graph


def test_the_package_import_graph_has_no_cycle():
    graph = _memseq_imports()
    # `memseq/__init__.py` re-exports public names: every module's imports of the
    # package root are of its submodules' names, so edges into "memseq" are ignored.
    graph = {name: {t for t in targets if t != "memseq"} for name, targets in graph.items()}
    visiting, done, cycles = set(), set(), []

    def visit(node, stack):
        visiting.add(node)
        for target in sorted(graph[node]):
            if target in visiting:
                cycles.append(stack[stack.index(target):] + [target])
            elif target not in done:
                visit(target, stack + [target])
        visiting.discard(node)
        done.add(node)

    for node in sorted(graph):
        if node not in done:
            visit(node, [node])
    assert cycles == [], f"import cycles: {cycles}"


# The layers, lowest first. A module may import modules of its own layer and of lower
# layers only, never of a higher one, not even inside a function. Old import paths
# (``memseq.format``, ``memseq.dataset``, ...) are thin re-export modules on top.
LAYERS = [
    ("foundation", ["memseq.errors", "memseq.util", "memseq.augment"]),
    ("storage", ["memseq.storage"]),
    ("remote", ["memseq.remote"]),
    ("order", ["memseq.order"]),
    ("readahead", ["memseq.readahead"]),
    ("read", ["memseq.read"]),
    ("write", ["memseq.write"]),
    ("batching", ["memseq.batching"]),
    ("adapters", ["memseq.adapters"]),
    ("convert", ["memseq.convert"]),
    ("top", ["memseq", "memseq.__main__", "memseq.cli", "memseq.bench", "memseq.demo"]
     + [f"memseq.{name}" for name in ("format", "dataset", "writer", "tfdata", "columns", "raw", "ragged",
                                       "windows", "sequence", "callbacks")]),
]
# The only imports against the layers: one-line delegations of MemmapSequence's
# ``to_tf_dataset()`` and ``to_grain()`` to their adapters.
ALLOWED_UPWARD = {("memseq.batching.sequence", "memseq.adapters.tf_data"), ("memseq.batching.sequence", "memseq.adapters.grain"),
                  ("memseq.batching.sequence", "memseq.adapters")}


def _layer_of(module: str) -> int:
    best = None
    for rank, (_, prefixes) in enumerate(LAYERS):
        for prefix in prefixes:
            if module == prefix or (prefix != "memseq" and module.startswith(prefix + ".")):
                if best is None or len(prefix) > best[1]:
                    best = (rank, len(prefix))
    assert best is not None, f"{module} belongs to no layer: add it to LAYERS"
    return best[0]


def test_every_import_follows_the_layer_order():
    graph = _memseq_imports()
    against = sorted(
        f"{module} ({LAYERS[_layer_of(module)][0]}) imports {target} ({LAYERS[_layer_of(target)][0]})"
        for module, targets in graph.items()
        for target in targets
        if target != "memseq" and _layer_of(target) > _layer_of(module) and (module, target) not in ALLOWED_UPWARD
    )
    assert against == []


def test_nothing_inside_imports_the_compatibility_modules():
    graph = _memseq_imports()
    shims = {f"memseq.{name}" for name in ("format", "dataset", "writer", "tfdata", "columns", "raw", "ragged", "windows", "sequence", "callbacks")}
    top = _layer_of("memseq.cli")
    users = sorted(f"{m} -> {t}" for m, targets in graph.items() for t in targets & shims if _layer_of(m) < top)
    assert users == []


def test_layers_of_one_rank_do_not_import_each_other():
    graph = _memseq_imports()
    top = _layer_of("memseq.cli")

    def package(module: str) -> str:
        return ".".join(module.split(".")[:2])

    sideways = sorted(
        f"{m} -> {t}" for m, targets in graph.items() for t in targets
        if t != "memseq" and _layer_of(m) == _layer_of(t) < top and package(m) != package(t)
        and not {package(m), package(t)} <= {"memseq.errors", "memseq.util", "memseq.augment"}
    )
    assert sideways == []
