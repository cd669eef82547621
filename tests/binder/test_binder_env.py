"""The Binder environment, built the way Binder (repo2docker) builds it, runs the notebooks'
imports.

repo2docker makes an environment with the Python of ``binder/runtime.txt``, installs
``binder/requirements.txt`` with pip, then runs ``binder/postBuild`` from the repository
root with that environment first on PATH. This test does the same in a throwaway virtual
environment (pip's cache is allowed, so a second run is quicker), then imports, in that
environment, every module the notebooks import: the imports are read from the code cells of
``notebooks/*.ipynb`` with ``ast``, so the test follows the notebooks as they change. It also
checks that JupyterLab has the widget front end the notebooks' widgets need.

It needs the network (PyPI) and takes a minute or two.
"""

from __future__ import annotations

import ast
import json
import os
import re
import shutil
import subprocess
import sys
import textwrap
from dataclasses import dataclass
from pathlib import Path

import pytest

REPO = Path(__file__).resolve().parents[2]
BINDER = REPO / "binder"
NOTEBOOKS = REPO / "notebooks"
WIDGETS_EXTENSION = "@jupyter-widgets/jupyterlab-manager"


def runtime_python() -> str:
    """The Python that ``binder/runtime.txt`` asks for, e.g. "3.11"."""
    text = (BINDER / "runtime.txt").read_text(encoding="utf-8").strip()
    match = re.fullmatch(r"python-(\d+\.\d+)(\.\d+)?", text)
    assert match, f"binder/runtime.txt should read like python-3.11, not {text!r}"
    return match.group(1)


def find_interpreter(version: str) -> str | None:
    """An interpreter of that version: ``pythonX.Y`` on PATH, or the one running pytest."""
    found = shutil.which(f"python{version}")
    if found:
        return found
    if f"{sys.version_info.major}.{sys.version_info.minor}" == version:
        return getattr(sys, "_base_executable", sys.executable)
    return None


def notebook_imports(paths: list[Path]) -> dict[str, set[str]]:
    """Absolute imports of the notebooks' code cells: module → names imported from it
    (empty for ``import module``). IPython magics and shell lines are left out."""
    found: dict[str, set[str]] = {}
    for path in paths:
        nb = json.loads(path.read_text(encoding="utf-8"))
        for i, cell in enumerate(nb["cells"]):
            if cell["cell_type"] != "code":
                continue
            source = "".join(cell["source"])
            lines = [ln for ln in source.splitlines() if not ln.lstrip().startswith(("%", "!"))]
            try:
                tree = ast.parse("\n".join(lines))  # top-level await parses fine
            except SyntaxError as exc:
                raise AssertionError(f"{path.name}, cell {i}: {exc}") from exc
            for node in ast.walk(tree):
                if isinstance(node, ast.Import):
                    for alias in node.names:
                        found.setdefault(alias.name, set())
                elif isinstance(node, ast.ImportFrom) and node.level == 0 and node.module:
                    found.setdefault(node.module, set()).update(a.name for a in node.names)
    return found


CHECK_IMPORTS = textwrap.dedent(
    """
    import importlib, json, sys
    failures = []
    for module, names in json.loads(sys.argv[1]).items():
        try:
            mod = importlib.import_module(module)
            for name in names:
                if not hasattr(mod, name):
                    importlib.import_module(f"{module}.{name}")  # a submodule
        except Exception as exc:
            failures.append(f"{module} {sorted(names)}: {type(exc).__name__}: {exc}")
    print("\\n".join(failures))
    sys.exit(1 if failures else 0)
    """
)


def run(cmd: list[str], *, cwd: Path, env: dict[str, str], timeout: float) -> str:
    """Run a command; on failure, fail with its output."""
    proc = subprocess.run(
        cmd, cwd=cwd, env=env, capture_output=True, text=True, timeout=timeout, check=False
    )
    if proc.returncode != 0:
        pytest.fail(
            f"{' '.join(cmd)} exited {proc.returncode}\n"
            f"--- stdout\n{proc.stdout[-4000:]}\n--- stderr\n{proc.stderr[-4000:]}"
        )
    return proc.stdout


def test_apt_lists_only_what_repo2docker_lacks() -> None:
    """repo2docker's environment has Node.js 20 with npm ahead of the system on PATH, so
    ``apt.txt`` installs neither (Debian's npm alone is about 420 packages); coturn (Local
    KVS's TURN server) stays."""
    packages = (BINDER / "apt.txt").read_text(encoding="utf-8").split()
    assert "coturn" in packages
    assert not {"nodejs", "npm"} & set(packages), packages


def test_notebook_imports_are_found() -> None:
    """The import scan itself: it sees the notebooks and what they use."""
    paths = sorted(NOTEBOOKS.glob("*.ipynb"))
    assert paths, "no notebooks in notebooks/"
    imports = notebook_imports(paths)
    assert "kvsnb" in imports
    assert "SessionPanel" in imports.get("kvsnb.widgets", set())
    assert "TrackTester" in imports.get("kvsnb.widgets", set())


@dataclass
class BinderEnv:
    """A Binder environment built by ``build_binder_env``: its venv, ``bin`` directory,
    Python and the environment variables to run its commands with."""

    venv: Path
    bin_dir: Path
    python: str
    env: dict[str, str]


def build_binder_env(tmp_path: Path) -> BinderEnv:
    """Build the Binder environment in ``tmp_path/binder-env`` as repo2docker does: a venv of
    ``binder/runtime.txt``'s Python, ``binder/requirements.txt`` with pip, then
    ``binder/postBuild`` from the repository root (skips when that Python is missing)."""
    version = runtime_python()
    python = find_interpreter(version)
    if python is None:
        pytest.skip(f"no Python {version} here (binder/runtime.txt asks for it)")
    venv = tmp_path / "binder-env"
    run([python, "-m", "venv", str(venv)], cwd=tmp_path, env=dict(os.environ), timeout=120)
    bin_dir = venv / "bin"
    env = {k: v for k, v in os.environ.items() if k not in ("PYTHONPATH", "PYTHONHOME")}
    env.update(
        PATH=f"{bin_dir}{os.pathsep}{env.get('PATH', '')}",
        VIRTUAL_ENV=str(venv),
        PIP_DISABLE_PIP_VERSION_CHECK="1",
        MPLBACKEND="Agg",
    )
    py = str(bin_dir / "python")
    # what repo2docker does: requirements.txt, then postBuild from the repository root
    run(
        [py, "-m", "pip", "install", "-q", "-r", str(BINDER / "requirements.txt")],
        cwd=REPO,
        env=env,
        timeout=900,
    )
    post_build = BINDER / "postBuild"
    cmd = [str(post_build)] if os.access(post_build, os.X_OK) else ["bash", str(post_build)]
    run(cmd, cwd=REPO, env=env, timeout=900)
    return BinderEnv(venv, bin_dir, py, env)


@pytest.mark.slow
@pytest.mark.timeout(1200)
def test_binder_environment_runs_the_notebooks_imports(
    tmp_path: Path, binder_env: BinderEnv
) -> None:
    imports = notebook_imports(sorted(NOTEBOOKS.glob("*.ipynb")))
    built = binder_env
    venv, bin_dir, py, env = built.venv, built.bin_dir, built.python, built.env

    where = run(
        [py, "-c", "import kvsnb, sys; print(kvsnb.__file__); print(sys.prefix)"],
        cwd=tmp_path,
        env=env,
        timeout=120,
    ).split()
    assert Path(where[0]).resolve().is_relative_to(REPO), where  # kvsnb from this checkout
    assert Path(where[1]).resolve() == venv.resolve(), where  # in the Binder environment

    # jupyter-server-proxy, enabled in the Jupyter server: the browser reaches Local KVS
    # under <base_url>proxy/PORT/ through it
    run([py, "-c", "import jupyter_server_proxy"], cwd=tmp_path, env=env, timeout=120)
    server_extensions = subprocess.run(
        [str(bin_dir / "jupyter"), "server", "extension", "list"],
        cwd=tmp_path,
        env=env,
        capture_output=True,
        text=True,
        timeout=120,
        check=True,
    )
    listed = re.sub(r"\x1b\[[0-9;]*m", "", server_extensions.stdout + server_extensions.stderr)
    assert re.search(r"jupyter_server_proxy\s+enabled", listed), listed

    payload = json.dumps({module: sorted(names) for module, names in sorted(imports.items())})
    run([py, "-c", CHECK_IMPORTS, payload], cwd=tmp_path, env=env, timeout=300)

    # JupyterLab with the ipywidgets front end, and a python3 kernel of this environment
    extensions = subprocess.run(
        [str(bin_dir / "jupyter"), "labextension", "list"],
        cwd=tmp_path,
        env=env,
        capture_output=True,
        text=True,
        timeout=120,
        check=True,
    )
    assert WIDGETS_EXTENSION in extensions.stdout + extensions.stderr
    specs = json.loads(
        run(
            [str(bin_dir / "jupyter"), "kernelspec", "list", "--json"],
            cwd=tmp_path,
            env=env,
            timeout=120,
        )
    )
    assert "python3" in specs["kernelspecs"]
