"""``Player``: a stream's HLS or DASH session playing in a ``<video>`` element, in JupyterLab,
on Binder or in any Jupyter front end with anywidget.

The browser plays the session itself with hls.js or dash.js (the ES-module builds fetched from
npm at set-up, ``vendor``; the one the protocol needs is sent to the browser in a message
when the front end asks for it, once per widget however many views it has, so nothing is
built or enabled in JupyterLab, and a saved notebook's widget state holds no third-party
code). It needs to reach the session URL: on the same
machine Local KVS's 127.0.0.1 URL works (its HLS and DASH resources allow any origin); on
Binder or a remote JupyterLab, Local KVS answers under the Jupyter server's
``/proxy/PORT/`` path (jupyter-server-proxy) and ``from_stream`` hands the browser that URL
(``Target.public``).

Under the video, the program date time of the frame on screen: from
``#EXT-X-PROGRAM-DATE-TIME`` (hls.js ``playingDate``) for HLS, from the ``kvs:ts`` attributes
of the MPD for DASH (sessions are created with DisplayFragmentTimestamp=ALWAYS). The browser
reports back what is on screen a few times a second: ``on_screen_ms`` (the producer
timestamp of the frame shown, epoch ms), ``current_time``, ``paused``, ``decoded_frames``,
``error``. ``seek``, ``pause`` and ``play`` act on the video. Nothing in the kernel waits
for a browser: with no view open the traits keep their defaults (``on_screen`` is None).

LIVE plays close to the live edge: hls.js syncs ``live_sync_segments`` segments behind the
newest (default 1; hls.js's default is 3) and speeds up to catch up; dash.js targets a live
delay of ``live_sync_segments`` + 1 target durations with catch-up on.

``HlsViewer`` stays the tool for frame-by-frame analysis in the kernel.
"""

from __future__ import annotations

import datetime as dt
import logging
from pathlib import Path
from typing import Any, Literal, get_args

import anywidget
import pandas as pd
import traitlets

from kvsnb.client.target import Target
from kvsnb.playback.dash import dash_session_url
from kvsnb.playback.hls import hls_session_url
from kvsnb.widgets.vendor import library

logger = logging.getLogger(__name__)

Protocol = Literal["HLS", "DASH"]
PROTOCOLS: tuple[Protocol, ...] = get_args(Protocol)
PlayerMode = Literal["LIVE", "ON_DEMAND", "LIVE_REPLAY"]
MODES: tuple[PlayerMode, ...] = get_args(PlayerMode)
LIBRARY = {"HLS": "hls.js", "DASH": "dash.js"}

ESM = Path(__file__).with_name("player.js")  # the front end, shipped as package data


class Player(anywidget.AnyWidget):
    """Plays an HLS or DASH session URL in a ``<video>`` (see the module docstring)."""

    _esm = ESM
    url = traitlets.Unicode(help="the session URL, as the browser reaches it").tag(sync=True)
    protocol = traitlets.Enum(PROTOCOLS, default_value="HLS", help="HLS or DASH").tag(sync=True)
    live = traitlets.Bool(False, help="LIVE or LIVE_REPLAY: play near the live edge").tag(sync=True)
    live_sync_segments = traitlets.Int(
        1, min=1, help="LIVE: how many segments behind the newest to play"
    ).tag(sync=True)
    target_duration_s = traitlets.Float(
        1.0, help="the session's fragment duration (DASH live delay)"
    ).tag(sync=True)
    report_ms = traitlets.Int(200, min=50, help="how often the browser reports (ms)").tag(sync=True)
    width = traitlets.Int(480, min=64, help="width of the video element (px)").tag(sync=True)
    current_time = traitlets.Float(0.0, help="the video's currentTime (s), from the browser").tag(
        sync=True
    )
    on_screen_ms = traitlets.Int(
        -1, help="producer timestamp (epoch ms) of the frame on screen; -1 until known"
    ).tag(sync=True)
    paused = traitlets.Bool(True, help="whether the video is paused, from the browser").tag(
        sync=True
    )
    decoded_frames = traitlets.Int(0, help="video frames the browser has decoded").tag(sync=True)
    error = traitlets.Unicode("", help="the player's fatal error, if any").tag(sync=True)

    def __init__(self, url: str, protocol: Protocol = "HLS", **kwargs: Any) -> None:
        if protocol not in PROTOCOLS:
            raise ValueError(f"protocol must be one of {PROTOCOLS}, not {protocol!r}")
        self._source = library(LIBRARY[protocol])  # VendorError now if it is missing
        super().__init__(url=url, protocol=protocol, **kwargs)
        self.on_msg(self._on_message)

    def _on_message(self, _widget: Any, content: Any, _buffers: Any) -> None:
        """The front end asks for the player library: sent as a message, never kept in the
        widget state (so a saved notebook carries no third-party code)."""
        if isinstance(content, dict) and content.get("type") == "need-library":
            self.send({"type": "library", "source": self._source})

    @classmethod
    def from_stream(
        cls,
        target: Target,
        stream: str,
        *,
        protocol: Protocol = "HLS",
        mode: PlayerMode = "LIVE",
        start: dt.datetime | None = None,
        end: dt.datetime | None = None,
        container: str = "FRAGMENTED_MP4",
        selector: str = "PRODUCER_TIMESTAMP",
        max_results: int | None = None,
        expires: int = 3600,
        **kwargs: Any,
    ) -> Player:
        """A player of a new session on ``stream`` (Get{HLS,DASH}StreamingSessionURL now,
        with fragment timestamps shown: producer timestamps by default, so the time shown
        is the frame's capture time). ON_DEMAND without a range plays everything stored;
        the URL given to the browser is the public one (``Target.public``)."""
        if mode not in MODES:
            raise ValueError(f"mode must be one of {MODES}, not {mode!r}")
        common: dict[str, Any] = {
            "mode": mode,
            "start": start,
            "end": end,
            "selector": selector,
            "expires": expires,
            "max_results": max_results,
        }
        if protocol == "HLS":
            url = hls_session_url(target, stream, container=container, **common)
        else:
            url = dash_session_url(target, stream, **common)
        return cls(target.public(url), protocol, live=mode != "ON_DEMAND", **kwargs)

    @property
    def on_screen(self) -> pd.Timestamp | None:
        """The producer timestamp of the frame on screen, as the browser last reported it
        (None before any report)."""
        if self.on_screen_ms < 0:
            return None
        return pd.Timestamp(self.on_screen_ms, unit="ms", tz="UTC")

    def seek(self, seconds: float) -> None:
        """Move the video to ``seconds`` (its currentTime)."""
        self.send({"type": "seek", "time": float(seconds)})

    def pause(self) -> None:
        """Pause the video."""
        self.send({"type": "pause"})

    def play(self) -> None:
        """Resume the video."""
        self.send({"type": "play"})

    def __repr__(self) -> str:
        return f"<kvsnb.widgets.Player {self.protocol} {'LIVE' if self.live else 'ON_DEMAND'}>"
