"""The widgets without a browser: ipywidgets' dummy comm records the messages each widget
would send to the front end; the widgets drive a real embedded Local KVS (``connect()``),
real storage sessions (aiortc) and real HLS / GetImages reads."""

from __future__ import annotations

import asyncio
import datetime as dt
from collections.abc import Iterator
from dataclasses import dataclass

import pandas as pd
import pytest

from kvsnb.analysis import (
    RetrievalProbe,
    fragment_latency,
    frame_latency,
    frame_timeline,
    latency_summary,
    stamps_from_frames,
)
from kvsnb.analysis.probe import ProbeRecord
from kvsnb.client.ingest import IngestResult, ingest, make_source
from kvsnb.client.session import JoinPolicy
from kvsnb.client.target import Target
from kvsnb.launch import connect
from kvsnb.local import SignalingLimits
from kvsnb.local.storage.peer import StorageOptions
from kvsnb.playback import decode_video, get_media, list_fragments
from kvsnb.sources import TestPatternTrack
from kvsnb.widgets import (
    HlsViewer,
    ImageBrowser,
    LatencyView,
    SessionPanel,
    TimelineView,
    TrackTester,
)
from tests.conftest import wait_until
from tests.widget_support import recording_comm, settled, states

FAST = JoinPolicy.local(offer_wait_s=0.5)
JPEG = b"\xff\xd8"
PNG = b"\x89PNG"


@pytest.fixture(scope="module", autouse=True)
def _recording_comm() -> Iterator[None]:
    """Swap in ipywidgets' recording dummy comm for this module."""
    yield from recording_comm()


@pytest.fixture(scope="module")
def target() -> Iterator[Target]:
    """An embedded Local KVS (1 s fragments, so a few seconds of media make fragments)."""
    tg = connect(
        extra={"storage": StorageOptions(fragment_duration_s=1.0)},
        signaling=SignalingLimits(connects_per_s=100.0),
    )
    yield tg
    tg.close()


@dataclass
class Recorded:
    """Three seconds of stamped test pattern ingested while a probe watched."""

    stream_arn: str
    result: IngestResult
    record: ProbeRecord
    probe: RetrievalProbe
    pattern: TestPatternTrack
    fragments: pd.DataFrame


@pytest.fixture(scope="module")
def recorded(target: Target) -> Recorded:
    _, stream_arn = target.create_storage_channel("widgets-recorded")

    async def run() -> Recorded:
        src = make_source(width=320, height=240)
        assert src.pattern is not None
        probe = RetrievalProbe(target, stream_arn)
        src.pattern.on_frame = probe.frame_sent
        await probe.start()
        result = await ingest(target, "widgets-recorded", seconds=3, source=src, policy=FAST)
        record = await probe.stop(1.5)
        fragments = list_fragments(target, stream_arn)
        return Recorded(stream_arn, result, record, probe, src.pattern, fragments)

    return asyncio.run(run())


async def test_session_panel_creates_joins_streams_and_stops(target: Target) -> None:
    target.create_storage_channel("widgets-listed")
    panel = SessionPanel(target, policy=FAST, refresh_s=0.1)
    assert "widgets-listed" in panel.channel_input.options

    panel.new_channel.value = "widgets-panel"
    panel.create_button.click()
    await settled(panel.task)
    assert "widgets-panel" in panel.channel_input.options
    assert panel.channel_input.value == "widgets-panel"
    kv = target.kinesisvideo
    arn = target.channel_arn("widgets-panel")
    storage = kv.describe_media_storage_configuration(ChannelARN=arn)
    assert storage["MediaStorageConfiguration"]["Status"] == "ENABLED"

    panel.join_button.click()
    assert panel.join_button.disabled and not panel.stop_button.disabled
    await settled(panel.task)
    assert panel.error == ""
    assert panel.state == "connected"
    assert panel.state_label.value == "state: connected"
    # the timeline table filled in step by step: one update per step
    tables = [s["value"] for s in states(panel.timeline_html) if "value" in s]
    assert len(tables) >= 10
    assert "describe_channel" in tables[0] and "dtls_connected" not in tables[0]
    for step in ("join_call", "offer_received", "answer_sent", "dtls_connected"):
        assert step in panel.timeline_html.value, step

    def sent_frames() -> int:
        text = panel.stats_label.value
        return int(text.split("frames sent: ")[1].split(" ")[0]) if "frames sent: " in text else 0

    def previews_shown() -> int:
        return len([s for s in states(panel.preview) if s.get("value")])

    await wait_until(lambda: sent_frames() >= 15 and previews_shown() >= 3, "frames and previews")
    kbps = int(panel.stats_label.value.split("bitrate: ")[1].split(" kbps")[0])
    assert 50 < kbps < 3000  # from the session's RTP statistics
    sent = int(panel.stats_label.value.split("frames sent: ")[1].split(" ")[0])
    assert sent >= 15
    assert bytes(panel.preview.value).startswith(JPEG)
    previews = [s["value"] for s in states(panel.preview) if s.get("value")]
    assert len(previews) >= 3  # refreshed several times a second
    assert len(set(previews)) == len(previews)  # each one a newer frame
    assert panel.refreshing

    viewer = SessionPanel(
        target, channel="widgets-panel", role="VIEWER", policy=FAST, refresh_s=0.1
    )
    assert viewer.source_input.disabled and not viewer.client_id_input.disabled
    viewer.join_button.click()
    await settled(viewer.task)
    assert viewer.state == "connected", viewer.error

    def received_frames() -> int:
        text = viewer.stats_label.value
        return int(text.split("frames received: ")[1].split(" ")[0]) if "received: " in text else 0

    await wait_until(lambda: received_frames() >= 10, "the viewer receives frames")
    assert bytes(viewer.preview.value).startswith(JPEG)
    viewer.stop_button.click()
    await settled(viewer.task)
    assert viewer.state == "closed"

    panel.stop_button.click()
    await settled(panel.task)
    assert panel.state == "closed"
    assert "stopped" in panel.timeline_html.value
    assert not panel.join_button.disabled and panel.stop_button.disabled
    assert not panel.refreshing
    assert repr(panel) == "<SessionPanel master on 'widgets-panel': closed>"
    panel.close()
    viewer.close()


async def test_session_panel_shows_a_failed_join_and_stays_usable(target: Target) -> None:
    target.kinesisvideo.create_signaling_channel(ChannelName="widgets-no-storage")
    panel = SessionPanel(target, channel="widgets-no-storage", policy=FAST)
    panel.join_button.click()
    await settled(panel.task)
    assert "media storage DISABLED" in panel.error
    assert "media storage DISABLED" in panel.error_html.value
    assert panel.state == "closed"
    assert not panel.join_button.disabled and panel.stop_button.disabled

    target.create_storage_channel("widgets-bad-source")
    panel.channel_input.options = [*panel.channel_input.options, "widgets-bad-source"]
    panel.channel_input.value = "widgets-bad-source"
    panel.source_input.value = "/no/such/file.mp4"
    panel.join_button.click()
    await settled(panel.task)
    assert panel.error == "no media file at /no/such/file.mp4"
    assert not panel.join_button.disabled

    panel.new_channel.value = "bad name!"
    panel.create_button.click()
    await settled(panel.task)
    assert "InvalidArgumentException" in panel.error or "ValidationException" in panel.error
    assert "bad name!" not in panel.channel_input.options
    panel.close()


# ---------------------------------------------------------------------- TrackTester


async def test_track_tester_checks_the_relay_path(target: Target) -> None:
    tester = TrackTester(target=target, channel="widgets-preflight", policy=FAST)
    tester.check_button.click()
    await settled(tester.task)
    assert tester.report is not None and tester.ok is True, tester.checklist.value
    for rule in ("turn_servers", "turn_relay"):
        assert tester.report.rule(rule).passed
        assert f"<td>{rule}</td>" in tester.checklist.value
    tester.close()


async def test_track_tester_end_to_end(target: Target) -> None:
    tester = TrackTester(target=target, channel="widgets-e2e", seconds=2, policy=FAST)
    tester.run_button.click()
    await settled(tester.task)
    assert tester.error_html.value == ""
    assert tester.arrived is True
    assert "✓ frames arrived" in tester.verdict.value
    assert tester.images is not None and tester.result is not None
    sent = set(tester.result.frames_sent["frame_index"])
    assert set(tester.images["stamp_index"].dropna().astype(int)) <= sent
    assert tester.latency.summary is not None
    assert bytes(tester.latency.cdf.value).startswith(PNG)
    listed = tester.latency.summary.set_index("measure").loc["capture → listed (ListFragments)"]
    assert listed["count"] >= 0.9 * len(sent)


# ---------------------------------------------------------------------- ImageBrowser


async def test_image_browser_fetches_real_images(target: Target, recorded: Recorded) -> None:
    browser = ImageBrowser.from_ingest(
        target, "widgets-recorded", recorded.result, interval_ms=500, size="160×120"
    )
    browser.fetch_button.click()
    await settled(browser.task)
    images = browser.images
    assert images is not None, browser.status.value
    expected = int((recorded.result.ended - recorded.result.started) * 1000 // 500) + 1
    assert len(images) == expected
    assert browser.slider.max == browser.play.max == len(images) - 1
    assert browser.progress.value == browser.progress.max == 1
    stamped = images.dropna(subset=["stamp_index"])
    assert len(stamped) >= len(images) - 2
    sent = set(recorded.result.frames_sent["frame_index"])
    assert set(stamped["stamp_index"].astype(int)) <= sent
    assert stamped["stamp_offset_ms"].abs().max() < 1000

    browser.play.value = 2  # Play drives the slider, the slider the image
    assert browser.slider.value == 2 and browser.index == 2
    assert bytes(browser.image.value) == images.iloc[2]["image"]
    assert "stamp: frame" in browser.caption.value
    assert "3/" in browser.caption.value

    browser.start_input.value = "yesterday"
    browser.fetch_button.click()
    await settled(browser.task)
    assert "cannot read the time" in browser.status.value
    assert browser.images is images  # the last good fetch stays
    browser.close()


# ---------------------------------------------------------------------- HlsViewer


async def test_hls_viewer_steps_through_on_demand_frames(
    target: Target, recorded: Recorded
) -> None:
    frags = recorded.fragments
    start = frags["server_time"].min().to_pydatetime() - dt.timedelta(seconds=1)
    end = frags["server_time"].max().to_pydatetime() + dt.timedelta(seconds=2)
    viewer = HlsViewer.from_stream(target, recorded.stream_arn, start=start, end=end)
    assert viewer.url_input.value.startswith("http")
    viewer.read_button.click()
    await settled(viewer.task)
    assert "frames in" in viewer.status.value, viewer.status.value
    frames = list(viewer.frames)
    # every frame sent is in the ON_DEMAND range (but those the recorder dropped before the
    # first keyframe, at most 2)
    assert len(frames) >= len(recorded.result.frames_sent) - 2 > 0
    boundaries = viewer.boundaries()
    assert len(boundaries) == len(frags)
    assert all(frames[i].keyframe for i in boundaries)
    assert len(viewer.segment_table()) == len(frags)

    assert viewer.index == 0 and "(fragment start)" in viewer.caption.value
    viewer.next_button.click()
    assert viewer.index == 1 and "(fragment start)" not in viewer.caption.value
    assert bytes(viewer.image.value).startswith(JPEG)
    viewer.next_segment.click()
    assert viewer.index == boundaries[1]
    assert f"segment {frames[boundaries[1]].sequence} <b>(fragment start)" in viewer.caption.value
    assert "stamp: frame" in viewer.caption.value
    viewer.prev_segment.click()
    assert viewer.index == 0
    viewer.play.value = 5
    assert viewer.index == 5
    viewer.close()


async def test_hls_viewer_reports_a_bad_request(target: Target) -> None:
    viewer = HlsViewer(target=target, stream="no-such-stream", start="last 60 s")
    viewer.url_button.click()
    await settled(viewer.task)
    assert "ResourceNotFoundException" in viewer.status.value
    viewer.url_input.value = ""
    viewer.read_button.click()
    await settled(viewer.task)
    assert "paste a session URL" in viewer.status.value
    assert not viewer.read_button.disabled


# ---------------------------------------------------------------------- analysis views


async def test_latency_and_timeline_views(target: Target, recorded: Recorded) -> None:
    sent = recorded.result.frames_sent
    frame_lat = frame_latency(sent, recorded.fragments, recorded.record)
    frag_lat = fragment_latency(recorded.fragments, recorded.record, sent)
    view = LatencyView.from_tables(frame_lat, frag_lat)
    assert bytes(view.cdf.value).startswith(PNG) and bytes(view.waterfall.value).startswith(PNG)
    assert "capture → listed (ListFragments)" in view.summary_html.value
    assert view.redraws == 1
    assert repr(view) == f"<LatencyView {len(frame_lat)} frames, 1 redraws>"

    # attached to a probe and the pattern's log, it redraws by itself
    live = LatencyView()
    live.attach(recorded.probe, recorded.pattern, interval_s=0.05)
    await wait_until(lambda: live.redraws >= 2, "the live latency view redraws")
    await live.wait_detached()
    assert live.redraws >= 2
    assert live.summary is not None
    # a live view treats the last fragment as one still being recorded
    pd.testing.assert_frame_equal(
        live.summary, latency_summary(frame_lat, frag_lat, session_ended=False)
    )

    media = get_media(target, recorded.stream_arn, list(recorded.fragments["fragment_number"]))
    stored, _ = stamps_from_frames(decode_video(media))
    tl = frame_timeline(sent, stored, recorded.fragments)
    tview = TimelineView.from_timeline(tl)
    assert bytes(tview.strip.value).startswith(PNG) and bytes(tview.intervals.value).startswith(PNG)
    assert tview.summary is not None and tview.summary["frames_sent"] == len(sent)
    assert "frames_stored" in tview.summary_html.value

    tlive = TimelineView()
    tlive.attach(target, recorded.stream_arn, recorded.pattern, interval_s=0.05)
    await wait_until(lambda: tlive.redraws >= 1, "the live timeline view redraws")
    await tlive.wait_detached()
    assert tlive.timeline is not None
    assert tlive.summary is not None
    assert tlive.summary["frames_stored"] == tview.summary["frames_stored"]
    view.close()
