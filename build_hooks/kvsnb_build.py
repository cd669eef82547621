"""kvsnb's build backend: setuptools' own, plus one step before the package data is
collected: the Player's browser libraries (hls.js, dash.js) are fetched from the npm registry
into ``kvsnb/widgets/static/vendor/`` by ``kvsnb.widgets.vendor.fetch``, the one fetcher
(``make setup`` and Binder's ``postBuild`` run the same code), so the sdist and the wheel
carry them with their licences and nothing third-party is committed.

``pyproject.toml`` names this module as the backend (``backend-path = ["build_hooks"]``) and
its command classes in ``[tool.setuptools.cmdclass]``. A wheel or sdist build without the
libraries fails (a wheel whose ``Player`` raises ``VendorError`` is no use); an editable
install (``pip install -e``, what ``make setup`` runs) goes on without them when npm is
missing, as the ``Player`` says how to fetch them later. Files already fetched at the pinned
versions are kept, so a rebuild, or a wheel built from the sdist, needs neither npm nor the
network.
"""

from __future__ import annotations

import importlib.util
import logging
import subprocess
import sys
from pathlib import Path
from types import ModuleType

from setuptools.build_meta import *  # noqa: F403  (the PEP 517 hooks, unchanged)
from setuptools.build_meta import __all__ as _setuptools_all
from setuptools.command.build_py import build_py as _build_py
from setuptools.command.sdist import sdist as _sdist

__all__ = [*_setuptools_all, "BuildPy", "Sdist", "fetch_vendor"]

ROOT = Path(__file__).resolve().parent.parent
VENDOR_MODULE = ROOT / "kvsnb" / "widgets" / "vendor.py"


def _vendor_module() -> ModuleType:
    """``kvsnb/widgets/vendor.py`` loaded from the source tree by its path: importing it as
    ``kvsnb.widgets.vendor`` would import ``kvsnb.widgets`` (ipywidgets, anywidget), which
    the build environment does not have. It needs only ``kvsnb.errors`` (the standard
    library), imported from the same tree."""
    if str(ROOT) not in sys.path:
        sys.path.insert(0, str(ROOT))
    name = "_kvsnb_build_vendor"
    spec = importlib.util.spec_from_file_location(name, VENDOR_MODULE)
    if spec is None or spec.loader is None:
        raise RuntimeError(f"cannot load {VENDOR_MODULE}")
    module = importlib.util.module_from_spec(spec)
    sys.modules[name] = module  # dataclasses look their module up while the class is made
    spec.loader.exec_module(module)
    return module


def fetch_vendor(command: _build_py | _sdist, required: bool) -> None:
    """Fetch the browser libraries into the source tree's vendor folder (kept when already
    there at the pinned versions). ``required``: a failure stops the build; otherwise it is
    reported and the build goes on."""
    vendor = _vendor_module()
    try:
        written = vendor.fetch()
    except (vendor.VendorError, OSError, subprocess.SubprocessError) as exc:
        if required:
            raise RuntimeError(
                f"kvsnb's build fetches hls.js and dash.js from the npm registry and could "
                f"not: {exc}"
            ) from exc
        command.announce(
            f"warning: hls.js/dash.js not fetched ({exc}); the Player needs "
            "`python -m kvsnb.widgets.vendor` later",
            level=logging.WARNING,
        )
        return
    for path in written:
        command.announce(f"fetched {path.relative_to(ROOT)}", level=logging.INFO)


class BuildPy(_build_py):
    """``build_py`` that fetches the browser libraries before the package data is copied."""

    def run(self) -> None:
        """Fetch (required unless this is an editable install), then build as setuptools does."""
        fetch_vendor(self, required=not self.editable_mode)
        super().run()


class Sdist(_sdist):
    """``sdist`` that fetches the browser libraries before the file list is made, so the
    sdist carries them and a wheel built from it needs no npm."""

    def run(self) -> None:
        """Fetch (required), then make the sdist as setuptools does."""
        fetch_vendor(self, required=True)
        super().run()
