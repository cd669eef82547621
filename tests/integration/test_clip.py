"""GetClip from a real Local KVS: stamped media ingested through a storage session comes back
as an MP4 that ffprobe decodes frame for frame, and bad ranges get the AWS errors."""

from __future__ import annotations

import datetime as dt
import functools
import subprocess
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest

from kvsnb.analysis import compare_delivery, stamps_from_frames
from kvsnb.local.archive import clip
from kvsnb.playback import decode_video
from tests.integration.test_hls import Recorded, expect_aws_error, ffprobe_frames, record

NAME = "clip"


@pytest.fixture(scope="module")
def recorded(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Recorded]:
    rec = record(tmp_path_factory.mktemp("clip") / "data", NAME)
    try:
        yield rec
    finally:
        rec.kvs.stop_in_thread()


def when(ms: float) -> dt.datetime:
    return dt.datetime.fromtimestamp(ms / 1000, dt.UTC)


def get_clip(
    rec: Recorded, start_ms: float, end_ms: float, kind: str = "PRODUCER_TIMESTAMP"
) -> Any:
    return rec.am.get_clip(
        StreamName=NAME,
        ClipFragmentSelector={
            "FragmentSelectorType": kind,
            "TimestampRange": {"StartTimestamp": when(start_ms), "EndTimestamp": when(end_ms)},
        },
    )


def probe(body: bytes, tmp_path: Path) -> dict[str, int]:
    path = tmp_path / "clip.mp4"
    path.write_bytes(body)
    return ffprobe_frames(str(path))


def test_clip_of_everything_decodes_every_frame(recorded: Recorded, tmp_path: Path) -> None:
    first, last = recorded.fragments[0], recorded.fragments[-1]
    response = get_clip(recorded, first.producer_start_ms - 1000, last.producer_start_ms)
    assert response["ContentType"] == "video/mp4"
    body = response["Payload"].read()
    assert body[4:8] == b"ftyp" and b"moov" in body and b"moof" not in body
    frames = probe(body, tmp_path)
    assert frames["video"] == recorded.frames_sent
    assert frames["audio"] == sum(f.audio_frame_count for f in recorded.fragments)
    # and nothing is lost or doubled: ffmpeg decodes all frames without errors
    decoded = subprocess.run(
        # repeat+: every message in full, never collapsed into "Last message repeated"
        ["ffmpeg", "-v", "repeat+error", "-i", str(tmp_path / "clip.mp4"), "-f", "null", "-"],
        capture_output=True, text=True, check=True,
    )  # fmt: skip
    # ffmpeg's null muxer may note that two frames' ms timestamps round onto one tick of its
    # frame-rate time base: a remark about its own output (the counts above are exact)
    errors = [ln for ln in decoded.stderr.splitlines() if "non monotonically increasing" not in ln]
    assert errors == []


def test_clip_of_the_first_ingest_carries_its_stamps(recorded: Recorded) -> None:
    session = recorded.first_session
    body = get_clip(recorded, session[0].producer_start_ms, session[-1].producer_start_ms)[
        "Payload"
    ].read()
    stamps, unreadable = stamps_from_frames(decode_video(body))
    delivery = compare_delivery(recorded.results[0].frames_sent, stamps, unreadable)
    assert delivery.complete, str(delivery)


def test_clip_range_is_inclusive_on_fragment_starts(recorded: Recorded, tmp_path: Path) -> None:
    second, third = recorded.fragments[1], recorded.fragments[2]
    body = get_clip(recorded, second.producer_start_ms, third.producer_start_ms)["Payload"].read()
    assert probe(body, tmp_path)["video"] == second.frame_count + third.frame_count
    by_server = get_clip(
        recorded, second.server_start_ms, second.server_start_ms + 1, "SERVER_TIMESTAMP"
    )["Payload"].read()
    assert probe(by_server, tmp_path)["video"] == second.frame_count


def test_clip_keeps_the_first_fragments_within_the_limit(
    recorded: Recorded, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setattr(clip, "CLIP_MAX_FRAGMENTS", 2)
    first, last = recorded.fragments[0], recorded.fragments[-1]
    body = get_clip(recorded, first.producer_start_ms, last.producer_start_ms)["Payload"].read()
    assert probe(body, tmp_path)["video"] == sum(f.frame_count for f in recorded.fragments[:2])


def test_clip_errors(recorded: Recorded) -> None:
    start = recorded.fragments[0].producer_start_ms
    hour = 3600 * 1000
    cases = [
        (start, start, "InvalidArgumentException", 400),
        (start, start - 1000, "InvalidArgumentException", 400),
        (start, start + 25 * hour, "InvalidArgumentException", 400),
        (start - 3 * hour, start - 2 * hour, "ResourceNotFoundException", 404),
    ]
    for begin, end, code, status in cases:
        expect_aws_error(functools.partial(get_clip, recorded, begin, end), code, status)
    expect_aws_error(
        lambda: recorded.am.get_clip(
            StreamName="no-such-stream",
            ClipFragmentSelector={
                "FragmentSelectorType": "SERVER_TIMESTAMP",
                "TimestampRange": {"StartTimestamp": when(start), "EndTimestamp": when(start + 1)},
            },
        ),
        "ResourceNotFoundException", 404,
    )  # fmt: skip
