"""The documentation: the site builds strictly, and every code block of README and docs runs.

Code blocks (```` ```python ```` and ```` ```bash ````) of each page run in order, as a
user would paste them: the page's blocks in ONE fresh Python interpreter (a
subprocess, cwd a temporary directory of the page's own, so pages never share or
collide on data), bash blocks through ``bash -e`` in the same directory, at their
place in the page. Markers, an HTML comment on the line before a block:

- ``<!-- skip: why -->``: not run (an install, the one-minute demo, a cluster
  address); the text around the block says what to replace.
- ``<!-- fresh-process -->``: run in an interpreter of its own (a block that must
  set an environment variable before TensorFlow is imported).

A bash block that runs ``pip install`` is never run (the tests run in the environment
already installed; README's "The two commands" stay exactly as a user types them).
Untagged blocks (output shown as text) are not code and are not run.

Also here: the three newcomer frictions of issue 23 that live in the command's
modules (the demo's progress lines, ``bench``'s capped batch count, ``convert
--help``'s sources).
"""

from __future__ import annotations

import json
import os
import re
import subprocess
import sys
import textwrap
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parent.parent
DOCS = ROOT / "docs"
PAGES = [ROOT / "README.md", *sorted(DOCS.rglob("*.md"))]
RUN_LANGUAGES = ("python", "bash")
PAGE_TIMEOUT = 600

_FENCE = re.compile(r"^(\s*)```\s*([\w+-]*)\s*$")
_MARKER = re.compile(r"^<!--\s*(skip|fresh-process)\s*(?::\s*(.*?))?\s*-->\s*$")


def code_blocks(path: Path) -> list[dict]:
    """The fenced code blocks of a Markdown file, in order: language, line, code, marker.

    Raises:
        ValueError: For an indented ``python``/``bash`` fence (it would be easy to
            miss here), an unclosed fence, or a skip marker without a reason.
    """
    lines = path.read_text(encoding="utf-8").splitlines()
    blocks = []
    i = 0
    while i < len(lines):
        m = _FENCE.match(lines[i])
        if not m:
            i += 1
            continue
        indent, language = m.group(1), m.group(2).lower()
        if indent and language in RUN_LANGUAGES:
            raise ValueError(f"{path}:{i + 1}: an indented ```{language} block; start runnable blocks at column 0.")
        start = i
        i += 1
        body = []
        while i < len(lines) and not re.match(rf"^{re.escape(indent)}```\s*$", lines[i]):
            body.append(lines[i].removeprefix(indent))
            i += 1
        if i == len(lines):
            raise ValueError(f"{path}:{start + 1}: the code block never ends.")
        i += 1
        previous = next((lines[j] for j in range(start - 1, -1, -1) if lines[j].strip()), "")
        marker = _MARKER.match(previous.strip())
        kind, reason = (marker.group(1), marker.group(2)) if marker else (None, None)
        if kind == "skip" and not reason:
            raise ValueError(f"{path}:{start + 1}: a skip marker must say why (<!-- skip: needs ... -->).")
        blocks.append({"language": language, "line": start + 1, "code": "\n".join(body) + "\n",
                       "marker": kind, "reason": reason})
    return blocks


_INSTALL = re.compile(r"\bpip install\b")


def runnable(path: Path) -> list[dict]:
    """The blocks the tests run: python and bash, minus skips and installs."""
    return [
        b for b in code_blocks(path)
        if b["language"] in RUN_LANGUAGES and b["marker"] != "skip"
        and not (b["language"] == "bash" and _INSTALL.search(b["code"]))
    ]


# The driver a page's blocks run in: exec'd in __main__'s namespace (classes defined in
# a block pickle as a pasted session's would), so everything it does is guarded.
_DRIVER = textwrap.dedent(
    """\
    import json, linecache, subprocess, sys, time, traceback
    if __name__ == "__main__":
        page, blocks = json.load(open(sys.argv[1]))
        namespace = sys.modules["__main__"].__dict__
        for block in blocks:
            where = f"{page}:{block['line']}"
            print(f"--- running {block['language']} block at {where}", flush=True)
            started = time.perf_counter()
            if block["language"] == "bash":
                rc = subprocess.run(["bash", "-e", "-o", "pipefail", "-c", block["code"]]).returncode
            elif block["marker"] == "fresh-process":
                rc = subprocess.run([sys.executable, "-c", block["code"]]).returncode
            else:
                # Tracebacks show the block's lines, as for a file.
                linecache.cache[where] = (len(block["code"]), None, block["code"].splitlines(True), where)
                try:
                    exec(compile(block["code"], where, "exec"), namespace)
                    rc = 0
                except BaseException:
                    traceback.print_exc()
                    rc = 1
            sys.stdout.flush()
            sys.stderr.flush()
            print(f"--- {time.perf_counter() - started:.1f} s", flush=True)
            if rc != 0:
                print(f"--- FAILED: the {block['language']} block at {where} (exit code {rc})", flush=True)
                sys.exit(1)
        print("--- all blocks ran", flush=True)
    """
)


def _page_id(path: Path) -> str:
    return str(path.relative_to(ROOT)) if path.is_relative_to(ROOT) else str(path)


def test_collector_reads_markers_and_languages(tmp_path):
    page = tmp_path / "page.md"
    page.write_text(
        "text\n\n```python\nx = 1\n```\n\n<!-- skip: needs a Dask cluster -->\n```bash\nmemseq demo\n```\n\n"
        "<!-- fresh-process -->\n```python\ny = 2\n```\n\n```\noutput, not code\n```\n"
    )
    blocks = code_blocks(page)
    assert [(b["language"], b["line"], b["marker"]) for b in blocks] == [
        ("python", 3, None), ("bash", 8, "skip"), ("python", 13, "fresh-process"), ("", 17, None)]
    assert blocks[1]["reason"] == "needs a Dask cluster"
    assert [b["code"] for b in runnable(page)] == ["x = 1\n", "y = 2\n"]
    page.write_text("```bash\npython -m pip install -e . && memseq demo\n```\n\n```bash\nmemseq info d\n```\n")
    assert [b["code"] for b in runnable(page)] == ["memseq info d\n"]
    page.write_text("- item\n\n  ```python\n  x = 1\n  ```\n")
    with pytest.raises(ValueError, match="indented"):
        code_blocks(page)
    page.write_text("<!-- skip -->\n```bash\nls\n```\n")
    with pytest.raises(ValueError, match="must say why"):
        code_blocks(page)


def _run_page(path: Path, workdir: Path) -> subprocess.CompletedProcess:
    blocks = runnable(path)
    spec = workdir / ".blocks.json"
    spec.write_text(json.dumps([_page_id(path), blocks]))
    driver = workdir / ".run_blocks.py"
    driver.write_text(_DRIVER)
    env = dict(os.environ)
    env["PATH"] = os.path.dirname(sys.executable) + os.pathsep + env.get("PATH", "")
    env.setdefault("KERAS_BACKEND", "tensorflow")
    env.pop("TF_USE_LEGACY_KERAS", None)
    env["MPLBACKEND"] = "Agg"
    return subprocess.run([sys.executable, str(driver), str(spec)], cwd=workdir, env=env, capture_output=True,
                          text=True, timeout=PAGE_TIMEOUT, check=False)


def test_driver_reports_the_failing_block(tmp_path):
    page = tmp_path / "broken.md"
    page.write_text("```python\nx = 1\n```\n\n```bash\ntest -d nowhere\n```\n\n```python\nprint('never')\n```\n")
    # _page_id needs a path under ROOT: run through a copy of the driver directly.
    spec = tmp_path / "spec.json"
    spec.write_text(json.dumps(["broken.md", runnable(page)]))
    (tmp_path / "driver.py").write_text(_DRIVER)
    result = subprocess.run([sys.executable, "driver.py", "spec.json"], cwd=tmp_path, capture_output=True, text=True,
                            check=False)
    assert result.returncode == 1
    assert "FAILED: the bash block at broken.md:5" in result.stdout
    assert "never" not in result.stdout


@pytest.mark.slow
@pytest.mark.parametrize("page", [p for p in PAGES if runnable(p)], ids=_page_id)
def test_code_blocks_run(page, tmp_path):
    result = _run_page(page, tmp_path)
    assert result.returncode == 0, f"{_page_id(page)}:\n{result.stdout[-6000:]}\n{result.stderr[-6000:]}"
    assert "--- all blocks ran" in result.stdout


def test_every_skip_says_why_and_pages_parse():
    counts = {}
    for page in PAGES:
        blocks = code_blocks(page)
        counts[_page_id(page)] = sum(b["language"] in RUN_LANGUAGES for b in blocks)
    assert counts["README.md"] > 0


# --------------------------------------------------------------------------- the site


@pytest.mark.slow
def test_mkdocs_build_strict(tmp_path):
    result = subprocess.run([sys.executable, "-m", "mkdocs", "build", "--strict", "--site-dir", str(tmp_path / "site")],
                            cwd=ROOT, capture_output=True, text=True, timeout=600, check=False,
                            env={**os.environ, "NO_MKDOCS_2_WARNING": "1"})
    assert result.returncode == 0, result.stdout[-4000:] + result.stderr[-4000:]
    site = tmp_path / "site"
    for notebook in sorted((ROOT / "notebooks").glob("*.ipynb")):
        page = site / "notebooks" / notebook.stem / "index.html"
        assert page.is_file(), notebook.name
        # Executed by the build: every code cell that prints or plots shows its output.
        cells = json.loads(notebook.read_text())["cells"]
        printing = sum(c["cell_type"] == "code" and any(w in "".join(c["source"]) for w in ("print(", "show(")) for c in cells)
        assert page.read_text().count("jp-OutputArea-output") >= printing > 0, notebook.name
    reference = "".join(p.read_text() for p in (site / "reference").rglob("*.html"))
    assert 'id="memseq.batching.sequence.MemmapSequence"' in reference


def test_api_reference_covers_every_public_name():
    import importlib

    import memseq

    documented = set()
    for page in (DOCS / "reference").glob("*.md"):
        documented.update(re.findall(r"^::: ([\w.]+)", page.read_text(), re.MULTILINE))

    def resolve(dotted):
        module, _, name = dotted.rpartition(".")
        try:
            return getattr(importlib.import_module(module), name)
        except ModuleNotFoundError:
            return importlib.import_module(dotted)

    # MemmapSequence and BackupAndRestore import Keras: compared by name, not loaded here.
    lazy = {"MemmapSequence": "memseq.batching.sequence.MemmapSequence", "BackupAndRestore": "memseq.adapters.keras.callbacks.BackupAndRestore"}
    missing = []
    for name in memseq.__all__:
        if name in lazy:
            if lazy[name] not in documented:
                missing.append(name)
        elif not any(d.rsplit(".", 1)[-1] == name and resolve(d) is getattr(memseq, name) for d in documented):
            missing.append(name)
    assert not missing, f"public names without an API reference entry: {missing}"


# --------------------------------------------------------------------------- command frictions (issue 23)


def test_convert_help_lists_every_source():
    from memseq.cli import build_parser

    parser = build_parser()
    sub = next(a for a in parser._actions if a.dest == "command" or getattr(a, "choices", None) and "convert" in a.choices)
    text = sub.choices["convert"].format_help()
    for source in (".npz", ".npy", "HDF5", "raw", "image folder", "memseq dataset", "Zarr store", "glob of .npy",
                   "--tokens", "DIR/"):
        assert source.lower() in text.lower(), source


@pytest.mark.slow  # run_bench imports Keras
def test_bench_says_when_it_runs_fewer_batches(tmp_path, monkeypatch):
    import numpy as np

    import memseq
    from memseq import bench

    memseq.save(tmp_path / "d", {"x": np.zeros((100, 4), np.float32), "label": np.zeros(100, np.int64)})
    monkeypatch.setattr(bench, "_measure", lambda *args, **kwargs: [])
    logged = []
    bench.run_bench(str(tmp_path / "d"), batch_size=32, batches=10, methods=("sequence",), log=logged.append)
    assert any("3 full batch(es) of 32 rows: running 3" in m and "not the 10 asked for" in m for m in logged), logged
    logged.clear()
    bench.run_bench(str(tmp_path / "d"), batch_size=32, batches=2, methods=("sequence",), log=logged.append)
    assert not any("asked for" in m for m in logged), logged


@pytest.mark.slow
def test_demo_prints_progress_within_an_epoch():
    import keras

    from memseq.demo import _progress_callback

    lines = []
    callback = _progress_callback(keras, num_batches=5, batch_size=8, epochs=2, out=lines.append, interval=0.0)
    callback.on_epoch_begin(0)
    for batch in range(5):
        callback.on_train_batch_end(batch)
    assert lines[0] == "epoch 1/2: started, 5 batches"
    assert lines[-1].startswith("epoch 1/2: batch 5/5, ")
    assert "samples/s" in lines[-1]
    quiet = []
    callback = _progress_callback(keras, num_batches=5, batch_size=8, epochs=2, out=quiet.append, interval=3600.0)
    callback.on_epoch_begin(1)
    callback.on_train_batch_end(0)
    assert quiet == ["epoch 2/2: started, 5 batches"]


# --------------------------------------------------------------------------- README


def _example(path: Path) -> str:
    return next(b["code"] for b in code_blocks(path) if b["language"] == "python")


def test_readme_example_is_the_getting_started_example():
    # One complete example, the same in both places, so neither drifts from what runs.
    assert _example(ROOT / "README.md") == _example(DOCS / "index.md")
    assert "model.fit(seq" in _example(ROOT / "README.md")


def test_readme_keeps_the_two_commands_and_links_resolve():
    readme = (ROOT / "README.md").read_text()
    assert 'python -m pip install -e . && python -m memseq demo' in readme
    assert 'python -m pip install -e ".[test]" && python -m pytest' in readme
    for target in re.findall(r"\]\(((?:docs|notebooks)/[^)#]*)", readme):
        assert (ROOT / target).exists(), target
