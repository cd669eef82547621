"""ipywidgets front ends of kvsnb, one module per family, built from standard widgets only
(nothing to build or enable in JupyterLab):

- ``SessionPanel``: join a storage session as master or viewer and watch it;
- ``TrackTester``: preflight checklist of a source, then an end-to-end ingest test;
- ``ImageBrowser``: GetImages over a time range, image by image with stamps;
- ``HlsViewer``: the decoded frames of an HLS session with fragment boundaries;
- ``BrowserSession`` (anywidget): the browser showing the notebook joins a storage session as
  master (its camera) or viewer (the master live), credentials kept in the kernel;
- ``Player`` (anywidget): an HLS or DASH session playing in a ``<video>`` with hls.js or
  dash.js, the program date time of the frame on screen read back by the kernel;
- ``LatencyView``, ``TimelineView``: the analysis plots and summaries, live.

Button callbacks schedule coroutines on the running event loop (the kernel's); each widget
keeps its last action in ``task`` so that code (and tests) can ``await widget.task``.
"""

from kvsnb.widgets.analysis_views import FramesSource, LatencyView, TimelineView
from kvsnb.widgets.browser_session import BrowserSession, Transport
from kvsnb.widgets.hls_viewer import HlsViewer, PlaybackMode
from kvsnb.widgets.image_browser import ImageBrowser, ImageFormat
from kvsnb.widgets.player import Player
from kvsnb.widgets.session_panel import Role, SessionPanel
from kvsnb.widgets.track_tester import TrackTester, checklist_html

__all__ = [
    "BrowserSession",
    "FramesSource",
    "HlsViewer",
    "ImageBrowser",
    "ImageFormat",
    "LatencyView",
    "PlaybackMode",
    "Player",
    "Role",
    "SessionPanel",
    "TimelineView",
    "TrackTester",
    "Transport",
    "checklist_html",
]
