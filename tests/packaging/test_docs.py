"""The documentation site builds with warnings as errors and every internal reference
checked (``make docs``: ``sphinx-build -W --keep-going -n``), from the notebooks' stored
outputs (nothing is executed), and holds what it promises: a tutorial page per notebook with
its Binder link, every public name of the API, every command and option of the CLI."""

from __future__ import annotations

import argparse
import html
import importlib
import inspect
import json
import re
import subprocess
import sys
from pathlib import Path

import pytest

from kvsnb.cli import build_parser

REPO = Path(__file__).resolve().parents[2]
DOCS = REPO / "docs"
BUILD_TIMEOUT_S = 110
API_MODULES = ("kvsnb", "kvsnb.playback", "kvsnb.analysis", "kvsnb.widgets")
LOCAL_CONFIG = ("LocalKvsConfig", "StorageOptions", "SignalingLimits")

pytestmark = pytest.mark.timeout(BUILD_TIMEOUT_S + 10)


@pytest.fixture(scope="module")
def site(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """The site, built fresh (``-E``) into a temporary directory."""
    out = tmp_path_factory.mktemp("docs-html")
    options = ["-E", "-W", "--keep-going", "-n", "-q", "-b", "html"]
    done = subprocess.run(
        [sys.executable, "-m", "sphinx", *options, str(DOCS), str(out)],
        capture_output=True,
        text=True,
        timeout=BUILD_TIMEOUT_S,
    )
    assert done.returncode == 0, f"sphinx-build failed:\n{done.stderr[-5000:]}"
    assert not (DOCS / "jupyter_execute").exists(), "a notebook was executed"
    return out


def page(site: Path, name: str) -> str:
    """A page's HTML."""
    return (site / name).read_text(encoding="utf-8")


def page_text(site: Path, name: str) -> str:
    """A page's text, tags left out."""
    return html.unescape(re.sub(r"<[^>]+>", "", page(site, name)))


def has_outputs(notebook: Path) -> bool:
    """Whether a notebook has stored outputs (07, run only against AWS, has none)."""
    cells = json.loads(notebook.read_text(encoding="utf-8"))["cells"]
    return any(cell.get("outputs") for cell in cells)


def test_tutorial_per_notebook_with_binder_link(site: Path) -> None:
    """Each notebook is a tutorial page, with its stored outputs, linking to Binder with the
    notebook's path in the repository."""
    notebooks = sorted((REPO / "notebooks").glob("*.ipynb"))
    assert notebooks
    for nb in notebooks:
        text = page(site, f"tutorials/{nb.stem}.html")
        links = re.findall(r'href="(https://mybinder\.org/v2/gh/[^"]+)"', text)
        assert len(links) == 1, nb.name
        assert html.unescape(links[0]).endswith(f"?labpath=notebooks%2F{nb.name}"), links[0]
        if has_outputs(nb):
            assert "cell_output" in text, f"{nb.name}: no stored output shown"


def test_api_reference_names_every_public_name(site: Path) -> None:
    """Every public class and function of kvsnb, kvsnb.playback, kvsnb.analysis and
    kvsnb.widgets (type aliases such as ``Role`` aside), and Local KVS's configuration, has
    an entry."""
    text = page(site, "reference/api.html")
    missing = []
    for module_name in API_MODULES:
        module = importlib.import_module(module_name)
        for name in module.__all__:
            obj = getattr(module, name)
            if inspect.isclass(obj) or inspect.isfunction(obj):
                if f'id="{module_name}.{name}"' not in text:
                    missing.append(f"{module_name}.{name}")
    for name in LOCAL_CONFIG:
        if not re.search(rf'id="kvsnb\.local\.[\w.]*{name}"', text):
            missing.append(name)
    assert not missing, missing


def test_cli_reference_has_every_command_and_option(site: Path) -> None:
    """The CLI page, generated from the parser, shows every subcommand and option."""
    text = page_text(site, "reference/cli.html")
    parser = build_parser()
    (subparsers,) = (a for a in parser._actions if isinstance(a, argparse._SubParsersAction))
    for command, sub in subparsers.choices.items():
        assert f"kvsnb {command}" in text, command
        for action in sub._actions:
            for option in action.option_strings:
                assert option in text, f"kvsnb {command} {option}"


def test_explanation_and_reference_pages(site: Path) -> None:
    """The design and wire notes, the coverage table, the performance figures and the change
    log are pages of the site."""
    for name, needle in (
        ("design.html", "kvsnb: how it is built"),
        ("wire.html", "The KVS wire, as kvsnb relies on it"),
        ("reference/coverage.html", "JoinStorageSession"),
        ("reference/performance.html", "make bench"),
        ("changelog.html", "Unreleased"),
    ):
        assert needle in page_text(site, name), name
