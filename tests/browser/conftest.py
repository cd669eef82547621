"""Browser tests: a headless JupyterLab on 127.0.0.1 (a temp copy of ``notebooks/``, the venv's
``python3`` kernel, isolated Jupyter config/data/settings dirs) driven by Debian's Chromium
through Playwright. No browser is ever downloaded: Chromium is ``/usr/bin/chromium``
(``make test`` installs it with apt-get); without it the tests are skipped.

Everything the tests see is saved in ``test-artifacts/browser/`` at the repository root:
screenshots named ``<notebook>-<step>-{page,widget}.png``, each page's browser console
(``<notebook>-console.log``), the kernel's stderr (``<notebook>-kernel-stderr.log``) and the
JupyterLab server log (``jupyterlab-server.log``).

``KVSNB_BROWSER_NOTEBOOKS=<dir>`` points the tests at another copy of the notebooks (e.g. a
scratch one while they are being written).

The harness (``start_lab``, ``LabServer``, ``NotebookPage``) is ``bench/lab.py``, which
``bench.bench_player`` uses too.

Fixtures: ``jupyter_lab`` (session; the server, stopped with its kernels at the end),
``browser_context`` (session; Chromium with a temporary profile) and ``open_notebook``
(opens ``/lab/tree/<name>`` in a new page, which it closes with the notebook's kernel).
``chromium_context`` launches Chromium the same way with extra flags: the KVS JS SDK tests
(``test_kvs_js_sdk.py``, their JS set up by ``webjs.py``) use it with fake media devices.
"""

from __future__ import annotations

import contextlib
import os
import shutil
from collections.abc import Callable, Iterator, Sequence
from pathlib import Path
from typing import Any

import pytest

from bench.lab import (
    ACTION_TIMEOUT_MS,
    ARTIFACTS,
    CHROMIUM,
    CHROMIUM_ARGS,
    VIEWPORT,
    LabServer,
    NotebookPage,
    start_lab,
)

REPO = Path(__file__).resolve().parents[2]
NOTEBOOKS = Path(os.environ.get("KVSNB_BROWSER_NOTEBOOKS") or REPO / "notebooks")


@pytest.fixture(scope="session")
def chromium() -> Path:
    """Debian's Chromium, or a skip."""
    if not (CHROMIUM.is_file() and os.access(CHROMIUM, os.X_OK)):
        pytest.skip(
            f"Chromium is not installed at {CHROMIUM}: the browser tests drive Debian's "
            "chromium package and never download a browser; `make test` installs it "
            "(apt-get install chromium)"
        )
    return CHROMIUM


@pytest.fixture(scope="session")
def artifacts() -> Path:
    """``test-artifacts/browser/``, emptied of the last run's files."""
    ARTIFACTS.mkdir(parents=True, exist_ok=True)
    for old in ARTIFACTS.iterdir():
        if old.is_file() and old.suffix in (".png", ".log"):
            old.unlink()
    return ARTIFACTS


@pytest.fixture(scope="module")
def jupyter_lab(tmp_path_factory: pytest.TempPathFactory, artifacts: Path) -> Iterator[LabServer]:
    """JupyterLab serving a temp copy of ``notebooks/``; stopped with its kernels."""
    base = tmp_path_factory.mktemp("jupyterlab")
    root = base / "notebooks"
    shutil.copytree(NOTEBOOKS, root, ignore=shutil.ignore_patterns(".ipynb_checkpoints"))
    lab = start_lab(root, base / "jupyter", base / "server.log")
    try:
        yield lab
    finally:
        lab.stop()
        with contextlib.suppress(OSError):
            shutil.copy(lab.log, artifacts / "jupyterlab-server.log")


@contextlib.contextmanager
def chromium_context(
    chromium: Path, profile: Path, extra_args: Sequence[str] = ()
) -> Iterator[Any]:
    """Debian's Chromium, headless, with the profile directory ``profile``, in one
    Playwright context (``CHROMIUM_ARGS`` plus ``extra_args``)."""
    from playwright.sync_api import sync_playwright

    with sync_playwright() as playwright:
        context = playwright.chromium.launch_persistent_context(
            str(profile),
            executable_path=str(chromium),
            headless=True,
            args=[*CHROMIUM_ARGS, *extra_args],
            viewport=VIEWPORT,
            timeout=60_000,
        )
        context.set_default_timeout(ACTION_TIMEOUT_MS)
        try:
            yield context
        finally:
            context.close()


@pytest.fixture(scope="module")
def browser_context(chromium: Path, tmp_path_factory: pytest.TempPathFactory) -> Iterator[Any]:
    """Chromium (headless, temporary profile) in one Playwright context."""
    with chromium_context(chromium, tmp_path_factory.mktemp("chromium-profile")) as context:
        yield context


@pytest.fixture
def open_notebook(request: pytest.FixtureRequest) -> Iterator[Callable[[str], NotebookPage]]:
    """``open_notebook(name)``: open ``notebooks/<name>`` in JupyterLab in a new page and
    wait for its kernel. Skips when the notebook is not in the repository; the page and the
    kernel are closed after the test."""
    opened: list[NotebookPage] = []

    def open_(name: str) -> NotebookPage:
        if not (NOTEBOOKS / name).is_file():
            pytest.skip(f"notebooks/{name} is not in the repository yet")
        request.getfixturevalue("chromium")  # skips before starting anything
        lab: LabServer = request.getfixturevalue("jupyter_lab")
        context = request.getfixturevalue("browser_context")
        page = context.new_page()
        nb = NotebookPage(name, page, lab)
        opened.append(nb)
        page.on("console", lambda m: nb.console.append(f"[{m.type}] {m.text}"))
        page.on("pageerror", lambda e: nb.console.append(f"[pageerror] {e}"))
        page.goto(f"{lab.url}/lab/tree/{name}?reset", wait_until="domcontentloaded")
        nb.wait_until_ready()
        return nb

    yield open_
    for nb in opened:
        with contextlib.suppress(Exception):
            nb.save_logs()
        with contextlib.suppress(Exception):
            nb.page.close(run_before_unload=False)
        nb.lab.shutdown_session(nb.name)
