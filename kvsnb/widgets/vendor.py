"""The browser players the ``Player`` widget runs, fetched from the npm registry and kept as
package data (``kvsnb/widgets/static/vendor/``, ignored by git: third-party code is never
committed, docs/design.md principle 10).

``fetch`` is the one fetcher: kvsnb's build runs it (``build_hooks/kvsnb_build.py``), so a
wheel or sdist carries the libraries and their licences and an installed kvsnb needs no
Node.js; in a clone ``python -m kvsnb.widgets.vendor`` (what ``make setup`` and Binder's
``postBuild`` run) fills the same folder. It asks ``npm pack`` for the pinned packages and
copies their ES-module builds and licences out of the tarballs; ``library(name)`` reads one
back for the widget, or raises ``VendorError`` saying how to fetch it.
"""

from __future__ import annotations

import argparse
import shutil
import subprocess
import sys
import tarfile
import tempfile
from dataclasses import dataclass
from pathlib import Path

from kvsnb.errors import KvsnbError

VENDOR_DIR = Path(__file__).resolve().parent / "static" / "vendor"
NPM_TIMEOUT_S = 300


@dataclass(frozen=True)
class Library:
    """One npm package: the ES-module file the widget imports and its licence."""

    package: str
    version: str
    module: str  # path inside the package tarball (under ``package/``)
    license: str
    filename: str  # name under VENDOR_DIR

    @property
    def spec(self) -> str:
        """``name@version`` for npm."""
        return f"{self.package}@{self.version}"


LIBRARIES = {
    "hls.js": Library("hls.js", "1.7.4", "dist/hls.min.mjs", "LICENSE", "hls.min.mjs"),
    "dash.js": Library(
        "dashjs", "5.2.1", "dist/modern/esm/dash.all.min.js", "LICENSE.md", "dash.all.min.mjs"
    ),
}


class VendorError(KvsnbError, FileNotFoundError):
    """A browser library the widget needs has not been fetched."""


def library_path(name: str, vendor_dir: Path = VENDOR_DIR) -> Path:
    """Where library ``name`` ("hls.js" or "dash.js") is kept."""
    return vendor_dir / LIBRARIES[name].filename


def library(name: str, vendor_dir: Path = VENDOR_DIR) -> str:
    """The source of library ``name`` (an ES module), or ``VendorError`` if it is missing."""
    path = library_path(name, vendor_dir)
    if not path.is_file():
        raise VendorError(
            f"{name} is not installed ({path} is missing): it is fetched from the npm registry "
            "when kvsnb's wheel is built, or when a clone is set up. Run `make setup` in the "
            "repository, or `python -m kvsnb.widgets.vendor` (needs npm)."
        )
    return path.read_text(encoding="utf-8")


def fetch(vendor_dir: Path = VENDOR_DIR, npm: str = "npm") -> list[Path]:
    """Fetch every library with ``npm pack`` into ``vendor_dir`` (files already there with
    the pinned version are kept). Returns the files written."""
    if shutil.which(npm) is None:
        raise VendorError(f"{npm} is not on PATH: install Node.js and npm to fetch hls.js/dash.js")
    vendor_dir.mkdir(parents=True, exist_ok=True)
    written: list[Path] = []
    with tempfile.TemporaryDirectory(prefix="kvsnb-npm-") as tmp:
        for lib in LIBRARIES.values():
            target = vendor_dir / lib.filename
            stamp = vendor_dir / f"{lib.filename}.version"
            if target.is_file() and stamp.is_file() and stamp.read_text().strip() == lib.spec:
                continue
            out = subprocess.run(
                [npm, "pack", "--silent", lib.spec],
                cwd=tmp,
                capture_output=True,
                text=True,
                timeout=NPM_TIMEOUT_S,
                check=True,
            )
            tarball = Path(tmp) / out.stdout.strip().splitlines()[-1]
            with tarfile.open(tarball) as tar:
                for member, dest in (
                    (lib.module, target),
                    (lib.license, vendor_dir / f"{lib.filename}.LICENSE"),
                ):
                    source = tar.extractfile(f"package/{member}")
                    if source is None:
                        raise VendorError(f"{lib.spec} has no {member}")
                    dest.write_bytes(source.read())
            stamp.write_text(lib.spec + "\n")
            written.append(target)
    return written


def main(argv: list[str] | None = None) -> int:
    """``python -m kvsnb.widgets.vendor [--dir DIR]``."""
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--dir", type=Path, default=VENDOR_DIR)
    args = parser.parse_args(argv)
    try:
        written = fetch(args.dir)
    except (VendorError, subprocess.CalledProcessError) as exc:
        print(f"error: {exc}", file=sys.stderr)
        return 1
    for path in written:
        print(f"fetched {path}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
