"""Fragment selection of HLS and DASH sessions (kvsnb.local.archive.selection): pure rules,
checked on fragments built in memory (docs/wire.md, "Archived media")."""

from __future__ import annotations

import datetime as dt

import pytest

from kvsnb.local.archive import selection
from kvsnb.local.archive.selection import (
    ALWAYS,
    LIVE,
    LIVE_REPLAY,
    NEVER,
    ON_DEMAND,
    ON_DISCONTINUITY,
    Entry,
)
from kvsnb.local.core.errors import InvalidArgumentException, ResourceNotFoundException
from kvsnb.local.store.fragments import SELECTOR_PRODUCER, SELECTOR_SERVER, Fragment

T0 = 1_767_225_600_000  # 2026-01-01T00:00:00Z in epoch ms


def fragment(number: int, producer_ms: int, duration_ms: int = 1000) -> Fragment:
    """A stored fragment starting ``producer_ms`` after T0 (server time 20 ms later)."""
    return Fragment(
        stream_arn="arn:aws:kinesisvideo:us-west-2:000000000000:stream/s/1",
        fragment_number=str(91343852333181432392682062600000000000000000 + number),
        producer_start_ms=T0 + producer_ms,
        server_start_ms=T0 + producer_ms + 20,
        duration_ms=duration_ms,
        size_bytes=10_000,
        path=f"{number}.mkv",
        codec_private=True,
        has_audio=False,
        width=640,
        height=480,
        frame_count=30,
        audio_frame_count=0,
        keyframe_offsets_ms=(0,),
        video_codec="avc1.42e01f",
        audio_codec=None,
        stored_at_ms=T0 + producer_ms + duration_ms + 50,
    )


def extend(
    fragments: list[Fragment], *, mode: str, disc: str = NEVER, max_results: int = 5
) -> list[Entry]:
    """A new session's entries (selector PRODUCER_TIMESTAMP, created at 100 s)."""
    return selection.extend(
        [],
        fragments,
        mode=mode,
        selector=SELECTOR_PRODUCER,
        discontinuity_mode=disc,
        max_results=max_results,
        created=100.0,
    )


def test_entries_are_indexed_in_order_and_on_demand_stops_at_max_results() -> None:
    frags = [fragment(i, i * 1000) for i in range(8)]
    entries = extend(frags, mode=ON_DEMAND, max_results=5)
    assert [e.index for e in entries] == [0, 1, 2, 3, 4]
    assert [e.fragment for e in entries] == frags[:5]
    more = selection.extend(
        entries,
        frags[5:],
        mode=LIVE,
        selector=SELECTOR_PRODUCER,
        discontinuity_mode=NEVER,
        max_results=5,
        created=100.0,
    )
    assert [e.index for e in more] == [5, 6, 7]


def test_discontinuity_modes() -> None:
    frags = [fragment(0, 0), fragment(1, 1000), fragment(2, 2030), fragment(3, 3200)]
    assert [e.discontinuity for e in extend(frags, mode=ON_DEMAND, disc=ALWAYS)] == [True] * 4
    assert [e.discontinuity for e in extend(frags, mode=ON_DEMAND, disc=NEVER)] == [False] * 4
    # a gap of 30 ms is within 50 ms; one of 170 ms is not
    marks = [e.discontinuity for e in extend(frags, mode=ON_DEMAND, disc=ON_DISCONTINUITY)]
    assert marks == [False, False, False, True]


def test_live_replay_releases_at_the_pace_recorded() -> None:
    frags = [fragment(i, i * 2000, duration_ms=2000) for i in range(5)]
    entries = extend(frags, mode=LIVE_REPLAY, max_results=2)
    assert [e.release_at for e in entries] == [100.0, 100.0, 102.0, 104.0, 106.0]
    shown, ended = selection.visible(entries, LIVE_REPLAY, 2, T0 + 10_000, now=103.0)
    assert [e.index for e in shown] == [1, 2] and not ended
    shown, ended = selection.visible(entries, LIVE_REPLAY, 2, T0 + 10_000, now=T0 / 1000 + 11)
    assert [e.index for e in shown] == [3, 4] and ended
    shown, ended = selection.visible(entries, LIVE, 2, None, now=0.0)
    assert [e.index for e in shown] == [3, 4] and not ended


def test_producer_timestamps_keep_the_newest_for_sessions_and_the_oldest_for_clips() -> None:
    old, new, other = fragment(1, 0), fragment(2, 0), fragment(3, 1000)
    assert selection.dedupe_producer([new, other, old], keep_newest=True) == [new, other]
    assert selection.dedupe_producer([new, other, old], keep_newest=False) == [old, other]
    assert selection.range_fragments([old, new, other], SELECTOR_PRODUCER, "s") == [new, other]
    with pytest.raises(ResourceNotFoundException, match="for the requested time range"):
        selection.range_fragments([], SELECTOR_SERVER, "s")
    with pytest.raises(ResourceNotFoundException, match="in the last 30 seconds"):
        selection.live_fragments([], "s")


def test_refresh_takes_only_newer_fragments() -> None:
    a, b, c = fragment(1, 0), fragment(2, 1000), fragment(3, 2000)
    assert selection.newer_live([c, a, b], a) == [b, c]
    assert selection.newer_in_range([a, b, c], b, SELECTOR_SERVER) == [c]
    assert selection.newer_in_range([a, b, c], b, SELECTOR_PRODUCER) == [c]


def test_range_rules_per_playback_mode() -> None:
    start = dt.datetime(2026, 1, 1, tzinfo=dt.UTC)
    rng = {"StartTimestamp": start, "EndTimestamp": start + dt.timedelta(minutes=1)}
    assert selection.check_range(ON_DEMAND, rng) == (T0, T0 + 60_000)
    assert selection.check_range(LIVE, None) == (None, None)
    with pytest.raises(InvalidArgumentException, match="must not be set when PlaybackMode is LIVE"):
        selection.check_range(LIVE, rng)
    with pytest.raises(InvalidArgumentException, match="EndTimestamp must be specified"):
        selection.check_range(ON_DEMAND, {"StartTimestamp": start})
    assert selection.check_range(LIVE_REPLAY, {"StartTimestamp": start}) == (T0, None)
    with pytest.raises(InvalidArgumentException, match="within 24 hours"):
        selection.check_range(
            ON_DEMAND, {"StartTimestamp": start, "EndTimestamp": start + dt.timedelta(days=2)}
        )
    assert selection.iso_ms(T0 + 7) == "2026-01-01T00:00:00.007Z"
