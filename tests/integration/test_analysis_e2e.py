"""The analysis on real stored media: an injected drop is found by the frame timeline, and the
probe times fragments as they are listed (Local KVS on 127.0.0.1, real aiortc ingest)."""

from __future__ import annotations

from kvsnb.analysis import (
    RetrievalProbe,
    fragment_latency,
    frame_latency,
    frame_timeline,
    latency_summary,
    stamps_from_frames,
    timeline_summary,
)
from kvsnb.client.ingest import Source, ingest
from kvsnb.client.target import Target
from kvsnb.playback import decode_video, get_media, list_fragments
from kvsnb.sources import DroppingTrack, TestPatternTrack, ToneTrack
from tests.conftest import FAST


async def test_timeline_finds_an_injected_drop(target: Target) -> None:
    _, stream_arn = target.create_storage_channel("drops")
    pattern = TestPatternTrack(320, 240, 30)
    dropping = DroppingTrack(pattern, {45, 46, 47, 70})
    source = Source(dropping, ToneTrack(), pattern, "pattern with drops")
    probe = RetrievalProbe(target, stream_arn, hls=False, images=False)
    await probe.start()
    result = await ingest(target, "drops", seconds=3.0, source=source, policy=FAST)
    record = await probe.stop(1.5)

    fragments = list_fragments(target, stream_arn)
    media = get_media(target, stream_arn, list(fragments["fragment_number"]))
    stored, unreadable = stamps_from_frames(decode_video(media))
    assert unreadable == 0
    tl = frame_timeline(result.frames_sent, stored, fragments)
    summary = timeline_summary(tl)
    assert dropping.dropped == [45, 46, 47, 70]
    assert summary["gap_ranges"] == [(45, 47), (70, 70)]
    assert summary["dropped"] == 4
    assert summary["duplicates"] == 0
    assert summary["fragments"] == len(fragments)
    assert summary["keyframes"] >= len(fragments)  # every fragment starts with one

    # every fragment was seen being listed after its end; those the recorder cut (all but
    # the last, which closes when the master leaves) within a second of it
    frag_lat = fragment_latency(fragments, record, result.frames_sent)
    assert frag_lat["listed_at"].notna().all()
    beyond = frag_lat["listed_beyond_end_ms"]
    # the last fragment ends with the session (its end is where the master's last audio and
    # video stopped), not at a cut: left out, as latency_summary does
    assert (beyond.iloc[:-1] >= 0).all(), beyond.tolist()
    assert (beyond.iloc[:-1] < 1000).all(), beyond.tolist()
    lat = frame_latency(result.frames_sent, fragments, record)
    assert lat["fragment_number"].notna().mean() > 0.95
    table = latency_summary(lat, frag_lat).set_index("measure")
    assert table["count"].loc["capture → listed (ListFragments)"] > 50


ONE_CLOCK_FRAGMENT = (
    "arrival_ms",
    "producer_offset_ms",
    "listed_beyond_end_ms",
    "hls_beyond_end_ms",
)
ONE_CLOCK_FRAME = ("listed_ms", "hls_ms", "images_ms", "images_beyond_end_ms")


async def test_every_latency_on_one_clock_is_never_negative(target: Target) -> None:
    """Capture, producer timestamps, server timestamps and the probe all read this machine's
    clock: no frame reaches the server, a listing, HLS or GetImages before it was captured
    (issue 15, point 5), and every frame is placed in the fragment that stores it."""
    _, stream_arn = target.create_storage_channel("oneclock")
    pattern = TestPatternTrack(640, 480, 30)
    source = Source(pattern, ToneTrack(), pattern, "pattern")
    probe = RetrievalProbe(target, stream_arn, image_every=15)
    pattern.on_frame = probe.frame_sent
    await probe.start()
    result = await ingest(target, "oneclock", seconds=4.5, source=source, policy=FAST)
    record = await probe.stop(2.0)

    fragments = list_fragments(target, stream_arn)
    assert len(fragments) >= 3
    frag_lat = fragment_latency(fragments, record, result.frames_sent)
    lat = frame_latency(result.frames_sent, fragments, record)
    # each frame is placed in the fragment that stores it
    stored_in: dict[int, str] = {}
    for number in fragments["fragment_number"]:
        stamps, _ = stamps_from_frames(decode_video(get_media(target, stream_arn, [number])))
        stored_in.update({int(i): str(number) for i in stamps["frame_index"]})
    placed = lat.dropna(subset=["fragment_number"])
    wrong = {
        int(i): (f, stored_in.get(int(i)))
        for i, f in zip(placed["frame_index"], placed["fragment_number"], strict=True)
        if stored_in.get(int(i)) != f
    }
    assert not wrong, wrong
    # "beyond the end" measures leave out the last fragment: it ends with the session, where
    # the master's last audio and video stopped, not at a cut (as latency_summary does)
    last = frag_lat.sort_values("producer_ms")["fragment_number"].iloc[-1]
    cut = frag_lat[frag_lat["fragment_number"] != last]
    for column in ONE_CLOCK_FRAGMENT:
        rows = cut if "beyond_end" in column else frag_lat
        values = rows[column].dropna()
        assert len(values) and (values >= 0).all(), (column, values.tolist())
    for column in ONE_CLOCK_FRAME:
        rows = lat[lat["fragment_number"] != last] if "beyond_end" in column else lat
        values = rows[column].dropna()
        assert len(values) and (values >= 0).all(), (column, values.min())
    table = latency_summary(lat, frag_lat)
    assert (table[["p50_ms", "p95_ms", "max_ms"]].dropna() >= 0).all().all(), table
