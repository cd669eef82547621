"""Build the tutorial notebooks from their Python sources and run them, so that the committed
``.ipynb`` files carry their outputs (tables, plots, widget state) and read well on GitHub.

The sources are ``notebooks/src/NN_name.py``, in the "percent" format (no dependency needed
to read it):

    # %% [markdown]
    # # A title
    # Prose, each line behind ``# ``.

    # %%
    code = "a code cell"   # runs as it is; top-level ``await`` is fine

Usage (from the repository root, with the project's virtual environment active, so that the
``python3`` kernel is this environment's Python)::

    python notebooks/build.py                 # write and run every notebook
    python notebooks/build.py 01 04           # only those whose name starts with 01 or 04
    python notebooks/build.py --no-execute    # write them without outputs
    python notebooks/build.py --sources-only  # new cell sources, the outputs kept

``07_running_on_aws`` needs a real AWS account: it is written without outputs unless
``KVSNB_TARGET=aws`` is set. A notebook whose run fails is not written (the old one stays)
and the build exits non-zero.

The file is not named ``test_*`` and has no tests: pytest does not collect it.
"""

from __future__ import annotations

import argparse
import ast
import os
import re
import sys
import time
from pathlib import Path

import nbformat
from nbclient import NotebookClient
from nbclient.exceptions import CellExecutionError

HERE = Path(__file__).resolve().parent
SOURCES = HERE / "src"
AWS_NOTEBOOK = "07_running_on_aws"
CELL_TIMEOUT_S = 300
KERNEL = {"name": "python3", "display_name": "Python 3 (ipykernel)", "language": "python"}
MARKER = re.compile(r"^# %%(?P<markdown> \[markdown\])?\s*$")


def parse_cells(text: str) -> list[tuple[str, str]]:
    """``(kind, source)`` of each cell of a percent-format source ("markdown" or "code")."""
    cells: list[tuple[str, list[str]]] = []
    for line in text.splitlines():
        match = MARKER.match(line)
        if match:
            cells.append(("markdown" if match.group("markdown") else "code", []))
        elif cells:
            cells[-1][1].append(line)
        elif line.strip() and not line.startswith("#"):
            raise ValueError(f"code before the first '# %%' marker: {line!r}")
    out = []
    for kind, lines in cells:
        if kind == "markdown":
            body = []
            for line in lines:
                if line and not line.startswith("#"):
                    raise ValueError(f"a markdown line must start with '#': {line!r}")
                body.append(line[2:] if line.startswith("# ") else line[1:])
            lines = body
        source = "\n".join(lines).strip("\n")
        if source.strip():
            out.append((kind, source))
    return out


def check_syntax(name: str, cells: list[tuple[str, str]]) -> None:
    """Compile every code cell (top-level ``await`` allowed) so that a typo fails the build
    at once, also for a notebook that is not run."""
    for i, (kind, source) in enumerate(cells):
        if kind == "code":
            try:
                compile(source, f"{name}[{i}]", "exec", flags=ast.PyCF_ALLOW_TOP_LEVEL_AWAIT)
            except SyntaxError as exc:
                raise SystemExit(f"{name}, cell {i}: {exc}") from exc


def make_notebook(name: str, cells: list[tuple[str, str]]) -> nbformat.NotebookNode:
    """A v4 notebook of the cells, with stable cell ids (small diffs between builds)."""
    nb = nbformat.v4.new_notebook()
    nb.metadata["kernelspec"] = dict(KERNEL)
    nb.metadata["language_info"] = {"name": "python"}
    for i, (kind, source) in enumerate(cells):
        make = nbformat.v4.new_markdown_cell if kind == "markdown" else nbformat.v4.new_code_cell
        cell = make(source)
        cell["id"] = f"{name[:2]}-{i:02d}"
        nb.cells.append(cell)
    return nb


def execute(nb: nbformat.NotebookNode) -> float:
    """Run the notebook in a fresh ``python3`` kernel with ``notebooks/`` as its working
    directory (as nbval and JupyterLab do); returns the seconds it took."""
    client = NotebookClient(
        nb,
        timeout=CELL_TIMEOUT_S,
        kernel_name=KERNEL["name"],
        resources={"metadata": {"path": str(HERE)}},
        record_timing=False,
        store_widget_state=True,
    )
    t0 = time.perf_counter()
    client.execute()
    return time.perf_counter() - t0


def update_sources(nb: nbformat.NotebookNode, cells: list[tuple[str, str]]) -> bool:
    """Give the cells of a built notebook the sources of ``cells``, keeping their outputs,
    when both line up (the same kinds in the same order); ``False`` (and ``nb`` unchanged)
    when they do not. For edits that change no output: comments, formatting, type hints."""
    if [c.cell_type for c in nb.cells] != [kind for kind, _ in cells]:
        return False
    for cell, (_, source) in zip(nb.cells, cells, strict=True):
        cell.source = source
    return True


def should_run(name: str, execute_all: bool) -> bool:
    if not execute_all:
        return False
    if name.startswith(AWS_NOTEBOOK):
        return os.environ.get("KVSNB_TARGET", "").strip().lower() == "aws"
    return True


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("only", nargs="*", help="build only notebooks whose name starts so")
    parser.add_argument("--no-execute", action="store_true", help="write without running")
    parser.add_argument(
        "--sources-only",
        action="store_true",
        help="update the cell sources of the written notebooks, keeping their outputs "
        "(fails for a notebook whose cells no longer line up with its source)",
    )
    args = parser.parse_args(argv)

    sources = sorted(SOURCES.glob("[0-9][0-9]_*.py"))
    if args.only:
        sources = [s for s in sources if any(s.stem.startswith(o) for o in args.only)]
    if not sources:
        print("no notebook sources matched", file=sys.stderr)
        return 2
    print(f"kernel: {KERNEL['name']} (python {sys.executable})")
    failed = []
    for src in sources:
        name = src.stem
        cells = parse_cells(src.read_text(encoding="utf-8"))
        check_syntax(name, cells)
        if args.sources_only:
            written = nbformat.read(HERE / f"{name}.ipynb", as_version=4)
            if not update_sources(written, cells):
                print(f"{name}: its cells no longer line up: build it", file=sys.stderr)
                failed.append(name)
                continue
            nbformat.validate(written)
            nbformat.write(written, HERE / f"{name}.ipynb")
            print(f"{name + '.ipynb':<30} sources updated, outputs kept")
            continue
        nb = make_notebook(name, cells)
        status = "written, not run"
        if should_run(name, not args.no_execute):
            try:
                seconds = execute(nb)
            except CellExecutionError as exc:
                print(f"{name}: FAILED\n{exc}", file=sys.stderr)
                failed.append(name)
                continue
            status = f"ran in {seconds:5.1f} s"
        elif name.startswith(AWS_NOTEBOOK) and not args.no_execute:
            status = "written, not run (set KVSNB_TARGET=aws to run it)"
        nbformat.validate(nb)
        nbformat.write(nb, HERE / f"{name}.ipynb")
        print(f"{name + '.ipynb':<30} {status}")
    if failed:
        print(f"failed: {', '.join(failed)}", file=sys.stderr)
        return 1
    return 0


if __name__ == "__main__":
    sys.exit(main())
