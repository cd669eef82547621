"""JupyterLab driven by Debian's Chromium through Playwright, shared by the browser tests
(``tests/browser``) and ``bench.bench_player``: a headless ``jupyter lab`` on 127.0.0.1 with
isolated config, data and settings directories and the venv's ``python3`` kernel
(``start_lab``, ``LabServer``), and a notebook open in a page with helpers to run its cells,
wait for its widgets, collect errors and take screenshots (``NotebookPage``). No browser is
ever downloaded: Chromium is ``/usr/bin/chromium``. Screenshots and logs go to
``test-artifacts/browser/`` at the repository root.
"""

from __future__ import annotations

import contextlib
import json
import os
import re
import signal
import socket
import subprocess
import sys
import time
import urllib.error
import urllib.request
from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING, Any

if TYPE_CHECKING:
    from playwright.sync_api import ViewportSize

REPO = Path(__file__).resolve().parents[1]
ARTIFACTS = REPO / "test-artifacts" / "browser"
CHROMIUM = Path("/usr/bin/chromium")
CHROMIUM_ARGS = [
    "--headless",
    "--no-sandbox",
    "--disable-gpu",
    "--disable-quic",
    "--no-first-run",
    "--disable-background-networking",
    "--disable-component-update",
    "--disable-sync",
]
VIEWPORT: ViewportSize = {"width": 1400, "height": 1200}

# Bounded waits (seconds); the whole file runs in well under three minutes.
LAB_START_S = 60.0  # the server answers /api/status
LAB_STOP_S = 15.0  # SIGTERM, then SIGKILL
PAGE_READY_S = 60.0  # JupyterLab loaded, the notebook open, its kernel idle
RUN_ALL_S = 90.0  # every cell executed
RENDER_S = 30.0  # widget views drawn after the cells ran
ACTION_TIMEOUT_MS = 15_000  # Playwright clicks and locators

WIDGET_MIME = "application/vnd.jupyter.widget-view+json"
STDERR_MIME = "application/vnd.jupyter.stderr"
WIDGET_ERRORS = (
    "Failed to load model class",
    "Error displaying widget",
    "Could not create a model",
    "Could not create a view",
    "Could not create child view",
)
ANSI = re.compile(r"\x1b\[[0-9;]*[A-Za-z]")
# Variables a developer may have set that would send the notebooks away from Local KVS.
KVSNB_ENV = ("KVSNB_TARGET", "KVSNB_ENDPOINT_URL", "KVSNB_REGION")

# JupyterLab user settings for the test server: no windowing (every cell stays in the DOM),
# no news or update checks (no network), no autosave.
LAB_SETTINGS = {
    "@jupyterlab/notebook-extension/tracker": {"windowingMode": "none"},
    "@jupyterlab/apputils-extension/notification": {
        "fetchNews": "false",
        "checkForUpdates": False,
    },
    "@jupyterlab/docmanager-extension/plugin": {"autosave": False},
}

# JavaScript run in the page. ``window.jupyterapp`` is there because the server runs with
# ``LabApp.expose_app_in_browser``; ``find`` is the notebook panel open on ``name``.
FIND_PANEL = """
const find = (name) => {
  const app = window.jupyterapp;
  if (!app || !app.shell) return null;
  for (const w of Array.from(app.shell.widgets('main'))) {
    if (w.context && w.context.path === name && w.content && w.sessionContext) return w;
  }
  return null;
};
"""

READY_JS = (
    "(name) => {"
    + FIND_PANEL
    + """
  const panel = find(name);
  if (!panel || !panel.context.isReady) return false;
  const session = panel.sessionContext.session;
  const kernel = session && session.kernel;
  return !!kernel && kernel.connectionStatus === 'connected' && kernel.status === 'idle';
}"""
)

CAPTURE_IOPUB_JS = (
    "(name) => {"
    + FIND_PANEL
    + """
  const panel = find(name);
  window.__kvsnbIopub = window.__kvsnbIopub || [];
  panel.sessionContext.iopubMessage.connect((_, msg) => {
    const type = msg.header.msg_type;
    if (type === 'error') {
      window.__kvsnbIopub.push({kind: 'error', text: msg.content.ename + ': '
        + msg.content.evalue + '\\n' + (msg.content.traceback || []).join('\\n')});
    } else if (type === 'stream' && msg.content.name === 'stderr') {
      window.__kvsnbIopub.push({kind: 'stderr', text: msg.content.text});
    }
  });
  return true;
}"""
)

KERNEL_PREFIX_JS = (
    "async (name) => {"
    + FIND_PANEL
    + """
  const kernel = find(name).sessionContext.session.kernel;
  let out = '';
  const future = kernel.requestExecute(
    {code: 'import sys; print(sys.prefix)', silent: false, store_history: false});
  future.onIOPub = (msg) => {
    if (msg.header.msg_type === 'stream') out += msg.content.text;
  };
  await future.done;
  return out.trim();
}"""
)

RUN_ALL_JS = (
    "async ([name, timeoutMs]) => {"
    + FIND_PANEL
    + """
  const app = window.jupyterapp;
  const panel = find(name);
  app.shell.activateById(panel.id);
  await app.commands.execute('notebook:clear-all-cell-outputs');
  const run = app.commands.execute('notebook:run-all-cells');
  const timer = new Promise((resolve) => setTimeout(() => resolve('timeout'), timeoutMs));
  return await Promise.race([run.then((ok) => (ok === false ? 'failed' : 'ok')), timer]);
}"""
)

CELLS_DONE_JS = (
    "(name) => {"
    + FIND_PANEL
    + """
  const panel = find(name);
  const kernel = panel.sessionContext.session.kernel;
  if (!kernel || kernel.status !== 'idle') return false;
  for (const cell of Array.from(panel.content.model.cells)) {
    if (cell.type !== 'code') continue;
    if (cell.executionCount === null || cell.executionState === 'running') return false;
  }
  return true;
}"""
)

CELL_OUTPUTS_JS = (
    "(name) => {"
    + FIND_PANEL
    + """
  const panel = find(name);
  return Array.from(panel.content.model.cells)
    .filter((cell) => cell.type === 'code')
    .map((cell) => ({
      count: cell.executionCount,
      source: cell.sharedModel.getSource().slice(0, 200),
      outputs: cell.outputs.toJSON().map((o) => ({
        type: o.output_type,
        name: o.name || null,
        text: o.output_type === 'stream' ? String(o.text).slice(0, 4000)
          : o.output_type === 'error' ? o.ename + ': ' + o.evalue + '\\n'
            + (o.traceback || []).join('\\n') : null,
        mimes: o.data ? Object.keys(o.data) : [],
      })),
    }));
}"""
)


def free_port() -> int:
    """A TCP port free on 127.0.0.1 right now."""
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as sock:
        sock.bind(("127.0.0.1", 0))
        return int(sock.getsockname()[1])


def strip_ansi(text: str) -> str:
    return ANSI.sub("", text)


@dataclass
class LabServer:
    """A running ``jupyter lab`` (its own process group) serving ``root``; ``url`` ends with
    its base URL (without the final slash)."""

    url: str
    root: Path
    process: subprocess.Popen[bytes]
    log: Path

    def api(self, path: str, method: str = "GET", timeout: float = 10.0) -> Any:
        """Call the REST API (no token, no XSRF check on this server); the JSON answer."""
        request = urllib.request.Request(f"{self.url}{path}", method=method)
        with urllib.request.urlopen(request, timeout=timeout) as response:
            body = response.read()
        return json.loads(body) if body else None

    def log_tail(self, chars: int = 4000) -> str:
        try:
            return self.log.read_text(errors="replace")[-chars:]
        except OSError:
            return ""

    def shutdown_session(self, path: str) -> None:
        """Shut down the kernel of the notebook at ``path`` (and its Local KVS)."""
        with contextlib.suppress(OSError, ValueError):
            for session in self.api("/api/sessions"):
                if session.get("path") == path:
                    self.api(f"/api/sessions/{session['id']}", method="DELETE", timeout=20)

    def stop(self) -> None:
        """Shut every kernel down, then the server (SIGTERM, then SIGKILL to its group)."""
        if self.process.poll() is None:
            with contextlib.suppress(OSError, ValueError):
                for kernel in self.api("/api/kernels"):
                    self.api(f"/api/kernels/{kernel['id']}", method="DELETE", timeout=20)
        for sig, wait in ((signal.SIGTERM, LAB_STOP_S), (signal.SIGKILL, 5.0)):
            if self.process.poll() is not None:
                break
            with contextlib.suppress(ProcessLookupError, PermissionError):
                os.killpg(self.process.pid, sig)
            with contextlib.suppress(subprocess.TimeoutExpired):
                self.process.wait(wait)


def write_lab_settings(settings_dir: Path) -> None:
    for plugin, values in LAB_SETTINGS.items():
        path = settings_dir / f"{plugin}.jupyterlab-settings"
        path.parent.mkdir(parents=True, exist_ok=True)
        path.write_text(json.dumps(values))


def start_lab(root: Path, work: Path, log: Path, *, base_url: str = "/") -> LabServer:
    """Start JupyterLab on a free port of 127.0.0.1 serving ``root`` under ``base_url`` (as
    JupyterHub and Binder serve it, e.g. ``/user/NAME/``); wait for /api/status."""
    base_url = "/" + base_url.strip("/") + "/" if base_url.strip("/") else "/"
    for sub in ("config", "data", "runtime", "settings", "workspaces"):
        (work / sub).mkdir(parents=True, exist_ok=True)
    write_lab_settings(work / "settings")
    env = {k: v for k, v in os.environ.items() if k not in KVSNB_ENV}
    env.update(
        JUPYTER_CONFIG_DIR=str(work / "config"),  # no user config
        JUPYTER_DATA_DIR=str(work / "data"),  # no user kernelspecs: the venv's python3 wins
        JUPYTER_RUNTIME_DIR=str(work / "runtime"),
        JUPYTERLAB_SETTINGS_DIR=str(work / "settings"),
        JUPYTERLAB_WORKSPACES_DIR=str(work / "workspaces"),
        JUPYTER_PLATFORM_DIRS="1",
        PATH=os.pathsep.join([str(Path(sys.executable).parent), env.get("PATH", "")]),
        PYTHONUNBUFFERED="1",
    )
    port = free_port()
    command = [
        sys.executable,  # the venv's: its kernel.json says "python", which means this one
        "-m",
        "jupyterlab",
        "--no-browser",
        "--ServerApp.ip=127.0.0.1",
        f"--ServerApp.port={port}",
        f"--ServerApp.base_url={base_url}",
        "--ServerApp.port_retries=0",
        "--allow-root",  # a root CI container; harmless otherwise
        "--IdentityProvider.token=",
        "--ServerApp.password=",
        "--ServerApp.disable_check_xsrf=True",
        f"--ServerApp.root_dir={root}",
        "--LabApp.expose_app_in_browser=True",
        "--LabApp.news_url=None",
        "--LabApp.check_for_updates_class=jupyterlab.NeverCheckForUpdate",
        "--LabApp.extension_manager=readonly",  # never asks PyPI
        "--ServerApp.terminals_enabled=False",
    ]
    with log.open("wb") as out:
        process = subprocess.Popen(
            command,
            cwd=root,
            env=env,
            stdin=subprocess.DEVNULL,
            stdout=out,
            stderr=subprocess.STDOUT,
            start_new_session=True,
        )
    lab = LabServer(f"http://127.0.0.1:{port}{base_url.rstrip('/')}", root, process, log)
    deadline = time.monotonic() + LAB_START_S
    while True:
        if process.poll() is not None:
            raise RuntimeError(f"jupyter lab exited with {process.returncode}:\n{lab.log_tail()}")
        try:
            lab.api("/api/status", timeout=2.0)
            return lab
        except (OSError, ValueError):
            pass
        if time.monotonic() > deadline:
            lab.stop()
            raise RuntimeError(
                f"jupyter lab did not answer /api/status within {LAB_START_S:.0f} s:\n"
                f"{lab.log_tail()}"
            )
        time.sleep(0.25)


@dataclass
class NotebookPage:
    """A notebook open in JupyterLab in its own browser page, with helpers to run it, find
    its widgets, take screenshots and collect errors."""

    name: str
    page: Any  # playwright.sync_api.Page
    lab: LabServer
    console: list[str] = field(default_factory=list)
    shots: list[Path] = field(default_factory=list)

    @property
    def stem(self) -> str:
        return Path(self.name).stem

    def wait_until_ready(self) -> None:
        """Wait for JupyterLab, the notebook and an idle kernel, accepting a kernel-choice
        dialog if one comes up (a notebook without kernel metadata)."""
        deadline = time.monotonic() + PAGE_READY_S
        accept = self.page.locator(".jp-Dialog .jp-Dialog-button.jp-mod-accept")
        while not self.page.evaluate(READY_JS, self.name):
            if time.monotonic() > deadline:
                self.screenshot("not-ready")
                raise AssertionError(
                    f"{self.name}: JupyterLab, the notebook or its kernel not ready within "
                    f"{PAGE_READY_S:.0f} s\nserver log:\n{self.lab.log_tail()}"
                )
            if accept.count():
                with contextlib.suppress(Exception):
                    accept.first.click(timeout=2000)
            time.sleep(0.25)
        self.page.evaluate(CAPTURE_IOPUB_JS, self.name)

    def kernel_prefix(self) -> str:
        """``sys.prefix`` of the notebook's kernel."""
        return str(self.page.evaluate(KERNEL_PREFIX_JS, self.name))

    def run_all(self) -> list[dict[str, Any]]:
        """Clear the outputs, run every cell ("Run All Cells"), wait until every code cell
        has run and the kernel is idle; the cells with their outputs."""
        started = time.monotonic()
        result = self.page.evaluate(RUN_ALL_JS, [self.name, int(RUN_ALL_S * 1000)])
        if result == "timeout":
            self.screenshot("run-all-timeout")
            raise AssertionError(
                f"{self.name}: Run All Cells did not finish within {RUN_ALL_S:.0f} s"
            )
        left = max(5.0, RUN_ALL_S - (time.monotonic() - started))
        try:
            self.page.wait_for_function(
                CELLS_DONE_JS, arg=self.name, polling=250, timeout=left * 1000
            )
        except Exception as exc:
            self.screenshot("run-all-timeout")
            raise AssertionError(
                f"{self.name}: the cells did not all run (kernel not idle) within {RUN_ALL_S:.0f} s"
            ) from exc
        cells: list[dict[str, Any]] = self.page.evaluate(CELL_OUTPUTS_JS, self.name)
        return cells

    def widget_outputs(self) -> Any:
        """Every output that shows a widget view (a Locator)."""
        return self.page.locator(".jp-OutputArea-output").filter(
            has=self.page.locator(".jupyter-widgets")
        )

    def widget_output(self, button: str) -> Any:
        """The output holding the widget with a button labelled ``button`` (a Locator)."""
        return (
            self.page.locator(".jp-OutputArea-output")
            .filter(has=self.page.get_by_role("button", name=button, exact=True))
            .first
        )

    def assert_widgets_render(self, cells: list[dict[str, Any]]) -> int:
        """Every widget-view output of the cells is drawn as a widget, and no "Error
        displaying widget" / "Failed to load model class" text shows; the count of views."""
        expected = sum(WIDGET_MIME in o["mimes"] for c in cells for o in c["outputs"])
        assert expected >= 1, f"{self.name}: no cell displayed a widget"
        deadline = time.monotonic() + RENDER_S
        while True:
            drawn = self.widget_outputs().count()
            text = self.page.locator("#main").inner_text()
            broken = [e for e in WIDGET_ERRORS if e in text]
            assert not broken, f"{self.name}: the page shows {broken}:\n{text[-3000:]}"
            if drawn >= expected:
                return drawn
            if time.monotonic() > deadline:
                self.screenshot("render-timeout")
                raise AssertionError(
                    f"{self.name}: {drawn} of {expected} widget outputs drawn within "
                    f"{RENDER_S:.0f} s"
                )
            time.sleep(0.25)

    def assert_no_errors(self, cells: list[dict[str, Any]] | None = None) -> None:
        """No cell has an error output or a traceback on stderr, the kernel sent no error
        or traceback (cells and widget callbacks), no output shows "Traceback" and no
        widget error text is on the page."""
        problems: list[str] = []
        for i, cell in enumerate(cells or []):
            for out in cell["outputs"]:
                text = strip_ansi(out["text"] or "")
                if out["type"] == "error" or (out["name"] == "stderr" and "Traceback" in text):
                    problems.append(f"cell {i} ({cell['source'][:60]!r}):\n{text}")
        problems += [f"kernel:\n{e}" for e in self.kernel_errors()]
        outputs = self.page.locator(".jp-OutputArea-output").all_inner_texts()
        problems += [f"output:\n{t[-2000:]}" for t in outputs if "Traceback" in t]
        stderr = self.page.locator(f'[data-mime-type="{STDERR_MIME}"]').all_inner_texts()
        problems += [f"stderr output:\n{t[-2000:]}" for t in stderr if "Traceback" in t]
        text = self.page.locator("#main").inner_text()
        problems += [f"page shows {e!r}" for e in WIDGET_ERRORS if e in text]
        problems += [
            f"browser console: {m}" for m in self.console if any(e in m for e in WIDGET_ERRORS)
        ]
        assert not problems, f"{self.name}: errors\n" + "\n\n".join(problems)

    def kernel_errors(self) -> list[str]:
        """Tracebacks and error messages the kernel sent so far (cells and widget
        callbacks alike), without ANSI colours."""
        messages = self.page.evaluate("() => window.__kvsnbIopub || []")
        return [
            strip_ansi(m["text"])
            for m in messages
            if m["kind"] == "error" or "Traceback" in m["text"]
        ]

    def save_logs(self) -> None:
        messages = self.page.evaluate("() => window.__kvsnbIopub || []")
        stderr = "".join(strip_ansi(m["text"]) for m in messages)
        (ARTIFACTS / f"{self.stem}-kernel-stderr.log").write_text(stderr)
        (ARTIFACTS / f"{self.stem}-console.log").write_text("\n".join(self.console) + "\n")

    def screenshot(self, step: str, area: Any = None) -> None:
        """Save ``<notebook>-<step>-page.png`` (the window, with ``area`` scrolled into
        view) and ``<notebook>-<step>-widget.png`` (``area`` alone) in the artifacts."""
        with contextlib.suppress(Exception):
            if area is not None:
                # a widget taller than the notebook's scroll area would be cut off: make
                # the window tall enough for it for this one shot
                box = area.bounding_box(timeout=5000)
                tall = int(box["height"]) + 400 if box else 0
                if tall > VIEWPORT["height"]:
                    self.page.set_viewport_size({**VIEWPORT, "height": tall})
                try:
                    area.scroll_into_view_if_needed(timeout=5000)
                    path = ARTIFACTS / f"{self.stem}-{step}-widget.png"
                    area.screenshot(path=path, timeout=10_000, animations="disabled")
                    self.shots.append(path)
                finally:
                    self.page.set_viewport_size(VIEWPORT)
        with contextlib.suppress(Exception):
            path = ARTIFACTS / f"{self.stem}-{step}-page.png"
            self.page.screenshot(path=path, full_page=True, timeout=10_000)
            self.shots.append(path)


def player_notebook(path: Path, cells: list[str]) -> None:
    """Write a notebook of code cells (python3 kernel) at ``path``."""
    notebook = {
        "cells": [
            {"cell_type": "code", "execution_count": None, "metadata": {}, "outputs": [],
             "source": source}
            for source in cells
        ],
        "metadata": {
            "kernelspec": {"display_name": "Python 3", "language": "python", "name": "python3"},
        },
        "nbformat": 4,
        "nbformat_minor": 5,
    }  # fmt: skip
    path.write_text(json.dumps(notebook, indent=1))
