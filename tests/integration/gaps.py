"""A stream with a gap, for the tests of players across it (``test_dash.py``,
``tests/browser/test_gaps.py``): a Local KVS (1 s fragments) holding two recordings of the
stamped pattern with a pause of ``PAUSE_S`` between them, longer than a fragment, so a player
that keeps the gap in its timeline stalls or shows it, and one that closes it does not."""

from __future__ import annotations

import asyncio
import itertools
import time
from pathlib import Path

import av

from kvsnb.client.ingest import ingest
from kvsnb.launch import connect
from kvsnb.local.store.fragments import SELECTOR_PRODUCER, Fragment
from tests.conftest import FAST, make_client, start_kvs, stored_frame_count, wait_until_sync
from tests.integration.test_hls import Recorded

PAUSE_S = 3.0  # between the two recordings; the gap adds the second master's join
FIRST_S = 2.5
SECOND_S = 2.5
GAP_MS = 50  # a gap or overlap over this is a discontinuity [model: DiscontinuityMode]


def record_gap(data: Path, name: str, pause_s: float = PAUSE_S) -> Recorded:
    """Start Local KVS in ``data`` and record ``FIRST_S`` s, a pause of ``pause_s`` s, then
    ``SECOND_S`` s into stream ``name``; wait until every frame sent is stored."""
    kvs = start_kvs(data)
    with connect(endpoint_url=kvs.url) as tg:
        _, arn = tg.create_storage_channel(name)
        first = asyncio.run(ingest(tg, name, seconds=FIRST_S, policy=FAST))
        time.sleep(pause_s)  # the pause between the two recordings, part of the recording
        second = asyncio.run(ingest(tg, name, seconds=SECOND_S, policy=FAST))
    sent = len(first.frames_sent) + len(second.frames_sent)
    wait_until_sync(  # the fragment a leaving master held is stored a moment later
        lambda: stored_frame_count(kvs, arn) >= sent,
        "every frame sent is stored",
        deadline_s=30,
    )
    fragments = kvs.store.list_fragments(arn, SELECTOR_PRODUCER)
    first_session = [f for f in fragments if f.producer_start_ms < first.ended * 1000]
    kv = make_client("kinesisvideo", kvs.url)
    endpoint = kv.get_data_endpoint(StreamARN=arn, APIName="GET_DASH_STREAMING_SESSION_URL")
    am = make_client("kinesis-video-archived-media", endpoint["DataEndpoint"])
    return Recorded(kvs, arn, [first, second], fragments, first_session, am)


def producer_gap(before: Fragment, after: Fragment) -> int:
    """The gap (negative: overlap) in ms between two fragments on the producer clock."""
    return after.producer_start_ms - (before.producer_start_ms + before.duration_ms)


def gaps_ms(fragments: list[Fragment]) -> list[int]:
    """The producer-clock gaps (negative: overlaps) over ``GAP_MS`` between consecutive
    fragments."""
    steps = (producer_gap(a, b) for a, b in itertools.pairwise(fragments))
    return [gap for gap in steps if abs(gap) > GAP_MS]


def media_ms(fragments: list[Fragment]) -> int:
    """The media's duration: the fragments' durations added up (the gaps left out)."""
    return sum(f.duration_ms for f in fragments)


def stored_video_times(rec: Recorded) -> list[float]:
    """The producer times (s) of the stored video frames, each recording after the first
    moved back by the pauses before it: the media's timeline with the gaps closed."""
    times: list[float] = []
    closed_ms = 0
    for i, f in enumerate(rec.fragments):
        if i and abs(gap := producer_gap(rec.fragments[i - 1], f)) > GAP_MS:
            closed_ms += gap
        with av.open(str(rec.kvs.store.resolve(f))) as container:
            for packet in container.demux(video=0):
                if packet.pts is not None and packet.size:
                    times.append(float(packet.pts * packet.time_base) - closed_ms / 1000)
    return sorted(times)
