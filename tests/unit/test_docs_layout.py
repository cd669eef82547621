"""The docs name the tree as it is.

- The "Layout" sections of README.md and docs/design.md name every package and module under
  ``kvsnb/``, and every path they name exists.
  - docs/design.md: a code block, one entry a line: ``name/`` (a folder) or ``name.ext`` (a
    file) at two spaces per level under the folder above it, then its description. A line
    indented deeper than one level below the entry before it continues that description.
  - README.md: a list, one item a folder: ``- `kvsnb/wire/` ...``; in the item, outside
    parentheses (which hold notes), each name in backticks that looks like a module
    (lowercase: ``x``, ``x.py``, ``x.js`` or ``x/``) is in that folder: ``x`` is ``x.py`` or
    the package ``x/``.
- Every ``kvsnb/...`` path and every dotted ``kvsnb.x.y`` name in README.md and the pages
  under docs/ exists (a dotted name may go on past a module or a package's name into a name
  it defines or imports).
"""

from __future__ import annotations

import re
import tomllib
from pathlib import Path

import pytest

REPO = Path(__file__).resolve().parents[2]
DOCS = [
    REPO / "README.md",
    *sorted(p for p in (REPO / "docs").rglob("*.md") if "_build" not in p.parts),
]

ENTRY = re.compile(r"^( *)([\w.-]+/|[\w.-]+\.\w+)(?: {2,}|$)")
ITEM = re.compile(r"^- `([\w./-]+/)`(.*)$")
NOTE = re.compile(r"\([^()]*\)")
NAME = re.compile(r"`([a-z_][a-z0-9_]*(?:\.py|\.js|/)?)`")
SLASH_PATH = re.compile(r"(?<![\w/.])kvsnb/[\w/.]*[\w/]")
FETCHED = ("kvsnb/widgets/static/vendor/",)  # made at set-up, ignored by git
DOTTED = re.compile(r"(?<![\w./])kvsnb(?:\.[A-Za-z_]\w*)+")


def tree(root: Path) -> set[str]:
    """Every package (``kvsnb/x/``) and module (``kvsnb/x/y.py``, ``__init__.py`` aside)
    under ``root/kvsnb``, as paths relative to ``root``."""
    found: set[str] = set()
    for path in (root / "kvsnb").rglob("*.py"):
        if "__pycache__" in path.parts:
            continue
        rel = path.relative_to(root)
        if path.name == "__init__.py":
            found.add(rel.parent.as_posix() + "/")
        else:
            found.add(rel.as_posix())
    return found


def section(text: str, heading: str) -> str:
    """The text of the ``## heading`` section (up to the next ``## ``)."""
    match = re.search(rf"^## {re.escape(heading)}\n(.*?)(?=^## |\Z)", text, re.M | re.S)
    assert match, f"no '## {heading}' section"
    return match.group(1)


def parse_tree(block: str) -> list[str]:
    """The paths an indented tree names (docs/design.md's layout block)."""
    named: list[str] = []
    stack: list[tuple[int, str]] = []  # (indent, path) of the entries above
    for number, line in enumerate(block.splitlines(), 1):
        match = ENTRY.match(line)
        if not match or not line.strip():
            continue
        indent = len(match.group(1))
        if stack and indent > stack[-1][0] + 2:
            continue  # a description's continuation
        if indent % 2:
            raise AssertionError(f"layout line {number}: odd indentation: {line!r}")
        while stack and stack[-1][0] >= indent:
            stack.pop()
        parent = stack[-1][1] if stack else ""
        if parent and not parent.endswith("/"):
            raise AssertionError(f"layout line {number}: under a file: {line!r}")
        path = parent + match.group(2)
        named.append(path)
        stack.append((indent, path))
    return named


def parse_list(text: str, root: Path) -> list[str]:
    """The paths a list of folders names (README.md's layout section)."""
    items: list[tuple[str, str]] = []
    for line in text.splitlines():
        match = ITEM.match(line)
        if match:
            items.append((match.group(1), match.group(2)))
        elif items and line.startswith("  "):
            items[-1] = (items[-1][0], items[-1][1] + " " + line.strip())
    named: list[str] = []
    for folder, rest in items:
        named.append(folder)
        while NOTE.search(rest):
            rest = NOTE.sub("", rest)
        for name in NAME.findall(rest):
            if name.endswith(("/", ".py", ".js")):
                named.append(folder + name)
            elif (root / folder / name).is_dir():
                named.append(f"{folder}{name}/")
            else:
                named.append(f"{folder}{name}.py")
    return named


def layout_errors(named: list[str], root: Path) -> list[str]:
    """What a layout gets wrong: packages or modules under kvsnb/ it does not name, and
    paths it names that do not exist."""
    absent = sorted({p for p in named if not (root / p).exists()})
    unnamed = sorted(tree(root) - set(named))
    errors = [f"named but absent: {p}" for p in absent]
    errors += [f"not named: {p}" for p in unnamed]
    return errors


def design_layout(root: Path) -> list[str]:
    text = section((root / "docs" / "design.md").read_text(), "Layout")
    block = re.search(r"^```\n(.*?)^```", text, re.M | re.S)
    assert block, "docs/design.md: no code block in the Layout section"
    return parse_tree(block.group(1))


def readme_layout(root: Path) -> list[str]:
    return parse_list(section((root / "README.md").read_text(), "Layout"), root)


def test_design_layout_names_the_tree() -> None:
    errors = layout_errors(design_layout(REPO), REPO)
    assert not errors, "docs/design.md, Layout:\n" + "\n".join(errors)


def test_readme_layout_names_the_tree() -> None:
    errors = layout_errors(readme_layout(REPO), REPO)
    assert not errors, "README.md, Layout:\n" + "\n".join(errors)


def test_a_wrong_layout_is_reported(tmp_path: Path) -> None:
    for module in ("kvsnb/__init__.py", "kvsnb/a.py", "kvsnb/sub/__init__.py", "kvsnb/sub/b.py"):
        (tmp_path / module).parent.mkdir(parents=True, exist_ok=True)
        (tmp_path / module).write_text("")
    block = (
        "kvsnb/\n"
        "  a.py        the a module, whose description goes on\n"
        "              b.py is not an entry here\n"
        "  sub/        a package\n"
        "    c.py      misspelt\n"
        "docs/         not there\n"
    )
    named = parse_tree(block)
    assert named == ["kvsnb/", "kvsnb/a.py", "kvsnb/sub/", "kvsnb/sub/c.py", "docs/"]
    assert layout_errors(named, tmp_path) == [
        "named but absent: docs/",
        "named but absent: kvsnb/sub/c.py",
        "not named: kvsnb/sub/b.py",
    ]
    listed = parse_list(
        "- `kvsnb/`: `a` (the a module, not `x` (nor `y`)), `sub`\n- `kvsnb/sub/`: `b`\n", tmp_path
    )
    assert listed == ["kvsnb/", "kvsnb/a.py", "kvsnb/sub/", "kvsnb/sub/", "kvsnb/sub/b.py"]
    assert layout_errors(listed, tmp_path) == []
    with pytest.raises(AssertionError, match="odd indentation"):
        parse_tree("kvsnb/\n a.py  one space in\n")


def dotted_exists(name: str, root: Path) -> bool:
    """Whether ``kvsnb.x.y`` is a package, a module, or a name a module defines or imports."""
    parts = name.split(".")
    path = root / parts[0]
    for i, part in enumerate(parts[1:], 1):
        if (path / part).is_dir():
            path = path / part
            continue
        if (path / f"{part}.py").is_file():
            rest = parts[i + 1 :]  # an attribute of the module, if anything
            text = (path / f"{part}.py").read_text()
            return not rest or bool(re.search(rf"\b{rest[0]}\b", text))
        text = (path / "__init__.py").read_text()  # path is a package here: a name it exports
        return bool(re.search(rf"\b{part}\b", text))
    return True


@pytest.mark.parametrize("doc", DOCS, ids=lambda p: p.relative_to(REPO).as_posix())
def test_paths_in_docs_exist(doc: Path) -> None:
    text = doc.read_text()
    stale = sorted(
        {
            p
            for p in SLASH_PATH.findall(text)
            if not (REPO / p.rstrip("/")).exists() and not p.startswith(FETCHED)
        }
        | {n for n in DOTTED.findall(text) if not dotted_exists(n, REPO)}
    )
    assert not stale, f"{doc.name} names what is not in the tree: {stale}"


def test_design_names_every_import_contract() -> None:
    """The contract table of docs/design.md has one row per import-linter contract of
    pyproject.toml, by name, and no other."""
    contracts = tomllib.loads((REPO / "pyproject.toml").read_text())["tool"]["importlinter"][
        "contracts"
    ]
    text = section((REPO / "docs" / "design.md").read_text(), "Layout")
    rows = re.findall(r'^\| "([^"]+)" \|', text, re.M)
    assert sorted(rows) == sorted(c["name"] for c in contracts)
    for contract in contracts:  # each module a layers contract names is in its row
        if contract["type"] != "layers":
            continue
        row = next(line for line in text.splitlines() if f'"{contract["name"]}"' in line)
        for layer in contract["layers"]:
            for module in layer.split("|"):
                short = module.strip().rsplit(".", 1)[-1]
                assert f"`{short}`" in row or f"`{module.strip()}`" in row, (
                    contract["name"],
                    module,
                )
