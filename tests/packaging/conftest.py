"""The wheel under test, built once per test run from this tree, the way ``make dist`` builds
it (``python -m build``: the sdist, then the wheel from the sdist, in an isolated build
environment; pip's cache makes it quick after the first time)."""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

import pytest

REPO = Path(__file__).resolve().parents[2]
BUILD_TIMEOUT_S = 600


@pytest.fixture(scope="session")
def dist_dir(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """A directory outside the tree holding the sdist and the wheel of this tree."""
    out = tmp_path_factory.mktemp("dist")
    done = subprocess.run(
        [sys.executable, "-m", "build", "--outdir", str(out), str(REPO)],
        capture_output=True,
        text=True,
        timeout=BUILD_TIMEOUT_S,
    )
    assert done.returncode == 0, (
        f"python -m build failed:\n{done.stdout[-3000:]}\n{done.stderr[-3000:]}"
    )
    return out


@pytest.fixture(scope="session")
def wheel(dist_dir: Path) -> Path:
    """The wheel of this tree."""
    (found,) = dist_dir.glob("kvsnb-*-py3-none-any.whl")
    return found
