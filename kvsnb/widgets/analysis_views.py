"""``LatencyView`` and ``TimelineView``: the plots and summary tables of
``kvsnb.analysis`` in a widget, redrawn while a session runs.

Plots are drawn by the analysis functions on a matplotlib figure made outside pyplot and
shown as PNG in an ``Image`` widget; summaries are HTML tables.

- ``LatencyView.update(frame_lat, fragment_lat)`` draws ``plot_latency_cdf``,
  ``plot_latency_waterfall`` and ``latency_summary``. ``attach(probe, frames_source)``
  redraws every second from a running ``RetrievalProbe`` and the frames a stamped source
  sent (ListFragments is called each time: the probe keeps raw entries only).
- ``TimelineView.update(tl)`` draws ``plot_timeline``, ``plot_intervals`` and
  ``timeline_summary`` of a ``frame_timeline``. ``attach(target, stream, frames_source)``
  redraws every few seconds, reading the stamps of each newly listed fragment once
  (GetMediaForFragmentList, ``stamps_from_frames``).
"""

from __future__ import annotations

import asyncio
import contextlib
import datetime as dt
import logging
from typing import Any, Protocol

import ipywidgets as widgets
import pandas as pd
from traitlets import Int

from kvsnb.analysis.frame_timeline import frame_timeline, timeline_summary
from kvsnb.analysis.latency import fragment_latency, frame_latency, latency_summary
from kvsnb.analysis.plots import (
    plot_intervals,
    plot_latency_cdf,
    plot_latency_waterfall,
    plot_timeline,
)
from kvsnb.analysis.probe import RetrievalProbe
from kvsnb.analysis.stamps import stamps_from_frames
from kvsnb.client.target import Target
from kvsnb.playback.fragments import decode_video, get_media, list_fragments
from kvsnb.widgets._common import Tasks, describe_error, error_html, figure_png, table_html
from kvsnb.wire.times import from_epoch_ms

logger = logging.getLogger(__name__)

LATENCY_REFRESH_S = 1.0
TIMELINE_REFRESH_S = 2.0
FRAGMENT_LOOKBACK = dt.timedelta(seconds=30)  # fragments listed from before the first frame


class FramesSource(Protocol):
    """Anything that tells which stamped frames were sent (``TestPatternTrack``)."""

    def frames_df(self) -> pd.DataFrame:
        """The frames sent so far: frame_index, capture_ms, ..."""
        ...


def plot_image() -> widgets.Image:
    """An image widget for a plot: hidden until it has one, never wider than its output
    (it may shrink below its natural width, in a ``plot_row`` too)."""
    return widgets.Image(
        format="png",
        layout=widgets.Layout(
            display="none", max_width="100%", min_width="0", height="auto", flex="1 1 360px"
        ),
    )


def plot_row(*images: widgets.Image) -> widgets.HBox:
    """Plots side by side while the output is wide enough, wrapped one under the other when
    it is not: never cut off at the output's right edge."""
    return widgets.HBox(list(images), layout=widgets.Layout(flex_flow="row wrap", width="100%"))


def show_png(image: widgets.Image, png: bytes) -> None:
    """Show a plot in a ``plot_image``."""
    image.value = png
    image.layout.display = None


class _LiveView(widgets.VBox):
    """Shared by both views: a status line, a redraw counter and the attached task."""

    redraws = Int(0, help="How many times the view was drawn (observe it to follow updates).")

    def __init__(self) -> None:
        super().__init__()
        self.status = widgets.HTML("")
        self.task: asyncio.Future[None] | None = None  # the periodic refresh, while attached
        self._tasks = Tasks()

    def _attach(self, refresh: Any, interval_s: float) -> asyncio.Future[None]:
        self.detach()

        async def loop() -> None:
            while True:
                try:
                    await refresh()
                except Exception as exc:  # keep refreshing: the next round may work
                    logger.info("view refresh failed: %s", exc)
                    self.status.value = error_html(describe_error(exc))
                await asyncio.sleep(interval_s)

        self.task = self._tasks.spawn(loop())
        return self.task

    def detach(self) -> None:
        """Stop refreshing (the last drawing stays)."""
        if self.task is not None:
            self.task.cancel()
            self.task = None

    async def wait_detached(self) -> None:
        """Detach and wait until the refresh task has ended."""
        task = self.task
        self.detach()
        if task is not None:
            with contextlib.suppress(asyncio.CancelledError):
                await task

    def close(self) -> None:
        """Stop refreshing and close the widget."""
        self.detach()
        self._tasks.cancel()
        super().close()


class LatencyView(_LiveView):
    """Ingest latency: CDF per way of retrieving, waterfall per fragment, summary table."""

    def __init__(self) -> None:
        super().__init__()
        self.frame_latency: pd.DataFrame | None = None
        self.fragment_latency: pd.DataFrame | None = None
        self.summary: pd.DataFrame | None = None
        self.cdf = plot_image()
        self.waterfall = plot_image()
        self.summary_html = widgets.HTML("")
        self.children = [
            self.status,
            self.summary_html,
            plot_row(self.cdf, self.waterfall),
        ]

    @classmethod
    def from_tables(cls, frame_lat: pd.DataFrame, fragment_lat: pd.DataFrame) -> LatencyView:
        """A view drawn from ``frame_latency`` and ``fragment_latency`` tables."""
        view = cls()
        view.update(frame_lat, fragment_lat)
        return view

    def __repr__(self) -> str:
        rows = 0 if self.frame_latency is None else len(self.frame_latency)
        return f"<LatencyView {rows} frames, {self.redraws} redraws>"

    def update(
        self, frame_lat: pd.DataFrame, fragment_lat: pd.DataFrame, *, session_ended: bool = True
    ) -> None:
        """Redraw from ``frame_latency`` and ``fragment_latency`` tables (``session_ended``:
        see ``latency_summary``)."""
        self.frame_latency = frame_lat
        self.fragment_latency = fragment_lat
        self.summary = latency_summary(frame_lat, fragment_lat, session_ended=session_ended)
        self.summary_html.value = table_html(self.summary)
        show_png(self.cdf, figure_png(plot_latency_cdf, frame_lat, size=(6, 3.5)))
        show_png(self.waterfall, figure_png(plot_latency_waterfall, fragment_lat, size=(6, 3.5)))
        self.status.value = (
            f"{len(frame_lat)} frames, {len(fragment_lat)} fragments "
            f"(updated {dt.datetime.now(dt.UTC):%H:%M:%S} UTC)"
        )
        self.redraws += 1

    async def refresh(self, probe: RetrievalProbe, frames_source: FramesSource) -> None:
        """Redraw once from a probe's record and the frames sent so far."""
        sent = frames_source.frames_df()
        if sent.empty:
            self.status.value = "no frames sent yet"
            return
        fragments = probe.record.fragments_frame()
        frame_lat = frame_latency(sent, fragments, probe.record)
        self.update(frame_lat, fragment_latency(fragments, probe.record, sent), session_ended=False)

    def attach(
        self,
        probe: RetrievalProbe,
        frames_source: FramesSource,
        *,
        interval_s: float = LATENCY_REFRESH_S,
    ) -> asyncio.Future[None]:
        """Redraw every ``interval_s`` from a running probe until ``detach()``."""
        return self._attach(lambda: self.refresh(probe, frames_source), interval_s)


class TimelineView(_LiveView):
    """Frame timeline: every frame sent, stored or missing, keyframes and fragment
    boundaries; the capture intervals; and the summary (drops, gaps, jitter)."""

    def __init__(self) -> None:
        super().__init__()
        self.timeline: pd.DataFrame | None = None
        self.summary: dict[str, Any] | None = None
        self.strip = plot_image()
        self.intervals = plot_image()
        self.summary_html = widgets.HTML("")
        self._stamps: dict[str, pd.DataFrame] = {}  # fragment number → stamps read
        self.children = [self.status, self.summary_html, self.strip, self.intervals]

    @classmethod
    def from_timeline(cls, tl: pd.DataFrame) -> TimelineView:
        """A view drawn from a ``frame_timeline`` table."""
        view = cls()
        view.update(tl)
        return view

    def __repr__(self) -> str:
        rows = 0 if self.timeline is None else len(self.timeline)
        return f"<TimelineView {rows} frames, {self.redraws} redraws>"

    def update(self, tl: pd.DataFrame) -> None:
        """Redraw from a ``frame_timeline`` table."""
        self.timeline = tl
        self.summary = timeline_summary(tl)
        shown = {k: v for k, v in self.summary.items() if k != "gap_ranges"}
        self.summary_html.value = table_html(pd.DataFrame([shown]))
        show_png(self.strip, figure_png(plot_timeline, tl, size=(10, 2.6)))
        show_png(self.intervals, figure_png(plot_intervals, tl, size=(8, 2.6)))
        self.status.value = (
            f"{len(tl)} frames sent (updated {dt.datetime.now(dt.UTC):%H:%M:%S} UTC)"
        )
        self.redraws += 1

    async def refresh(self, target: Target, stream: str, frames_source: FramesSource) -> None:
        """Redraw once: list the fragments since the first frame sent, read the stamps of
        those not read before, and join them with the frames sent."""
        sent = frames_source.frames_df()
        if sent.empty:
            self.status.value = "no frames sent yet"
            return
        first = from_epoch_ms(sent["capture_ms"].min())
        now = dt.datetime.now(dt.UTC)
        fragments = await asyncio.to_thread(
            list_fragments,
            target,
            stream,
            first - FRAGMENT_LOOKBACK,
            now + FRAGMENT_LOOKBACK,
            selector="PRODUCER_TIMESTAMP",
        )
        for number in fragments["fragment_number"]:
            if number not in self._stamps:
                media = await asyncio.to_thread(get_media, target, stream, [number])
                stamps, _ = await asyncio.to_thread(stamps_from_frames, decode_video(media))
                self._stamps[number] = stamps
        stored = pd.concat(
            [self._stamps[n] for n in fragments["fragment_number"]] or [pd.DataFrame()],
            ignore_index=True,
        )
        if stored.empty:
            stored = pd.DataFrame({"frame_index": pd.Series(dtype=int)})
        stored["frame_index"] = stored["frame_index"].astype(int)
        self.update(frame_timeline(sent, stored, fragments))

    def attach(
        self,
        target: Target,
        stream: str,
        frames_source: FramesSource,
        *,
        interval_s: float = TIMELINE_REFRESH_S,
    ) -> asyncio.Future[None]:
        """Redraw every ``interval_s`` while a stamped source sends, until ``detach()``."""
        return self._attach(lambda: self.refresh(target, stream, frames_source), interval_s)
