"""``ImageBrowser``: GetImages over a time range, browsed image by image.

Choose a stream (ListStreams), a time range (``now``, ``last 60 s``, ``5 min ago`` or ISO
8601), a sampling interval, a format and a size, and **Fetch**: ``get_images`` is called
per 300 s window (the most one GetImages call covers) so that the progress bar follows the
windows. A ``Play`` and a slider step through the images; each shows its sampled time, its
error if it has no media, and for stamped media the stamp read back: capture time, frame
index and stamp − sampled time.
"""

from __future__ import annotations

import asyncio
import datetime as dt
import html
import logging
from typing import Any, Literal, get_args

import ipywidgets as widgets
import pandas as pd
from traitlets import Int

from kvsnb.analysis.stamps import stamps_from_images
from kvsnb.client.ingest import IngestResult
from kvsnb.client.target import Target
from kvsnb.launch import connect
from kvsnb.playback.images import MIN_INTERVAL_MS, get_images, image_windows
from kvsnb.widgets._common import Tasks, error_html, iso
from kvsnb.wire.times import parse_time

logger = logging.getLogger(__name__)

ImageFormat = Literal["JPEG", "PNG"]
FORMATS: tuple[ImageFormat, ...] = get_args(ImageFormat)
SIZES: dict[str, tuple[int | None, int | None]] = {
    "as stored": (None, None),
    "640×480": (640, 480),
    "320×240": (320, 240),
    "160×120": (160, 120),
}
MAX_INTERVAL_MS = 20_000
PLAY_INTERVAL_MS = 300


class ImageBrowser(widgets.VBox):
    """Fetch images of a stream with GetImages and step through them (module docstring).

    ``target`` defaults to ``connect()``. After a fetch, ``images`` holds one row per
    sampled time: timestamp, error, image (JPEG/PNG bytes) and the stamp columns. Observe
    ``index`` for the image shown.
    """

    index = Int(0, help="Row of ``images`` shown now.").tag(sync=False)

    def __init__(
        self,
        target: Target | None = None,
        stream: str | None = None,
        *,
        start: str = "last 60 s",
        end: str = "now",
        interval_ms: int = 1000,
        fmt: ImageFormat = "JPEG",
        size: str = "320×240",
    ) -> None:
        super().__init__()
        if fmt not in FORMATS:
            raise ValueError(f"fmt must be one of {FORMATS}, not {fmt!r}")
        if size not in SIZES:
            raise ValueError(f"size must be one of {list(SIZES)}, not {size!r}")
        self._own_target = target is None
        self.target = target if target is not None else connect()
        self.images: pd.DataFrame | None = None
        self.task: asyncio.Future[Any] | None = None
        self._tasks = Tasks()

        self.stream_input = widgets.Dropdown(description="stream", options=[])
        self.refresh_button = widgets.Button(
            description="↻", tooltip="List the streams again", layout={"width": "3em"}
        )
        self.start_input = widgets.Text(value=start, description="start")
        self.end_input = widgets.Text(value=end, description="end")
        self.interval_input = widgets.IntSlider(
            value=interval_ms,
            min=MIN_INTERVAL_MS,
            max=MAX_INTERVAL_MS,
            step=100,
            description="interval ms",
        )
        self.format_input = widgets.ToggleButtons(options=list(FORMATS), value=fmt)
        self.size_input = widgets.Dropdown(options=list(SIZES), value=size, description="size")
        self.fetch_button = widgets.Button(description="Fetch", button_style="primary")
        self.progress = widgets.IntProgress(value=0, min=0, max=1, description="windows")
        self.status = widgets.HTML("")
        self.play = widgets.Play(value=0, min=0, max=0, interval=PLAY_INTERVAL_MS)
        self.slider = widgets.IntSlider(value=0, min=0, max=0, description="image")
        widgets.link((self.play, "value"), (self.slider, "value"))
        self.image = widgets.Image(format="jpeg")
        self.caption = widgets.HTML("")

        self.refresh_button.on_click(lambda _: self._act(self._list_streams()))
        self.fetch_button.on_click(lambda _: self._act(self.fetch()))
        self.slider.observe(self._on_slider, names="value")
        self.children = [
            widgets.HBox([self.stream_input, self.refresh_button]),
            widgets.HBox([self.start_input, self.end_input]),
            widgets.HBox([self.interval_input, self.size_input]),
            self.format_input,
            widgets.HBox([self.fetch_button, self.progress]),
            self.status,
            widgets.HBox([self.play, self.slider]),
            self.image,
            self.caption,
        ]
        self.refresh_streams()
        if stream is not None:
            self._select(stream)

    @classmethod
    def from_ingest(
        cls, target: Target, stream: str, result: IngestResult, **kwargs: Any
    ) -> ImageBrowser:
        """A browser over the time an ``ingest`` sent media (start and end preset)."""
        start = dt.datetime.fromtimestamp(result.started, dt.UTC).isoformat()
        end = dt.datetime.fromtimestamp(result.ended, dt.UTC).isoformat()
        return cls(target, stream, start=start, end=end, **kwargs)

    def __repr__(self) -> str:
        count = 0 if self.images is None else len(self.images)
        return f"<ImageBrowser {self.stream_input.value!r}: {count} images>"

    # ------------------------------------------------------------------ streams

    def stream_names(self) -> list[str]:
        """The target's streams, by name (every page of ListStreams)."""
        pages = self.target.kinesisvideo.get_paginator("list_streams").paginate()
        return sorted(s["StreamName"] for page in pages for s in page["StreamInfoList"])

    def refresh_streams(self) -> None:
        """List the streams again into the dropdown, keeping the selection if it is there."""
        self._set_streams(self.stream_names())

    def _set_streams(self, names: list[str]) -> None:
        current = self.stream_input.value
        self.stream_input.options = names
        if current in names:
            self.stream_input.value = current

    async def _list_streams(self) -> None:
        self._set_streams(await asyncio.to_thread(self.stream_names))

    def _select(self, stream: str) -> None:
        names = list(self.stream_input.options)
        if stream not in names:
            self.stream_input.options = sorted([*names, stream])
        self.stream_input.value = stream

    # ------------------------------------------------------------------ fetch

    def _act(self, coro: Any) -> asyncio.Future[Any]:
        self.task = self._tasks.spawn_guarded(coro, self._show_error)
        return self.task

    def _show_error(self, message: str) -> None:
        self.status.value = error_html(message)

    async def fetch(self) -> pd.DataFrame:
        """GetImages over the chosen range, window by window, then show the first image."""
        stream = self.stream_input.value
        if not stream:
            raise ValueError("choose a stream first")
        now = dt.datetime.now(dt.UTC)
        start = parse_time(self.start_input.value, now)
        end = parse_time(self.end_input.value, now)
        if end < start:
            raise ValueError(f"the end ({iso(end)}) is before the start ({iso(start)})")
        interval = int(self.interval_input.value)
        fmt = self.format_input.value
        width, height = SIZES[self.size_input.value]
        parts = image_windows(start, end, interval)
        self.fetch_button.disabled = True
        self.progress.max = len(parts)
        self.progress.value = 0
        self.status.value = f"GetImages {iso(start)} → {iso(end)} every {interval} ms …"
        frames = []
        try:
            for a, b in parts:
                frames.append(
                    await asyncio.to_thread(
                        get_images,
                        self.target,
                        stream,
                        a,
                        b,
                        interval_ms=interval,
                        fmt=fmt,
                        width=width,
                        height=height,
                        decode=False,
                        progress=False,
                    )
                )
                self.progress.value += 1
            raw = pd.concat(frames, ignore_index=True)
            images = await asyncio.to_thread(stamps_from_images, raw)
        finally:
            self.fetch_button.disabled = False
        self.images = images
        with_media = int(images["error"].isna().sum())
        stamped = int(images["stamp_index"].notna().sum())
        self.status.value = (
            f"{len(images)} sampled times: {with_media} images, {stamped} with a stamp read"
        )
        self.image.format = fmt.lower()
        last = max(0, len(images) - 1)
        self.slider.value = 0
        self.play.max = self.slider.max = last
        self.show(0)
        return images

    # ------------------------------------------------------------------ browse

    def _on_slider(self, change: dict[str, Any]) -> None:
        self.show(int(change["new"]))

    def show(self, i: int) -> None:
        """Show image ``i`` of ``images`` with its times and stamp."""
        if self.images is None or not len(self.images):
            self.image.value = b""
            self.caption.value = "no images"
            return
        row = self.images.iloc[i]
        self.index = i
        self.image.value = row["image"] if row["image"] is not None else b""
        parts = [f"<b>{i + 1}/{len(self.images)}</b> sampled at {iso(row['timestamp'])}"]
        if row["error"] is not None and not pd.isna(row["error"]):
            parts.append(f"error: {html.escape(str(row['error']))}")
        if not pd.isna(row["stamp_index"]):
            captured = pd.Timestamp(int(row["stamp_capture_ms"]), unit="ms", tz="UTC")
            parts.append(
                f"stamp: frame {int(row['stamp_index'])} captured {iso(captured)}, "
                f"stamp − sampled time {float(row['stamp_offset_ms']):+.0f} ms"
            )
        elif row["image"] is not None:
            parts.append("no stamp in this image")
        self.caption.value = " · ".join(parts)

    def close(self) -> None:
        """Cancel a running fetch, close the widget and a target it connected itself."""
        self._tasks.cancel()
        if self._own_target:
            self.target.close()
        super().close()
