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
``#EXT-X-PROGRAM-DATE-TIME`` for HLS (the fragment holding the frame), from the ``kvs:ts``
attributes of the MPD for DASH (sessions are created with DisplayFragmentTimestamp=ALWAYS),
and what the video is doing when it is not simply playing: "paused", "ended" (the last
frame's time stays), "live stream stopped" (LIVE: no new fragment for a while and nothing
left to play). The browser reports back what is on screen a few times a second:
``on_screen_ms`` (the producer timestamp of the frame shown, epoch ms), ``current_time``,
``paused``, ``status``, ``decoded_frames``, ``dropped_frames``, ``stalls``, ``error``.
``seek``, ``pause`` and ``play`` act on the video. Nothing in the kernel waits for a browser:
with no view open the traits keep their defaults (``on_screen`` is None).

The reports travel over the kernel bridge (``kvsnb.widgets.bridge``; the page side is
``bridge.js``, put in front of ``player.js`` as ``BrowserSession`` does), so they reach the
kernel while a cell runs: a cell can display a Player and ``await
player.wait_on_screen(...)``. When the page cannot open the bridge's socket they go as
ordinary trait changes, which the kernel reads only between cells.

The view starts the video itself with ``play()`` (muted, so browsers allow it), not with
the ``autoplay`` attribute, which Chromium holds until the video is scrolled into view.
LIVE plays close to the live edge: hls.js syncs ``live_sync_segments`` segments behind the
newest (default 1; hls.js's default is 3) and speeds up to catch up; dash.js targets a live
delay of ``live_sync_segments`` + 0.7 target durations behind the live edge (1.7 s at 1 s
fragments: a segment reaches dash.js 0.1-0.35 s after it ends) with a gentle catch-up.
``live_delay_s`` > 0 sets the delay in seconds instead: hls.js's ``liveSyncDuration`` (behind
the end of the newest listed segment) or dash.js's ``liveDelay`` (behind the live edge, which
Local KVS's MPD puts at capture time). dash.js alone re-reads a LIVE MPD every
``minimumUpdatePeriod`` (1 s), so it learnt of a segment up to a second after it was listed;
the view re-reads the MPD when the next segment is due (a little early, then every 300 ms
until it is listed) and has dash.js re-read it as soon as one is, within AWS's 5 manifest
calls a second per session (about 3 in all); while no new segment is available dash.js
tries again every 100 ms instead of its default 500 ms. dash.js reads the server's clock
from the MPD's ``UTCTiming`` to the second only (its parser turns the value into a date and
back into text without the milliseconds), so it played up to a second further behind than
asked; the view estimates the server's clock from its own MPD reads and gives dash.js that
time, to the millisecond, every 4 s.

``HlsViewer`` stays the tool for frame-by-frame analysis in the kernel.
"""

from __future__ import annotations

import asyncio
import datetime as dt
import logging
import uuid
from pathlib import Path
from typing import Any, Literal, get_args

import anywidget
import pandas as pd
import traitlets

from kvsnb.client.target import Target
from kvsnb.playback.dash import dash_session_url
from kvsnb.playback.hls import hls_session_url
from kvsnb.widgets.bridge import BridgeChannel, bridge_channel, page_js, page_urls
from kvsnb.widgets.vendor import library

logger = logging.getLogger(__name__)

Protocol = Literal["HLS", "DASH"]
PROTOCOLS: tuple[Protocol, ...] = get_args(Protocol)
PlayerMode = Literal["LIVE", "ON_DEMAND", "LIVE_REPLAY"]
MODES: tuple[PlayerMode, ...] = get_args(PlayerMode)
LIVE_WINDOW_FRAGMENTS = 20  # fragments a LIVE session lists (AWS: 5 unless asked)
Status = Literal["", "waiting", "playing", "paused", "ended", "stopped", "error"]
STATUSES: tuple[Status, ...] = get_args(Status)
LIBRARY = {"HLS": "hls.js", "DASH": "dash.js"}
# what the page reports, and the type each trait takes
REPORTED = {
    "current_time": float,
    "paused": bool,
    "on_screen_ms": int,
    "decoded_frames": int,
    "dropped_frames": int,
    "stalls": int,
    "status": str,
    "error": str,
}

ESM = Path(__file__).with_name("player.js")  # the front end, shipped as package data


def _running_loop() -> asyncio.AbstractEventLoop | None:
    try:
        return asyncio.get_running_loop()
    except RuntimeError:
        return None


def build_esm() -> str:
    """The widget's front end: the bridge's page side (``bridge.js``), then ``player.js``."""
    return page_js() + "\n" + ESM.read_text()


class Player(anywidget.AnyWidget):
    """Plays an HLS or DASH session URL in a ``<video>`` (see the module docstring)."""

    _esm = build_esm()
    url = traitlets.Unicode(help="the session URL, as the browser reaches it").tag(sync=True)
    protocol = traitlets.Enum(PROTOCOLS, default_value="HLS", help="HLS or DASH").tag(sync=True)
    live = traitlets.Bool(False, help="LIVE or LIVE_REPLAY: play near the live edge").tag(sync=True)
    live_sync_segments = traitlets.Int(
        1, min=1, help="LIVE: how many segments behind the newest to play"
    ).tag(sync=True)
    target_duration_s = traitlets.Float(
        1.0, help="the session's fragment duration (DASH live delay)"
    ).tag(sync=True)
    live_delay_s = traitlets.Float(
        0.0,
        min=0.0,
        help="LIVE: seconds behind the live edge to play (0: from live_sync_segments)",
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
    dropped_frames = traitlets.Int(0, help="decoded video frames never shown").tag(sync=True)
    stalls = traitlets.Int(0, help="times the playing video waited for data, then played on").tag(
        sync=True
    )
    status = traitlets.Enum(
        STATUSES,
        default_value="",
        help="waiting, playing, paused, ended, stopped (LIVE: no new fragment) or error",
    ).tag(sync=True)
    error = traitlets.Unicode("", help="the player's fatal error, if any").tag(sync=True)
    bridge_urls = traitlets.List(traitlets.Unicode(), help="the bridge socket URLs").tag(sync=True)
    bridge_token = traitlets.Unicode(help="the page's token for the bridge (not a key)").tag(
        sync=True
    )

    def __init__(self, url: str, protocol: Protocol = "HLS", **kwargs: Any) -> None:
        if protocol not in PROTOCOLS:
            raise ValueError(f"protocol must be one of {PROTOCOLS}, not {protocol!r}")
        self._source = library(LIBRARY[protocol])  # VendorError now if it is missing
        # the bridge channel first: the page reads its token and URLs from the first state.
        # Only on a running loop (a kernel's, while it runs the cell): nothing would serve
        # the socket otherwise, and the page's reports go as trait changes
        home = _running_loop()
        link = bridge_channel(uuid.uuid4().hex) if home is not None else None
        super().__init__(
            url=url,
            protocol=protocol,
            bridge_token=link.token if link else "",
            bridge_urls=page_urls(link) if link else [],
            **kwargs,
        )
        self.channel_link: BridgeChannel | None = link
        self._home = home  # the kernel's loop, where the waiters wait (None: a script's)
        self._reported = asyncio.Event()
        if link is not None:
            link.on_json(self._on_page)
        self.on_msg(self._on_message)

    def _on_message(self, _widget: Any, content: Any, _buffers: Any) -> None:
        """The front end asks for the player library: sent as a message, never kept in the
        widget state (so a saved notebook carries no third-party code)."""
        if isinstance(content, dict) and content.get("type") == "need-library":
            self.send({"type": "library", "source": self._source})

    def _on_page(self, msg: Any) -> None:
        """A report from the page (over the bridge, on the kernel loop): the traits it names."""
        if not isinstance(msg, dict) or msg.get("type") != "report":
            return
        values = {}
        for name, kind in REPORTED.items():
            if name in msg and msg[name] is not None:
                try:
                    values[name] = kind(msg[name])
                except (TypeError, ValueError):
                    logger.warning("Player: a report with a bad %s: %r", name, msg[name])
        if values.get("status") not in (None, *STATUSES):
            values.pop("status")
        with self.hold_trait_notifications():
            for name, value in values.items():
                setattr(self, name, value)

    @traitlets.observe("on_screen_ms", "status", "current_time")
    def _on_report(self, _change: Any) -> None:
        """Wake ``wait_on_screen`` (on its loop: a trait change from the page may come on the
        kernel's comm thread)."""
        reported = getattr(self, "_reported", None)
        if reported is None:
            return
        try:
            running: asyncio.AbstractEventLoop | None = asyncio.get_running_loop()
        except RuntimeError:
            running = None
        if self._home is None or running is self._home:
            reported.set()
        elif not self._home.is_closed():
            self._home.call_soon_threadsafe(reported.set)

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
        the URL given to the browser is the public one (``Target.public``). A LIVE or
        LIVE_REPLAY session lists the newest ``LIVE_WINDOW_FRAGMENTS`` fragments unless
        ``max_results`` says otherwise (AWS's default is 5: a player that falls a few
        fragments behind, as on a busy machine, would find its position gone from the
        playlist)."""
        if mode not in MODES:
            raise ValueError(f"mode must be one of {MODES}, not {mode!r}")
        if max_results is None and mode != "ON_DEMAND":
            max_results = LIVE_WINDOW_FRAGMENTS
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

    async def page_connected(self, timeout: float = 5.0) -> bool:
        """Whether a browser shows the Player: its page opens the bridge within ``timeout``
        seconds (False when the notebook runs headless: nbval, nbconvert). A Player made
        with no running event loop has no bridge: then whether a report came."""
        if self.channel_link is None:
            return bool(self.status)
        try:
            await self.channel_link.wait_open(timeout)
        except TimeoutError:
            return False
        return True

    async def wait_on_screen(
        self, after: dt.datetime | pd.Timestamp | None = None, timeout: float | None = 30.0
    ) -> pd.Timestamp:
        """Wait until the browser reports a frame on screen (later than ``after``, when
        given) and return its producer timestamp. Works inside a running cell (the reports
        come over the bridge); ``TimeoutError`` after ``timeout`` seconds (with no browser
        showing the Player, none ever comes)."""
        limit = None if after is None else pd.Timestamp(after)
        if limit is not None and limit.tzinfo is None:
            limit = limit.tz_localize("UTC")

        async def reported() -> pd.Timestamp:
            while True:
                self._reported.clear()
                shown = self.on_screen
                if shown is not None and (limit is None or shown > limit):
                    return shown
                await self._reported.wait()

        try:
            return await asyncio.wait_for(reported(), timeout)
        except TimeoutError:
            raise TimeoutError(
                f"the Player reported no frame{'' if limit is None else f' after {limit}'} "
                f"within {timeout} s: is it shown in a browser?"
            ) from None

    def close(self) -> None:
        """Close the widget (its views stop playing) and its bridge channel."""
        link = getattr(self, "channel_link", None)  # None too when __init__ failed before it
        if link is not None:
            link.close()
        super().close()

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
