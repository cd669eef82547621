"""Which stored fragments a streaming session covers (HLS, DASH) and which a clip covers
(GetClip): pure functions of fragments already listed from the store, no I/O.

The rule: docs/wire.md, "Archived media" (GetHLSStreamingSessionURL and
GetDASHStreamingSessionURL describe the same selection rules). Per PlaybackMode:

* ``LIVE``: the fragments ingested in the last 30 s, in ingestion order, starting at the live
  edge; later refreshes add newer fragments (never one older than the newest listed).
* ``LIVE_REPLAY``: from StartTimestamp on, in the selector's order, released into the
  manifest at the pace they were recorded once the first ``max_results`` are listed.
* ``ON_DEMAND``: the range, at most ``max_results`` fragments.

With ``PRODUCER_TIMESTAMP`` one fragment is kept per producer start time (``dedupe_producer``).
A session's fragments are ``Entry`` objects, indexed from 0 in session order (the
FragmentNumber of segment URLs), each marked when a discontinuity precedes it and carrying the
shift that puts it on a timeline without gaps (``timeline_shift``, what DASH presents).
"""

from __future__ import annotations

import datetime as dt
from dataclasses import dataclass
from typing import Any

from kvsnb.local.core.errors import (
    InvalidArgumentException,
    MissingCodecPrivateDataException,
    ResourceNotFoundException,
    UnsupportedStreamMediaTypeException,
)
from kvsnb.local.store.fragments import SELECTOR_PRODUCER, Fragment
from kvsnb.wire.times import epoch_ms

LIVE, LIVE_REPLAY, ON_DEMAND = "LIVE", "LIVE_REPLAY", "ON_DEMAND"
ALWAYS, NEVER, ON_DISCONTINUITY = "ALWAYS", "NEVER", "ON_DISCONTINUITY"
LIVE_WINDOW_MS = 30_000  # LIVE needs a fragment within the last 30 s
LIVE_LOOKBACK_MS = 30_000  # server-time slack when querying newly ingested fragments
MAX_RANGE_MS = 24 * 3600 * 1000  # end within 24 h of start
DISCONTINUITY_GAP_MS = 50
LIVE_HISTORY = 1000  # fragments a live session keeps addressable


@dataclass
class Entry:
    """One fragment of a session: its index (the FragmentNumber of segment URLs), whether a
    discontinuity precedes it, (LIVE_REPLAY) when it joins the manifest, and ``shift_ms``:
    how much earlier than its producer time it plays on the gap-free timeline
    (``timeline_shift``)."""

    index: int
    fragment: Fragment
    discontinuity: bool
    release_at: float = 0.0
    shift_ms: int = 0


def selector_start(fragment: Fragment, selector: str) -> int:
    """A fragment's start in the selector's clock (epoch ms)."""
    if selector == SELECTOR_PRODUCER:
        return fragment.producer_start_ms
    return fragment.server_start_ms


def iso_ms(ms: int) -> str:
    """``2023-05-17T13:48:35.994Z`` (epoch ms as ISO 8601 with milliseconds, UTC)."""
    stamp = dt.datetime.fromtimestamp(ms // 1000, tz=dt.UTC).strftime("%Y-%m-%dT%H:%M:%S")
    return f"{stamp}.{ms % 1000:03d}Z"


def dedupe_producer(fragments: list[Fragment], keep_newest: bool) -> list[Fragment]:
    """One fragment per producer start time: the largest number (HLS, DASH) or the smallest
    (GetClip: "only the oldest ingested collection of fragments are returned")."""
    chosen: dict[int, Fragment] = {}
    for f in fragments:
        old = chosen.get(f.producer_start_ms)
        newer = old is None or int(f.fragment_number) > int(old.fragment_number)
        if old is None or newer == keep_newest:
            chosen[f.producer_start_ms] = f
    return sorted(chosen.values(), key=lambda f: (f.producer_start_ms, int(f.fragment_number)))


def require_codec_private(fragment: Fragment) -> None:
    """The errors AWS gives for media it cannot stream (no codec private data, not H.264)."""
    if not fragment.codec_private:
        raise MissingCodecPrivateDataException(
            "No codec private data was found in the video track of the stream."
        )
    if not fragment.video_codec.startswith("avc1"):
        raise UnsupportedStreamMediaTypeException(
            f"The media type {fragment.video_codec} of track 1 is not supported."
        )


def check_range(mode: str, timestamps: dict[str, Any] | None) -> tuple[int | None, int | None]:
    """The (start, end) ms of a session's range, checked per PlaybackMode."""
    start = end = None
    if timestamps is not None:
        if timestamps.get("StartTimestamp") is not None:
            start = epoch_ms(timestamps["StartTimestamp"])
        if timestamps.get("EndTimestamp") is not None:
            end = epoch_ms(timestamps["EndTimestamp"])
    if mode == LIVE:
        if timestamps is not None:
            raise InvalidArgumentException(
                "TimestampRange must not be set when PlaybackMode is LIVE."
            )
        return None, None
    if start is None:
        raise InvalidArgumentException(
            f"StartTimestamp must be specified when PlaybackMode is {mode}."
        )
    if mode == ON_DEMAND and end is None:
        raise InvalidArgumentException(
            "EndTimestamp must be specified when PlaybackMode is ON_DEMAND."
        )
    if end is not None:
        if end <= start:
            raise InvalidArgumentException("EndTimestamp must be later than StartTimestamp.")
        if end - start > MAX_RANGE_MS:
            raise InvalidArgumentException(
                "EndTimestamp must be within 24 hours of StartTimestamp."
            )
    return start, end


def live_fragments(recent: list[Fragment], stream_name: str) -> list[Fragment]:
    """A LIVE session's first fragments: those ingested in the last 30 s (``recent``, listed
    by server time), in ingestion order; ResourceNotFoundException when there are none."""
    found = sorted(recent, key=lambda f: int(f.fragment_number))
    if not found:
        raise ResourceNotFoundException(
            f"No fragments were found in the stream {stream_name} in the last 30 "
            "seconds for a LIVE session."
        )
    return found


def range_fragments(found: list[Fragment], selector: str, stream_name: str) -> list[Fragment]:
    """A LIVE_REPLAY or ON_DEMAND session's first fragments: those listed in its range (one
    per producer start time with PRODUCER_TIMESTAMP); ResourceNotFoundException when none."""
    if selector == SELECTOR_PRODUCER:
        found = dedupe_producer(found, keep_newest=True)
    if not found:
        raise ResourceNotFoundException(
            f"No fragments were found in the stream {stream_name} for the requested time range."
        )
    return found


def newer_live(found: list[Fragment], newest: Fragment) -> list[Fragment]:
    """LIVE refresh: the listed fragments ingested after ``newest``, in ingestion order (never
    one older than the newest listed, as the model says)."""
    return sorted(
        (f for f in found if int(f.fragment_number) > int(newest.fragment_number)),
        key=lambda f: int(f.fragment_number),
    )


def newer_in_range(found: list[Fragment], newest: Fragment, selector: str) -> list[Fragment]:
    """LIVE_REPLAY refresh: the listed fragments after ``newest`` in the selector's order."""
    newest_key = (selector_start(newest, selector), int(newest.fragment_number))
    if selector == SELECTOR_PRODUCER:
        found = dedupe_producer(found, keep_newest=True)
        return [f for f in found if f.producer_start_ms > newest_key[0]]
    return [f for f in found if (selector_start(f, selector), int(f.fragment_number)) > newest_key]


def discontinuous(
    discontinuity_mode: str, selector: str, prev: Fragment | None, cur: Fragment
) -> bool:
    """ALWAYS: every fragment, the first too (AWS writes a marker before the first segment);
    NEVER: none; ON_DISCONTINUITY: a gap or overlap over 50 ms."""
    if discontinuity_mode == ALWAYS:
        return True
    if discontinuity_mode == NEVER or prev is None:
        return False
    gap = selector_start(cur, selector) - (selector_start(prev, selector) + prev.duration_ms)
    return abs(gap) > DISCONTINUITY_GAP_MS


def producer_gap(before: Fragment, after: Fragment) -> int:
    """The gap (negative: overlap) in ms on the producer clock between two fragments."""
    return after.producer_start_ms - (before.producer_start_ms + before.duration_ms)


def is_gap(before: Fragment, after: Fragment) -> bool:
    """A gap or overlap of more than ``DISCONTINUITY_GAP_MS`` (producer clock) between two
    fragments: a break in the media, whatever the session's DiscontinuityMode."""
    return abs(producer_gap(before, after)) > DISCONTINUITY_GAP_MS


def timeline_shift(prev: Entry | None, fragment: Fragment) -> int:
    """The ``shift_ms`` of ``fragment`` following ``prev`` on a timeline without gaps: the
    previous shift, plus the gap (or minus the overlap) on the producer clock between the
    previous fragment's end and this one's start when it is over ``DISCONTINUITY_GAP_MS``,
    so the fragment starts where the previous one ends. Within one recording the fragments
    follow one another and the shift stays. DASH presents this timeline, as AWS does: "Kinesis
    Video Streams adjusts the media timeline in the manifest file to enable playback of media
    with discontinuities" [model: GetDASHStreamingSessionURL, DisplayFragmentTimestamp]."""
    if prev is None or not is_gap(prev.fragment, fragment):
        return 0 if prev is None else prev.shift_ms
    return prev.shift_ms + producer_gap(prev.fragment, fragment)


def extend(
    entries: list[Entry],
    fragments: list[Fragment],
    *,
    mode: str,
    selector: str,
    discontinuity_mode: str,
    max_results: int,
    created: float,
) -> list[Entry]:
    """The entries that follow ``entries`` for ``fragments`` (in session order): indexes
    continue, discontinuities are marked, and LIVE_REPLAY entries beyond the first
    ``max_results`` are released one fragment duration after the previous one, and each
    entry's ``timeline_shift`` is set. ON_DEMAND stops at ``max_results`` entries in all."""
    limit = max_results if mode == ON_DEMAND else None
    added: list[Entry] = []
    prev = entries[-1] if entries else None
    for fragment in fragments:
        if limit is not None and len(entries) + len(added) >= limit:
            break
        index = prev.index + 1 if prev is not None else 0
        disc = discontinuous(
            discontinuity_mode, selector, prev.fragment if prev else None, fragment
        )
        release = created
        if mode == LIVE_REPLAY and prev is not None and index >= max_results:
            release = max(prev.release_at, created) + prev.fragment.duration_ms / 1000
        prev = Entry(index, fragment, disc, release, timeline_shift(prev, fragment))
        added.append(prev)
    return added


def visible(
    entries: list[Entry], mode: str, max_results: int, end_ms: int | None, now: float
) -> tuple[list[Entry], bool]:
    """The entries a manifest shows at ``now`` (epoch s), and whether the session is
    complete: ON_DEMAND every entry; LIVE the newest ``max_results``; LIVE_REPLAY the newest
    ``max_results`` released, complete once its range has ended and every entry is out."""
    if mode == ON_DEMAND:
        return list(entries), True
    if mode == LIVE:
        return entries[-max_results:], False
    released = [e for e in entries if e.release_at <= now]
    ended = end_ms is not None and end_ms < now * 1000 and len(released) == len(entries)
    return released[-max_results:], ended
