"""``HlsViewer``: step or play through the decoded frames of a KVS HLS session.

Paste an ``HLSStreamingSessionURL`` or build one from a stream (LIVE or ON_DEMAND, with a
time range for ON_DEMAND: ``hls_session_url``), then **Read**: ``HlsReader.frames`` decodes
every frame (ON_DEMAND: the whole playlist; LIVE: the playlist followed for the chosen
seconds), shown as they arrive; in LIVE mode the slider follows the newest frame. A
``Play`` and a slider step through the frames; each shows its wall-clock timestamp
(PROGRAM-DATE-TIME + offset), presentation time, segment (fragment) media sequence number,
keyframe flag and, for stamped media, the stamp.
A frame that starts a new segment is marked as a fragment boundary, and ◀◀ / ▶▶ jump
between boundaries. The viewer keeps the last ``max_frames`` decoded frames.

To watch a session play in a ``<video>`` (hls.js or dash.js), use ``Player``; this viewer
is for stepping through the decoded frames in the kernel.
"""

from __future__ import annotations

import asyncio
import collections
import datetime as dt
import logging
from typing import Any, Literal, get_args

import ipywidgets as widgets
import pandas as pd
from traitlets import Int

from kvsnb.client.session import try_read_stamp_frame
from kvsnb.client.target import Target
from kvsnb.playback.hls import HlsFrame, HlsReader, hls_session_url
from kvsnb.widgets._common import Tasks, error_html, iso, table_html, to_jpeg
from kvsnb.wire.times import parse_time

logger = logging.getLogger(__name__)

PlaybackMode = Literal["ON_DEMAND", "LIVE"]
MODES: tuple[PlaybackMode, ...] = get_args(PlaybackMode)
MAX_FRAMES = 300  # decoded frames kept (480p yuv420p: ~0.5 MB each)
FOLLOW_S = 10
PLAY_INTERVAL_MS = 100
FRAME_WIDTH = 480
REDRAW_EVERY = 15  # while reading, redraw at each new segment and every this many frames


class HlsViewer(widgets.VBox):
    """Read an HLS session and browse its frames with fragment boundaries (see the module
    docstring). ``target`` is needed only to build a URL from a stream. Observe ``index``
    for the frame shown; ``frames`` holds the decoded ``HlsFrame`` objects."""

    index = Int(0, help="Position in ``frames`` of the frame shown now.").tag(sync=False)

    def __init__(
        self,
        url: str = "",
        *,
        target: Target | None = None,
        stream: str = "",
        mode: PlaybackMode = "ON_DEMAND",
        start: str = "last 300 s",
        end: str = "now",
        max_frames: int = MAX_FRAMES,
        follow_s: int = FOLLOW_S,
    ) -> None:
        super().__init__()
        if mode not in MODES:
            raise ValueError(f"mode must be one of {MODES}, not {mode!r}")
        self.target = target
        self.frames: collections.deque[HlsFrame] = collections.deque(maxlen=max_frames)
        self.reader: HlsReader | None = None
        self.task: asyncio.Future[Any] | None = None
        self._tasks = Tasks()

        self.url_input = widgets.Text(
            value=url, description="URL", placeholder="HLSStreamingSessionURL"
        )
        self.read_button = widgets.Button(description="Read", button_style="primary")
        self.stream_input = widgets.Text(value=stream, description="stream")
        self.mode_input = widgets.ToggleButtons(options=list(MODES), value=mode)
        self.start_input = widgets.Text(value=start, description="start")
        self.end_input = widgets.Text(value=end, description="end")
        self.url_button = widgets.Button(
            description="Get URL", tooltip="GetHLSStreamingSessionURL for the stream"
        )
        self.follow_input = widgets.IntSlider(
            value=follow_s, min=1, max=120, description="follow s"
        )
        self.status = widgets.HTML("")
        self.play = widgets.Play(value=0, min=0, max=0, interval=PLAY_INTERVAL_MS)
        self.slider = widgets.IntSlider(value=0, min=0, max=0, description="frame")
        widgets.link((self.play, "value"), (self.slider, "value"))
        self.prev_button = widgets.Button(description="◀", tooltip="previous frame")
        self.next_button = widgets.Button(description="▶", tooltip="next frame")
        self.prev_segment = widgets.Button(description="◀◀", tooltip="previous fragment start")
        self.next_segment = widgets.Button(description="▶▶", tooltip="next fragment start")
        for b in (self.prev_button, self.next_button, self.prev_segment, self.next_segment):
            b.layout = {"width": "4em"}
        self.image = widgets.Image(format="jpeg")
        self.caption = widgets.HTML("")
        self.segments_html = widgets.HTML("")

        self.url_button.on_click(lambda _: self._act(self.build_url()))
        self.read_button.on_click(lambda _: self._act(self.read()))
        self.prev_button.on_click(lambda _: self.step(-1))
        self.next_button.on_click(lambda _: self.step(1))
        self.prev_segment.on_click(lambda _: self.jump_segment(-1))
        self.next_segment.on_click(lambda _: self.jump_segment(1))
        self.slider.observe(lambda change: self.show(int(change["new"])), names="value")
        self.children = [
            widgets.HBox([self.stream_input, self.mode_input]),
            widgets.HBox([self.start_input, self.end_input, self.url_button]),
            widgets.HBox([self.url_input, self.follow_input, self.read_button]),
            self.status,
            widgets.HBox(
                [
                    self.play,
                    self.prev_segment,
                    self.prev_button,
                    self.slider,
                    self.next_button,
                    self.next_segment,
                ]
            ),
            self.image,
            self.caption,
            self.segments_html,
        ]

    @classmethod
    def from_url(cls, url: str, **kwargs: Any) -> HlsViewer:
        """A viewer of an existing ``HLSStreamingSessionURL``."""
        return cls(url, **kwargs)

    @classmethod
    def from_stream(
        cls,
        target: Target,
        stream: str,
        *,
        mode: PlaybackMode = "ON_DEMAND",
        start: dt.datetime | None = None,
        end: dt.datetime | None = None,
        **kwargs: Any,
    ) -> HlsViewer:
        """A viewer of a new session on ``stream`` (GetHLSStreamingSessionURL now);
        ON_DEMAND needs ``start`` and ``end``."""
        url = hls_session_url(target, stream, mode=mode, start=start, end=end)
        if start is not None:
            kwargs["start"] = start.isoformat()
        if end is not None:
            kwargs["end"] = end.isoformat()
        return cls(url, target=target, stream=stream, mode=mode, **kwargs)

    def __repr__(self) -> str:
        return f"<HlsViewer {self.mode_input.value}: {len(self.frames)} frames>"

    def _act(self, coro: Any) -> asyncio.Future[Any]:
        self.task = self._tasks.spawn_guarded(coro, self._show_error)
        return self.task

    def _show_error(self, message: str) -> None:
        self.status.value = error_html(message)

    # ------------------------------------------------------------------ session

    async def build_url(self) -> str:
        """GetHLSStreamingSessionURL for the stream, mode and (ON_DEMAND) time range."""
        if self.target is None:
            raise ValueError("building a URL from a stream needs a target (HlsViewer(target=))")
        stream = self.stream_input.value.strip()
        if not stream:
            raise ValueError("type a stream name or ARN first")
        mode = self.mode_input.value
        start = end = None
        if mode == "ON_DEMAND":
            now = dt.datetime.now(dt.UTC)
            start = parse_time(self.start_input.value, now)
            end = parse_time(self.end_input.value, now)
        url = await asyncio.to_thread(
            hls_session_url, self.target, stream, mode=mode, start=start, end=end
        )
        self.url_input.value = url
        self.status.value = f"{mode} session URL ready"
        return url

    async def read(self) -> list[HlsFrame]:
        """Read the session's frames, showing them as they arrive (a LIVE playlist is
        followed for the chosen seconds, an ON_DEMAND one read to its end); returns the
        frames kept."""
        url = self.url_input.value.strip()
        if not url:
            raise ValueError("paste a session URL or press Get URL first")
        self.frames.clear()
        self.read_button.disabled = True
        self.reader = HlsReader(url)
        live = self.mode_input.value == "LIVE"
        self.status.value = "reading the playlist …"
        try:
            async for frame in self.reader.frames(
                follow=True, max_seconds=float(self.follow_input.value)
            ):
                new_segment = not self.frames or self.frames[-1].sequence != frame.sequence
                self.frames.append(frame)
                if new_segment or len(self.frames) % REDRAW_EVERY == 0:
                    self._frames_changed(follow=live)
        finally:
            self.read_button.disabled = False
        self._frames_changed(follow=live)
        segments = len({f.sequence for f in self.frames})
        self.status.value = f"{len(self.frames)} frames in {segments} segments"
        return list(self.frames)

    def _frames_changed(self, *, follow: bool) -> None:
        last = max(0, len(self.frames) - 1)
        self.play.max = self.slider.max = last
        if follow:
            self.slider.value = last
        self.segments_html.value = table_html(self.segment_table())
        self.show(int(self.slider.value))

    # ------------------------------------------------------------------ browse

    def segment_table(self) -> pd.DataFrame:
        """One row per segment among the frames kept: sequence, frames, keyframes, first
        timestamp, first frame's position."""
        rows: dict[int, dict[str, Any]] = {}
        for i, f in enumerate(self.frames):
            row = rows.setdefault(
                f.sequence,
                {
                    "sequence": f.sequence,
                    "frames": 0,
                    "keyframes": 0,
                    "first_timestamp": iso(f.timestamp),
                    "first_frame": i,
                },
            )
            row["frames"] += 1
            row["keyframes"] += int(f.keyframe)
        columns = ["sequence", "frames", "keyframes", "first_timestamp", "first_frame"]
        return pd.DataFrame(list(rows.values()), columns=columns)

    def boundaries(self) -> list[int]:
        """Positions of the frames that start a segment (fragment boundaries)."""
        seqs = [f.sequence for f in self.frames]
        return [i for i in range(len(seqs)) if i == 0 or seqs[i] != seqs[i - 1]]

    def step(self, delta: int) -> None:
        """Show the frame ``delta`` positions away (clamped to the frames kept)."""
        if self.frames:
            self.slider.value = min(max(0, int(self.slider.value) + delta), len(self.frames) - 1)

    def jump_segment(self, direction: int) -> None:
        """Show the first frame of the next (``1``) or current/previous (``-1``) segment."""
        here = int(self.slider.value)
        starts = self.boundaries()
        if direction > 0:
            later = [i for i in starts if i > here]
            if later:
                self.slider.value = later[0]
        else:
            earlier = [i for i in starts if i < here]
            if earlier:
                self.slider.value = earlier[-1]

    def show(self, i: int) -> None:
        """Show frame ``i`` with its timestamp, segment and stamp."""
        if not self.frames or not 0 <= i < len(self.frames):
            self.image.value = b""
            self.caption.value = "no frames"
            return
        f = self.frames[i]
        self.index = i
        self.image.value = to_jpeg(f.frame, width=FRAME_WIDTH)
        boundary = i == 0 or self.frames[i - 1].sequence != f.sequence
        parts = [
            f"<b>{i + 1}/{len(self.frames)}</b>",
            f"timestamp {iso(f.timestamp)}",
            f"pts {f.pts_s:.3f} s",
            f"segment {f.sequence}" + (" <b>(fragment start)</b>" if boundary else ""),
        ]
        if f.keyframe:
            parts.append("keyframe")
        stamp = try_read_stamp_frame(f.frame)
        if stamp is not None:
            captured = pd.Timestamp(stamp.capture_ms, unit="ms", tz="UTC")
            parts.append(f"stamp: frame {stamp.index} captured {iso(captured)}")
        self.caption.value = " · ".join(parts)

    def close(self) -> None:
        """Stop reading and close the widget."""
        self._tasks.cancel()
        super().close()
