"""kvsnb's wheel works on its own: installed into a fresh virtual environment outside the
tree, with no Node.js on PATH, its command runs (``--version``, a short ``demo``, ``local``),
every widget imports, the ``Player`` loading hls.js and dash.js from the installed package,
where the build put them with their licences, and the quickstart notebook runs. A copy of
the tree without the libraries (a fresh clone) builds a wheel with them: the build fetches
them (npm).

It builds the wheel (``conftest.wheel``, once per run) and installs it with all its
dependencies: about a minute with pip's cache (the network the first time).
"""

from __future__ import annotations

import json
import os
import shutil
import signal
import subprocess
import sys
import textwrap
import zipfile
from collections.abc import Iterator
from pathlib import Path

import pytest

import kvsnb
from kvsnb.widgets.vendor import LIBRARIES
from tests.conftest import wait_until_sync

REPO = Path(__file__).resolve().parents[2]
INSTALL_TIMEOUT_S = 900
RUN_TIMEOUT_S = 300
# Programs the installed kvsnb may run: coturn's TURN server (optional: without it Local KVS
# runs with host candidates and says so)
TOOLS = ("turnserver",)

pytestmark = pytest.mark.timeout(INSTALL_TIMEOUT_S + 2 * RUN_TIMEOUT_S)


@pytest.fixture(scope="module")
def installed(wheel: Path, tmp_path_factory: pytest.TempPathFactory) -> Iterator[dict[str, str]]:
    """A fresh venv outside the tree with the wheel installed; yields the environment to run
    it in: PATH is the venv's bin and the tools above, so no Node.js, and the working
    directory will be a temporary one, so nothing is imported from the tree."""
    root = tmp_path_factory.mktemp("wheel-venv")
    assert REPO not in root.parents
    venv = root / "venv"
    base = getattr(sys, "_base_executable", sys.executable)
    subprocess.run([base, "-m", "venv", str(venv)], check=True, timeout=RUN_TIMEOUT_S)
    tools = root / "tools"
    tools.mkdir()
    for name in TOOLS:
        found = shutil.which(name)
        if found:
            (tools / name).symlink_to(found)
    env = {
        key: value
        for key, value in os.environ.items()
        if not key.startswith(("VIRTUAL_ENV", "PYTHON", "KVSNB_"))
    }
    env["PATH"] = f"{venv / 'bin'}{os.pathsep}{tools}"
    env["MPLBACKEND"] = "Agg"
    assert shutil.which("node", path=env["PATH"]) is None
    assert shutil.which("npm", path=env["PATH"]) is None
    done = subprocess.run(
        [str(venv / "bin" / "python"), "-m", "pip", "install", "-q", str(wheel)],
        cwd=root,
        env=env,
        capture_output=True,
        text=True,
        timeout=INSTALL_TIMEOUT_S,
    )
    assert done.returncode == 0, (
        f"pip install failed:\n{done.stdout[-3000:]}\n{done.stderr[-3000:]}"
    )
    env["KVSNB_TEST_ROOT"] = str(root)
    yield env


def run(env: dict[str, str], *args: str) -> subprocess.CompletedProcess[str]:
    """Run a program of the installed venv in its temporary root."""
    return subprocess.run(
        list(args),
        cwd=env["KVSNB_TEST_ROOT"],
        env=env,
        capture_output=True,
        text=True,
        timeout=RUN_TIMEOUT_S,
    )


def test_wheel_carries_the_front_ends_and_libraries(wheel: Path) -> None:
    """The widgets' JavaScript and each browser library with its licence and version stamp
    are in the wheel; no Node.js project files are."""
    names = set(zipfile.ZipFile(wheel).namelist())
    for js in (REPO / "kvsnb" / "widgets").glob("*.js"):
        assert f"kvsnb/widgets/{js.name}" in names
    for lib in LIBRARIES.values():
        base = f"kvsnb/widgets/static/vendor/{lib.filename}"
        assert {base, f"{base}.LICENSE", f"{base}.version"} <= names, lib.spec
    assert not any(n.endswith(("package.json", "node_modules/")) for n in names)


def test_build_fetches_the_libraries(tmp_path: Path) -> None:
    """A tree without the libraries (a fresh clone) builds a wheel with them: the build
    fetches them from the npm registry itself."""
    if shutil.which("npm") is None:
        pytest.skip("npm is not on PATH (make setup installs it)")
    files = subprocess.run(
        ["git", "ls-files", "-co", "--exclude-standard", "-z"],
        cwd=REPO,
        capture_output=True,
        check=True,
        timeout=RUN_TIMEOUT_S,
    ).stdout.decode()
    tree = tmp_path / "clone"
    for name in filter(None, files.split("\0")):
        source = REPO / name
        if source.is_file():
            (tree / name).parent.mkdir(parents=True, exist_ok=True)
            shutil.copy2(source, tree / name)
    assert not (tree / "kvsnb" / "widgets" / "static" / "vendor").exists()
    done = subprocess.run(
        [sys.executable, "-m", "build", "--wheel", "--outdir", str(tmp_path / "dist"), str(tree)],
        capture_output=True,
        text=True,
        timeout=INSTALL_TIMEOUT_S,
    )
    assert done.returncode == 0, f"{done.stdout[-3000:]}\n{done.stderr[-3000:]}"
    (built,) = (tmp_path / "dist").glob("kvsnb-*.whl")
    with zipfile.ZipFile(built) as whl:
        for lib in LIBRARIES.values():
            stamp = f"kvsnb/widgets/static/vendor/{lib.filename}.version"
            assert whl.read(stamp).decode().strip() == lib.spec
            assert len(whl.read(f"kvsnb/widgets/static/vendor/{lib.filename}")) > 100_000


def test_version(installed: dict[str, str]) -> None:
    """``kvsnb --version`` prints the version written in ``kvsnb/__init__.py``."""
    done = run(installed, "kvsnb", "--version")
    assert done.returncode == 0, done.stderr
    assert done.stdout.strip() == f"kvsnb {kvsnb.__version__}"


WIDGETS_CHECK = textwrap.dedent(
    """
    import json, pathlib, sys
    import kvsnb, kvsnb.widgets
    from kvsnb.widgets import vendor
    names = kvsnb.widgets.__all__
    widgets = {name: getattr(kvsnb.widgets, name) for name in names}
    players = [kvsnb.widgets.Player("http://127.0.0.1:9/p.m3u8", p) for p in ("HLS", "DASH")]
    print(json.dumps({
        "package": str(pathlib.Path(kvsnb.__file__).resolve()),
        "version": kvsnb.__version__,
        "widgets": sorted(widgets),
        "libraries": {name: len(vendor.library(name)) for name in vendor.LIBRARIES},
        "licences": {
            name: vendor.library_path(name).with_name(lib.filename + ".LICENSE").is_file()
            for name, lib in vendor.LIBRARIES.items()
        },
        "player_sources": [len(p._source) for p in players],
        "esm": len(str(players[0]._esm)),
    }))
    """
)


def test_widgets_and_player_libraries(installed: dict[str, str]) -> None:
    """Every widget imports from the installed package, and the ``Player`` finds hls.js and
    dash.js there (``vendor.library``), byte for byte what the build fetched."""
    python = str(Path(installed["KVSNB_TEST_ROOT"]) / "venv" / "bin" / "python")
    done = run(installed, python, "-c", WIDGETS_CHECK)
    assert done.returncode == 0, done.stderr
    found = json.loads(done.stdout.strip().splitlines()[-1])
    assert Path(installed["KVSNB_TEST_ROOT"]) in Path(found["package"]).parents
    assert found["version"] == kvsnb.__version__
    assert found["widgets"] == sorted(kvsnb.widgets.__all__)
    for name, lib in LIBRARIES.items():
        built = REPO / "kvsnb" / "widgets" / "static" / "vendor" / lib.filename
        assert found["libraries"][name] == len(built.read_text(encoding="utf-8")), name
        assert found["licences"][name], name
    assert found["player_sources"] == [
        found["libraries"]["hls.js"],
        found["libraries"]["dash.js"],
    ]
    assert found["esm"] > 1000  # player.js, read from the installed package


def test_demo(installed: dict[str, str]) -> None:
    """A short ``kvsnb demo`` runs start to end and writes its report."""
    out = Path(installed["KVSNB_TEST_ROOT"]) / "demo"
    done = run(installed, "kvsnb", "demo", "--seconds", "4", "--out", str(out))
    assert done.returncode == 0, f"{done.stdout[-3000:]}\n{done.stderr[-3000:]}"
    assert (out / "report.html").is_file()
    assert any(out.glob("*.csv"))


def test_local(installed: dict[str, str]) -> None:
    """``kvsnb local`` serves until interrupted: the installed package's own client lists
    its streams."""
    root = Path(installed["KVSNB_TEST_ROOT"])
    log = root / "local.log"
    with log.open("w") as sink:
        proc = subprocess.Popen(
            ["kvsnb", "local", "--port", "0", "--data", str(root / "kvs-data")],
            cwd=root,
            env=installed,
            stdout=sink,
            stderr=subprocess.STDOUT,
        )
    try:
        wait_until_sync(lambda: "Local KVS at " in log.read_text(), "kvsnb local started")
        url = log.read_text().split("Local KVS at ", 1)[1].split()[0]
        script = (
            f"import kvsnb; t = kvsnb.connect({url!r}); "
            "print(t.kinesisvideo.list_streams()['StreamInfoList']); t.close()"
        )
        python = str(root / "venv" / "bin" / "python")
        done = run(installed, python, "-c", script)
        assert done.returncode == 0, done.stderr
        assert done.stdout.strip() == "[]"
    finally:
        proc.send_signal(signal.SIGINT)
        proc.wait(timeout=60)
    assert proc.returncode == 0, log.read_text()


NOTEBOOK = "01_quickstart.ipynb"
RUN_NOTEBOOK = textwrap.dedent(
    """
    import sys
    import nbclient, nbformat
    nb = nbformat.read(sys.argv[1], as_version=4)
    nbclient.NotebookClient(nb, timeout=240, kernel_name="python3").execute()
    print(sum(1 for cell in nb.cells if cell.cell_type == "code"), "code cells ran")
    """
)


def test_quickstart_notebook(installed: dict[str, str]) -> None:
    """The quickstart notebook runs top to bottom on the installed package (with a kernel
    and a notebook runner added to the venv, as a user's Jupyter would be), from a copy
    outside the tree."""
    root = Path(installed["KVSNB_TEST_ROOT"])
    python = str(root / "venv" / "bin" / "python")
    done = run(installed, python, "-m", "pip", "install", "-q", "nbclient", "ipykernel")
    assert done.returncode == 0, done.stderr[-3000:]
    copy = root / NOTEBOOK
    shutil.copy2(REPO / "notebooks" / NOTEBOOK, copy)
    done = run(installed, python, "-c", RUN_NOTEBOOK, str(copy))
    assert done.returncode == 0, f"{done.stdout[-3000:]}\n{done.stderr[-5000:]}"
    assert "code cells ran" in done.stdout
