"""Sphinx configuration of kvsnb's documentation site (``make docs``).

The tutorials are the notebooks of ``notebooks/``, rendered with their stored outputs (never
executed here); each links to Binder. The API reference comes from the docstrings, the CLI
reference from ``kvsnb.cli.build_parser`` at build time.
"""

from __future__ import annotations

import shutil
import sys
from pathlib import Path

DOCS = Path(__file__).resolve().parent
REPO = DOCS.parent
sys.path.insert(0, str(REPO))
sys.path.insert(0, str(DOCS / "_ext"))

import kvsnb  # noqa: E402

# The repository the Binder links launch: the one setting to change for a fork.
repository_url = "https://github.com/kvsnb/kvsnb"
repository_branch = "main"

project = "kvsnb"
author = "the kvsnb authors"
copyright = "the kvsnb authors"
release = kvsnb.__version__
version = release

extensions = [
    "myst_nb",
    "sphinx.ext.autodoc",
    "sphinxarg.ext",
    "kvsnb_docs",
]

root_doc = "index"
exclude_patterns = ["_build", "Thumbs.db", ".DS_Store", "jupyter_execute"]
source_suffix = {".md": "myst-nb", ".ipynb": "myst-nb"}

# The notebooks are copied in from notebooks/ (the copies in tutorials/ are ignored by git,
# and one whose notebook is gone is removed) and shown with the outputs stored in them.
TUTORIALS = DOCS / "tutorials"
NOTEBOOKS = sorted((REPO / "notebooks").glob("*.ipynb"))
for stale in set(TUTORIALS.glob("*.ipynb")) - {TUTORIALS / nb.name for nb in NOTEBOOKS}:
    stale.unlink()
for notebook in NOTEBOOKS:
    copy = TUTORIALS / notebook.name
    if not copy.is_file() or copy.read_bytes() != notebook.read_bytes():
        shutil.copy2(notebook, copy)
nb_execution_mode = "off"
# each tutorial page → its notebook's path in the repository (the Binder links)
kvsnb_notebook_paths = {f"tutorials/{nb.stem}": f"notebooks/{nb.name}" for nb in NOTEBOOKS}

myst_enable_extensions = ["colon_fence", "deflist"]
myst_heading_anchors = 3

autodoc_member_order = "bysource"
autodoc_typehints = "signature"
autodoc_default_options = {"members": True, "show-inheritance": True}

nitpicky = True
smartquotes = False  # options stay "--cert", not "–cert"

html_theme = "furo"
html_title = f"kvsnb {release}"
