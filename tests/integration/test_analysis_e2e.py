"""The analysis on real stored media: an injected drop is found by the frame timeline, and the
probe times fragments as they are listed (Local KVS on 127.0.0.1, real aiortc ingest)."""

from __future__ import annotations

import asyncio

from kvsnb.analysis import (
    RetrievalProbe,
    fragment_latency,
    frame_latency,
    frame_timeline,
    latency_summary,
    stamps_from_frames,
    timeline_summary,
)
from kvsnb.ingest import Source, ingest
from kvsnb.media import DroppingTrack, TestPatternTrack, ToneTrack
from kvsnb.playback import decode_video, get_media, list_fragments
from kvsnb.target import Target
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
    assert (beyond > -50).all(), beyond.tolist()
    assert (beyond.iloc[:-1] < 1000).all(), beyond.tolist()
    lat = frame_latency(result.frames_sent, fragments, record)
    assert lat["fragment_number"].notna().mean() > 0.95
    table = latency_summary(lat, frag_lat).set_index("measure")
    assert table["count"].loc["capture → listed (ListFragments)"] > 50
    await asyncio.sleep(0)
