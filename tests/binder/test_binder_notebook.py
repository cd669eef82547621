"""Notebook 09 (the Player tutorial) runs to its end in the Binder environment, built the way
repo2docker builds it (the ``binder_env`` fixture, ``build_binder_env`` of
``test_binder_env.py``: requirements, then postBuild, in a fresh venv), with nbclient and
that environment's own ``python3`` kernel: no browser, so the players are shown and not
waited on, as under nbval.

It needs the network (PyPI) and takes a few minutes.
"""

from __future__ import annotations

import json
import shutil
import textwrap
from pathlib import Path

import pytest

from tests.binder.test_binder_env import NOTEBOOKS, BinderEnv, run

NOTEBOOK = "09_player.ipynb"
CELL_TIMEOUT_S = 300

# run in the Binder environment's Python: execute the notebook in its python3 kernel, with
# one cell more that says which Python the kernel is; the outputs as JSON
EXECUTE = textwrap.dedent(
    """
    import json, sys
    import nbformat
    from nbclient import NotebookClient

    path, workdir, timeout = sys.argv[1], sys.argv[2], int(sys.argv[3])
    nb = nbformat.read(path, as_version=4)
    nb.cells.append(nbformat.v4.new_code_cell("import sys; print('kernel-prefix', sys.prefix)"))
    NotebookClient(
        nb, timeout=timeout, kernel_name="python3", resources={"metadata": {"path": workdir}}
    ).execute()
    outputs = []
    for cell in nb.cells:
        if cell.cell_type != "code":
            continue
        outputs.append({
            "count": cell.execution_count,
            "types": [o.output_type for o in cell.outputs],
            "text": "".join(o.get("text", "") for o in cell.outputs),
            "errors": [o.ename + ": " + o.evalue for o in cell.outputs if o.output_type == "error"],
        })
    print(json.dumps(outputs))
    """
)


@pytest.mark.slow
@pytest.mark.timeout(1800)
def test_notebook_09_runs_to_the_end_in_the_binder_environment(
    tmp_path: Path, binder_env: BinderEnv
) -> None:
    built = binder_env
    work = tmp_path / "notebooks"
    work.mkdir()
    shutil.copy(NOTEBOOKS / NOTEBOOK, work / NOTEBOOK)
    env = dict(built.env)
    # no user kernelspecs or config: python3 is the Binder environment's own kernel
    for name, sub in (("JUPYTER_DATA_DIR", "data"), ("JUPYTER_CONFIG_DIR", "config")):
        env[name] = str(tmp_path / "jupyter" / sub)
    env["JUPYTER_PLATFORM_DIRS"] = "1"
    out = run(
        [built.python, "-c", EXECUTE, str(work / NOTEBOOK), str(work), str(CELL_TIMEOUT_S)],
        cwd=work,
        env=env,
        timeout=1200,
    )
    cells = json.loads(out.strip().splitlines()[-1])
    assert all(c["count"] is not None for c in cells), [c["count"] for c in cells]
    assert not [e for c in cells for e in c["errors"]], cells
    text = "".join(c["text"] for c in cells)
    assert "Local KVS reached by the browser at:" in text, text[:1000]
    assert "no browser shows this player (a headless run)" in text, text[:2000]
    assert "frames decoded" in text, text[-2000:]
    widgets = sum("execute_result" in c["types"] for c in cells)
    assert widgets >= 4, cells  # the four players were displayed
    prefix = text.split("kernel-prefix", 1)[1].split()[0]
    assert Path(prefix).resolve() == built.venv.resolve(), prefix
