"""Sphinx extension of kvsnb's documentation site.

- A "launch this notebook on Binder" link under the title of every tutorial page, built from
  ``repository_url`` and ``repository_branch`` (conf.py) and the notebook's path in the
  repository (``kvsnb_notebook_paths``).
- References to other libraries' types in signatures (``pandas.DataFrame``,
  ``aiortc.MediaStreamTrack``, ``datetime.datetime``) are shown as plain names: the site has no
  pages for them, and it fetches no other site's inventory at build time. Every reference to a
  ``kvsnb`` name must still resolve, so nitpicky mode (``-n``) finds a broken internal link.
- A private base class (``_LiveView``) is replaced by its own bases in "Bases:" lines.
"""

from __future__ import annotations

import ast
import functools
import importlib.util
import re
from pathlib import Path
from typing import Any
from urllib.parse import quote

from docutils import nodes
from sphinx.addnodes import pending_xref
from sphinx.application import Sphinx
from sphinx.environment import BuildEnvironment
from sphinx.util.inspect import signature as sphinx_signature
from sphinx.util.inspect import stringify_signature
from sphinx.util.nodes import get_node_source

GITHUB = "https://github.com/"


def binder_url(repository_url: str, branch: str, path: str) -> str:
    """The mybinder.org URL that opens ``path`` (a file of the repository) in JupyterLab."""
    if not repository_url.startswith(GITHUB):
        raise ValueError(f"repository_url must be a GitHub URL, not {repository_url!r}")
    repo = repository_url[len(GITHUB) :].strip("/")
    return (
        f"https://mybinder.org/v2/gh/{repo}/{quote(branch, safe='')}?labpath={quote(path, safe='')}"
    )


def add_binder_link(app: Sphinx, doctree: nodes.document) -> None:
    """Put a Binder link under the title of a tutorial page."""
    path = app.config.kvsnb_notebook_paths.get(app.env.docname)
    if path is None:
        return
    url = binder_url(app.config.repository_url, app.config.repository_branch, path)
    link = nodes.reference("", "launch this notebook on Binder", refuri=url)
    para = nodes.paragraph("", "", link, nodes.Text(f" ({path})"), classes=["binder-link"])
    section = next(iter(doctree.findall(nodes.section)), None)
    if section is None:
        doctree.insert(0, para)
        return
    title = next(iter(section.findall(nodes.title)), None)
    section.insert(section.index(title) + 1 if title is not None else 0, para)


def is_external(target: str) -> bool:
    """Whether ``target`` names something of another importable package than kvsnb."""
    top = target.split(".", 1)[0]
    if not top or top == "kvsnb" or "." not in target:
        return False
    try:
        return importlib.util.find_spec(top) is not None
    except (ImportError, ValueError):
        return False


@functools.cache
def module_imports(path: str) -> dict[str, str]:
    """The names a module's source binds by import (``TYPE_CHECKING`` blocks included), each
    with the dotted name it stands for: ``{"pd": "pandas", "Target":
    "kvsnb.client.target.Target"}``."""
    try:
        tree = ast.parse(Path(path).read_text(encoding="utf-8"))
    except (OSError, SyntaxError):
        return {}
    names: dict[str, str] = {}
    for node in ast.walk(tree):
        if isinstance(node, ast.Import):
            for alias in node.names:
                names[alias.asname or alias.name.split(".")[0]] = (
                    alias.name if alias.asname else alias.name.split(".")[0]
                )
        elif isinstance(node, ast.ImportFrom) and node.module and node.level == 0:
            for alias in node.names:
                names[alias.asname or alias.name] = f"{node.module}.{alias.name}"
    return names


def full_name(node: pending_xref, target: str) -> str:
    """``target`` as the module whose docstring holds the reference spells it out: an
    annotation autodoc could not evaluate (a name imported for type checking only) keeps the
    module's own spelling, ``Target`` or ``pd.DataFrame``."""
    source = get_node_source(node) or ""
    path = source.split(":docstring of ", 1)[0]
    if not path.endswith(".py"):
        return target
    head, dot, rest = target.partition(".")
    imported = module_imports(path).get(head)
    return f"{imported}{dot}{rest}" if imported else target


def external_reference(
    app: Sphinx, env: BuildEnvironment, node: pending_xref, contnode: nodes.TextElement
) -> nodes.Node | None:
    """A reference Sphinx found no target for: another package's type becomes its plain name
    (no link, no warning); a kvsnb name spelt as its module imports it is looked up again
    by its full name. Anything else is left to Sphinx, which warns."""
    if node.get("refdomain") != "py":
        return None
    target = node.get("reftarget", "")
    name = full_name(node, target)
    if is_external(name):
        return contnode
    if name != target and name.startswith("kvsnb."):
        domain = env.get_domain("py")
        return domain.resolve_xref(
            env, node.get("refdoc", ""), app.builder, node["reftype"], name, node, contnode
        )
    return None


def public_bases(app: Sphinx, name: str, obj: Any, options: Any, bases: list[type]) -> None:
    """Show a private base class's own bases instead of it."""
    changed = True
    while changed:
        changed = False
        for i, base in enumerate(bases):
            if base.__name__.startswith("_"):
                bases[i : i + 1] = list(base.__bases__)
                changed = True
                break


DOTTED = re.compile(r"(?<![\w.'\"])([A-Za-z_]\w*)(\.[A-Za-z_][\w.]*)")


def foreign_signature(
    app: Sphinx,
    what: str,
    name: str,
    obj: Any,
    options: Any,
    signature: str | None,
    return_annotation: str | None,
) -> tuple[str | None, str | None] | None:
    """Signatures of kvsnb classes built on another package's (the widgets on ipywidgets).

    autodoc prefers a ``__new__`` to ``__init__``: for a widget that is traitlets'
    ``(*args, **kwargs)``, so a class with an ``__init__`` of its own is shown with that.
    A class whose constructor is another package's keeps it, with the names spelt out as
    that package imports them (traitlets' ``t.Any`` is ``typing.Any``), so they are known
    as external."""
    if what != "class" or not signature:
        return None
    init = getattr(obj, "__init__", None)
    if init is None:
        return None
    if (getattr(init, "__module__", None) or "").split(".")[0] == "kvsnb":
        new = getattr(obj, "__new__", None)
        if (getattr(new, "__module__", None) or "kvsnb").split(".")[0] in ("kvsnb", "builtins"):
            return None
        sig = sphinx_signature(init, bound_method=True)
        return stringify_signature(sig, show_return_annotation=False), return_annotation
    module = getattr(init, "__module__", None) or ""
    try:
        spec = importlib.util.find_spec(module) if module else None
    except (ImportError, ValueError):
        return None
    if spec is None or not spec.origin:
        return None
    names = module_imports(spec.origin)

    def spell(match: re.Match[str]) -> str:
        return names.get(match.group(1), match.group(1)) + match.group(2)

    return DOTTED.sub(spell, signature), return_annotation


def factory_defaults(
    app: Sphinx,
    what: str,
    name: str,
    obj: Any,
    options: Any,
    signature: str | None,
    return_annotation: str | None,
) -> tuple[str | None, str | None] | None:
    """A dataclass field with a ``default_factory`` shows as ``= <factory>``, which is not
    Python, so Sphinx would print the whole signature as plain text with no links: show
    ``= ...`` instead (the field's documentation says what it defaults to)."""
    if signature and "<factory>" in signature:
        return signature.replace("<factory>", "..."), return_annotation
    return None


def setup(app: Sphinx) -> dict[str, Any]:
    """Register the settings and the handlers."""
    app.add_config_value("repository_url", "", "env")
    app.add_config_value("repository_branch", "main", "env")
    app.add_config_value("kvsnb_notebook_paths", {}, "env")
    app.connect("doctree-read", add_binder_link)
    app.connect("missing-reference", external_reference)
    app.connect("autodoc-process-bases", public_bases)
    app.connect("autodoc-process-signature", foreign_signature)
    app.connect("autodoc-process-signature", factory_defaults)
    return {"parallel_read_safe": True, "parallel_write_safe": True}
