"""``TrackTester``: will this source ingest? A preflight checklist, then a real test.

**Check** applies the ingestion rules of ``kvsnb.sources.check_tracks`` to the source (the
stamped test pattern with its tone, or a media file) and lists them: ✓ passed, ✗ failed
(required), ⚠ failed (advisory), each with the value found, what is expected and why.

**End-to-end test** sends the source for N seconds into a channel's storage session
(``ingest``; the channel and its stream are made if needed by
``Target.create_storage_channel``) while a ``RetrievalProbe`` watches the stream, then
samples GetImages once a second over what was sent and reads the stamps back: frames
arrived when sampled images carry stamps of frames that were sent. For the stamped test
pattern it shows the latency summary and plots (``frame_latency``, ``fragment_latency``,
``latency_summary`` in a ``LatencyView``); a file carries no record of what was sent, so
only the GetImages check applies to it.
"""

from __future__ import annotations

import asyncio
import html
import logging
from pathlib import Path
from typing import Any

import ipywidgets as widgets
import pandas as pd
from traitlets import Bool

from kvsnb.analysis.latency import fragment_latency, frame_latency
from kvsnb.analysis.probe import RetrievalProbe
from kvsnb.analysis.stamps import stamps_from_images
from kvsnb.client.connectivity import check_connectivity
from kvsnb.client.ingest import TEST_PATTERN, IngestResult, ingest, make_source
from kvsnb.client.session import JoinPolicy
from kvsnb.client.target import Target
from kvsnb.client.timeline import TimelineEvent
from kvsnb.launch import connect
from kvsnb.playback.fragments import list_fragments
from kvsnb.playback.images import get_images
from kvsnb.sources.check import TrackReport, check_tracks
from kvsnb.sources.tracks import ToneTrack
from kvsnb.widgets._common import (
    ERROR_COLOUR,
    OK_COLOUR,
    Tasks,
    describe_error,
    error_html,
    table_html,
)
from kvsnb.widgets.analysis_views import LatencyView

logger = logging.getLogger(__name__)

DEFAULT_CHANNEL = "kvsnb-track-test"
DEFAULT_SECONDS = 5
MAX_SECONDS = 60
LINGER_S = 2.5  # the probe keeps watching this long after the ingest, for the last fragment
SAMPLE_INTERVAL_MS = 1000
MARKS = {"passed": "✓", "failed": "✗", "warning": "⚠"}
ROW_COLOURS = {"passed": "#dafbe1", "failed": "#ffebe9", "warning": "#fff8c5"}


def checklist_html(report: TrackReport) -> str:
    """A report as a checklist: one row per rule with its mark, value, expectation, reason."""
    rows = []
    for r in report.rules:
        kind = "passed" if r.passed else ("failed" if r.required else "warning")
        cells = "".join(
            f"<td>{html.escape(v)}</td>" for v in (r.rule, r.value, r.expected, r.reason)
        )
        rows.append(
            f'<tr class="rule-{kind}" style="background:{ROW_COLOURS[kind]}">'
            f"<td>{MARKS[kind]}</td>{cells}</tr>"
        )
    status, colour = ("OK", OK_COLOUR) if report.ok else ("FAILED", ERROR_COLOUR)
    return (
        f"<div><b>{html.escape(report.source)}</b>: "
        f'<span style="color:{colour}"><b>{status}</b></span></div>'
        "<table><thead><tr><th></th><th>rule</th><th>value</th><th>expected</th>"
        f"<th>reason</th></tr></thead><tbody>{''.join(rows)}</tbody></table>"
    )


class TrackTester(widgets.VBox):
    """A preflight checklist for a source, then an end-to-end ingest test (see the module
    docstring). ``target`` is connected (``connect()``) only when a test first needs it.
    Observe ``ok`` (the checklist) and ``arrived`` (the end-to-end test)."""

    ok = Bool(
        None, allow_none=True, help="Whether every required rule passed; None before a check."
    ).tag(sync=False)
    arrived = Bool(
        None,
        allow_none=True,
        help="Whether GetImages returned stamped frames that were sent; None before a test.",
    ).tag(sync=False)

    def __init__(
        self,
        source: str | Path = TEST_PATTERN,
        *,
        target: Target | None = None,
        channel: str = DEFAULT_CHANNEL,
        seconds: int = DEFAULT_SECONDS,
        policy: JoinPolicy | None = None,
        linger_s: float = LINGER_S,
    ) -> None:
        super().__init__()
        self._target = target
        self._own_target = False
        self.policy = policy
        self.linger_s = linger_s
        self.report: TrackReport | None = None
        self.result: IngestResult | None = None
        self.images: pd.DataFrame | None = None
        self.task: asyncio.Future[Any] | None = None  # the last action (check or test)
        self._tasks = Tasks()

        self.source_input = widgets.Text(
            value=str(source), description="source", placeholder="testpattern or a file path"
        )
        self.check_button = widgets.Button(description="Check", button_style="info")
        self.status = widgets.HTML("")
        self.checklist = widgets.HTML("")
        self.channel_input = widgets.Text(value=channel, description="channel")
        self.seconds_input = widgets.IntSlider(
            value=seconds, min=1, max=MAX_SECONDS, description="seconds"
        )
        self.run_button = widgets.Button(description="End-to-end test", button_style="success")
        self.progress = widgets.Label("")
        self.verdict = widgets.HTML("")
        self.latency = LatencyView()
        self.error_html = widgets.HTML("")

        self.check_button.on_click(lambda _: self._act(self.check()))
        self.run_button.on_click(lambda _: self._act(self.run_end_to_end()))
        self.children = [
            widgets.HBox([self.source_input, self.check_button]),
            self.status,
            self.checklist,
            widgets.HBox([self.channel_input, self.seconds_input, self.run_button]),
            self.progress,
            self.error_html,
            self.verdict,
            self.latency,
        ]

    @classmethod
    def from_file(cls, path: str | Path, **kwargs: Any) -> TrackTester:
        """A tester for a media file (keyword arguments as for the constructor)."""
        return cls(Path(path), **kwargs)

    def __repr__(self) -> str:
        return f"<TrackTester {self.source_input.value!r}: ok={self.ok}, arrived={self.arrived}>"

    @property
    def target(self) -> Target:
        """The target of the end-to-end test (``connect()`` on first use if none was given)."""
        if self._target is None:
            self._target = connect()
            self._own_target = True
        return self._target

    def _act(self, coro: Any) -> asyncio.Future[Any]:
        self._busy(True)
        self.error_html.value = ""
        self.task = self._tasks.spawn_guarded(coro, self._show_error)
        self.task.add_done_callback(lambda _: self._busy(False))
        return self.task

    def _show_error(self, message: str) -> None:
        self.error_html.value = error_html(message)

    def _busy(self, busy: bool) -> None:
        self.check_button.disabled = busy
        self.run_button.disabled = busy

    # ------------------------------------------------------------------ checklist

    def _spec(self) -> str:
        return self.source_input.value.strip() or TEST_PATTERN

    @staticmethod
    def _check(spec: str) -> TrackReport:
        if spec != TEST_PATTERN:
            return check_tracks(spec)
        src = make_source(TEST_PATTERN)
        try:
            assert src.pattern is not None and isinstance(src.audio, ToneTrack)
            return check_tracks((src.pattern, src.audio))
        finally:
            src.stop()

    async def check(self) -> TrackReport:
        """Apply the ingestion rules to the source and show the checklist. With a target
        given, the checklist also holds the connectivity preflight: the channel's TURN
        servers (GetIceServerConfig) give this machine a relay candidate, without which
        WebRTC ingestion cannot connect (the channel and its stream are made if needed)."""
        spec = self._spec()
        self.status.value = f"checking {html.escape(spec)} …"
        self.checklist.value = ""
        self.ok = None
        try:
            report = await asyncio.to_thread(self._check, spec)
            if self._target is not None:
                channel = self.channel_input.value.strip()
                await asyncio.to_thread(self._target.create_storage_channel, channel)
                report.rules.extend(await check_connectivity(self._target, channel))
        except Exception as exc:
            self.status.value = error_html(describe_error(exc))
            raise
        self.report = report
        self.checklist.value = checklist_html(report)
        failed, warned = len(report.failures), len(report.warnings)
        self.status.value = f"{len(report.rules)} rules: {failed} failed, {warned} warnings" + (
            "" if report.ok else " — this source will not ingest as it is"
        )
        self.ok = report.ok
        return report

    # ------------------------------------------------------------------ end to end

    def _step(self, event: TimelineEvent) -> None:
        if event.step != "pc_state":
            self.progress.value = f"session: {event.step}"

    async def run_end_to_end(self) -> pd.DataFrame:
        """Ingest the source for the chosen seconds, verify through GetImages that frames
        arrived, and show the latency summary; returns the sampled images with stamps."""
        self.arrived = None
        self.verdict.value = ""
        target = self.target
        channel = self.channel_input.value.strip()
        seconds = int(self.seconds_input.value)
        self.progress.value = f"making channel {channel} and its stream …"
        _, stream_arn = await asyncio.to_thread(target.create_storage_channel, channel)
        src = await asyncio.to_thread(make_source, self._spec())
        probe = RetrievalProbe(target, stream_arn)
        if src.pattern is not None:
            src.pattern.on_frame = probe.frame_sent
        await probe.start()
        try:
            self.progress.value = f"ingesting {seconds} s into {channel} …"
            result = await ingest(
                target,
                channel,
                seconds=seconds,
                source=src,
                policy=self.policy,
                on_event=self._step,
            )
        except BaseException:
            await probe.stop()
            raise
        self.result = result
        self.progress.value = f"sent {result.seconds:.1f} s; waiting for the last fragment …"
        record = await probe.stop(self.linger_s)
        fragments = await asyncio.to_thread(list_fragments, target, stream_arn)

        sent = result.frames_sent
        start, end = result.sample_range()
        self.progress.value = "GetImages, one image a second …"
        raw = await asyncio.to_thread(
            get_images,
            target,
            stream_arn,
            start,
            end,
            interval_ms=SAMPLE_INTERVAL_MS,
            progress=False,
        )
        images = await asyncio.to_thread(stamps_from_images, raw)
        self.images = images
        with_media = int(images["error"].isna().sum())
        stamped = images["stamp_index"].dropna().astype(int)
        if sent.empty:
            arrived = len(stamped) > 0 or with_media > 0
            detail = f"{len(stamped)} carry a stamp (a file has no record of what was sent)"
        else:
            known = stamped.isin(set(sent["frame_index"].astype(int)))
            arrived = bool(len(stamped)) and bool(known.all())
            detail = f"{int(known.sum())} carry stamps of frames sent"
        mark, colour = ("✓", OK_COLOUR) if arrived else ("✗", ERROR_COLOUR)
        self.verdict.value = (
            f'<div style="color:{colour}"><b>{mark} frames '
            f"{'arrived' if arrived else 'did not arrive'}</b>: {len(fragments)} fragments "
            f"stored; GetImages sampled {len(images)} times, {with_media} with media, "
            f"{detail}.</div>"
            + table_html(
                images.drop(columns=["image"]).assign(timestamp=images["timestamp"].astype(str))
            )
        )
        self.arrived = arrived
        if not sent.empty:
            self.latency.update(
                frame_latency(sent, fragments, record), fragment_latency(fragments, record, sent)
            )
        self.progress.value = f"done: {result.seconds:.1f} s sent into {channel}"
        return images

    def close(self) -> None:
        """Cancel running work, close the widget and a target it connected itself."""
        self._tasks.cancel()
        self.latency.close()
        if self._own_target and self._target is not None:
            self._target.close()
        super().close()
