"""The browser tests' JavaScript: installed from the npm registry at set-up, never committed.

``tests/browser/web/package.json`` lists exact versions of the official KVS WebRTC JS SDK
(``amazon-kinesis-video-streams-webrtc``, whose ``dist/kvs-webrtc.min.js`` the page loads)
and of the AWS SDK for JavaScript v3 KVS clients, which esbuild bundles into
``web/build/aws-clients.js``. ``ensure_js()`` runs ``npm install`` and the build when the
installed set is missing or older than ``package.json``; ``make test`` runs it (``python -m
tests.browser.webjs``) and so does the ``kvs_web`` fixture. ``serve_page()`` serves
``web/`` over http on 127.0.0.1: a different origin from Local KVS.
"""

from __future__ import annotations

import functools
import http.server
import shutil
import subprocess
import sys
import threading
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path

WEB = Path(__file__).resolve().parent / "web"
PACKAGE = WEB / "package.json"
SDK = WEB / "node_modules" / "amazon-kinesis-video-streams-webrtc" / "dist" / "kvs-webrtc.min.js"
BUNDLE = WEB / "build" / "aws-clients.js"
STAMP = WEB / "node_modules" / ".kvsnb-installed"
NPM_TIMEOUT_S = 600


class JsSetupError(RuntimeError):
    """npm is missing or the install or build failed (the message has npm's output)."""


def js_ready() -> bool:
    """The SDK and the bundle are there, built from the current ``package.json``."""
    return (
        SDK.is_file()
        and BUNDLE.is_file()
        and STAMP.is_file()
        and STAMP.stat().st_mtime >= PACKAGE.stat().st_mtime
    )


def ensure_js() -> None:
    """``npm install`` (exact versions, no lock file written) and the esbuild bundle, unless
    already done for this ``package.json``."""
    if js_ready():
        return
    npm = shutil.which("npm")
    if npm is None:
        raise JsSetupError("npm is not installed (`make test` installs Debian's nodejs and npm)")
    for step in (
        [npm, "install", "--no-package-lock", "--no-audit", "--no-fund", "--loglevel=error"],
        [npm, "run", "--silent", "build"],
    ):
        done = subprocess.run(
            step, cwd=WEB, capture_output=True, text=True, timeout=NPM_TIMEOUT_S, check=False
        )
        if done.returncode != 0:
            raise JsSetupError(f"{' '.join(step[1:])} failed:\n{done.stdout}\n{done.stderr}")
    STAMP.touch()


class _QuietHandler(http.server.SimpleHTTPRequestHandler):
    def log_message(self, format: str, *args: object) -> None:  # the stdlib names it so
        pass


@contextmanager
def serve_page() -> Iterator[str]:
    """Serve ``web/`` on 127.0.0.1 and a free port; yields ``http://localhost:PORT``."""
    handler = functools.partial(_QuietHandler, directory=str(WEB))
    server = http.server.ThreadingHTTPServer(("127.0.0.1", 0), handler)
    thread = threading.Thread(target=server.serve_forever, name="kvs-page", daemon=True)
    thread.start()
    try:
        yield f"http://localhost:{server.server_address[1]}"
    finally:
        server.shutdown()
        server.server_close()
        thread.join(10)


if __name__ == "__main__":
    try:
        ensure_js()
    except JsSetupError as exc:
        sys.exit(str(exc))
    print(f"browser-test JS ready: {SDK.relative_to(WEB)}, {BUNDLE.relative_to(WEB)}")
