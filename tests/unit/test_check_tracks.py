"""check_tracks on real files and tracks: good media passes, each kind of bad media fails."""

from __future__ import annotations

from pathlib import Path

import pandas as pd
import pytest

from kvsnb.sources import (
    FileSource,
    TestPatternTrack,
    ToneTrack,
    TrackReport,
    check_tracks,
    make_test_file,
)
from kvsnb.sources.check import (
    AIORTC_OPUS_BITRATE_BPS,
    MAX_KEYFRAME_INTERVAL_S,
)
from kvsnb.wire.h264 import profile_name as h264_profile_name
from kvsnb.wire.h264 import sps_header as h264_sps_header


@pytest.fixture(scope="module")
def files(tmp_path_factory: pytest.TempPathFactory) -> dict[str, Path]:
    d = tmp_path_factory.mktemp("check")
    return {
        "good": make_test_file(d / "good.mkv", seconds=2.0, bitrate=500_000),
        "high": make_test_file(d / "high.mp4", seconds=1.5, profile="high"),
        "vp8": make_test_file(d / "vp8.webm", seconds=1.5, codec="vp8"),
        "noaudio": make_test_file(d / "noaudio.mkv", seconds=1.5, audio=False),
        "fat": make_test_file(d / "fat.mkv", seconds=1.5, bitrate=3_000_000),
    }


def failed(report: TrackReport) -> list[str]:
    return [r.rule for r in report.failures]


def test_good_baseline_h264_opus_passes(files: dict[str, Path]) -> None:
    report = check_tracks(files["good"])
    assert report.ok, report
    assert all(r.passed for r in report.rules), report
    assert report.rule("h264_profile").value.startswith("Constrained Baseline")
    assert report.rule("audio_codec").value == "Opus"
    assert report.rule("keyframe_interval").value == "1.00 s"
    assert report.info["keyframes_s"] == pytest.approx([0.0, 1.0])
    assert 400_000 < report.info["video_bitrate_bps"] < 600_000
    assert "mode 1" in report.rule("packetization").reason


def test_high_profile_fails_the_profile_rule(files: dict[str, Path]) -> None:
    report = check_tracks(files["high"])
    assert not report.ok
    assert failed(report) == ["h264_profile"]
    rule = report.rule("h264_profile")
    assert rule.value.startswith("High")
    assert "High profile is not Constrained Baseline" in rule.reason
    assert "42e01f" in rule.reason
    # AAC is transcoded to Opus by the sender, so it passes with a note saying so
    audio = report.rule("audio_codec")
    assert audio.passed and audio.value == "aac" and "aiortc sends Opus" in audio.reason


def test_vp8_fails_the_codec_rule(files: dict[str, Path]) -> None:
    report = check_tracks(files["vp8"])
    assert failed(report) == ["video_codec"]
    assert "H.264 video only, not vp8" in report.rule("video_codec").reason
    with pytest.raises(KeyError, match="h264_profile"):
        report.rule("h264_profile")


def test_missing_audio_fails_unless_not_required(files: dict[str, Path]) -> None:
    report = check_tracks(files["noaudio"])
    assert failed(report) == ["audio_present"]
    assert "API reference requires both" in report.rule("audio_present").reason
    relaxed = check_tracks(files["noaudio"], require_audio=False)
    assert relaxed.ok
    assert relaxed.rule("audio_present").passed
    assert "require_audio=False" in relaxed.rule("audio_present").expected
    # the bitrate counts no Opus when there is no audio
    assert relaxed.info["video_bitrate_bps"] < 1_000_000


def test_too_high_bitrate_fails_the_bitrate_rule(files: dict[str, Path]) -> None:
    report = check_tracks(files["fat"])
    assert failed(report) == ["bitrate"]
    rule = report.rule("bitrate")
    assert "ingest quota" in rule.reason
    assert report.info["video_bitrate_bps"] > 2_000_000
    assert check_tracks(files["fat"], max_bitrate_bps=5_000_000).ok


def test_bitrate_adds_opus_to_the_video(files: dict[str, Path]) -> None:
    video = check_tracks(files["good"]).info["video_bitrate_bps"]
    limit = int(video + AIORTC_OPUS_BITRATE_BPS / 2)  # enough for the video, not for both
    report = check_tracks(files["good"], max_bitrate_bps=limit)
    assert failed(report) == ["bitrate"]
    assert check_tracks(files["noaudio"], max_bitrate_bps=limit, require_audio=False).ok


def test_keyframes_too_far_apart_fail(tmp_path: Path) -> None:
    path = make_test_file(tmp_path / "sparse.mkv", 22.0, 64, 48, 5, gop=500, audio=False)
    report = check_tracks(path, require_audio=False)
    assert failed(report) == ["keyframe_interval"]
    rule = report.rule("keyframe_interval")
    assert rule.value.endswith("(one keyframe)")
    assert report.info["keyframe_interval_s"] > MAX_KEYFRAME_INTERVAL_S


def test_file_source_is_checked_and_chooses_passthrough(files: dict[str, Path]) -> None:
    good, high = FileSource(files["good"]), FileSource(files["high"])
    assert good.passthrough and not high.passthrough
    assert check_tracks(good).ok
    assert failed(check_tracks(high)) == ["h264_profile"]
    good.stop()
    high.stop()


def test_test_pattern_track_is_encoded_like_aiortc() -> None:
    track = TestPatternTrack(320, 240)
    report = check_tracks(track)
    assert failed(report) == ["audio_present"]
    assert report.rule("h264_profile").value.startswith("Constrained Baseline")
    assert report.rule("h264_level").value == "3.1"  # aiortc's level option
    assert "x264 default" in report.rule("keyframe_interval").reason
    assert track.sent == []  # checking does not consume the track

    pair = check_tracks((track, ToneTrack()))
    assert pair.rule("audio_codec").passed
    total = pair.info["video_bitrate_bps"] + AIORTC_OPUS_BITRATE_BPS
    assert pair.rule("bitrate").passed == (total <= 1_000_000)
    assert check_tracks((track, ToneTrack()), max_bitrate_bps=int(total) + 1).ok


def test_bad_sources_raise(tmp_path: Path) -> None:
    with pytest.raises(FileNotFoundError):
        check_tracks(tmp_path / "nothing.mkv")
    with pytest.raises(TypeError, match="FileSource"):
        check_tracks(42)


def test_report_renders(files: dict[str, Path]) -> None:
    report = check_tracks(files["high"])
    frame = report.to_frame()
    assert isinstance(frame, pd.DataFrame)
    assert list(frame.columns) == ["rule", "passed", "required", "value", "expected", "reason"]
    assert frame.set_index("rule").loc["h264_profile", "passed"] == False  # noqa: E712
    text = repr(report)
    assert text.startswith("TrackReport(") and "FAILED" in text and "FAIL h264_profile" in text
    page = report._repr_html_()
    assert "<table>" in page and "h264_profile" in page and "&#10008;" in page


def test_sps_parsing() -> None:
    assert h264_sps_header(bytes([1, 0x64, 0x00, 0x28, 0xFF])) == (100, 0, 40)
    annexb = b"\x00\x00\x00\x01\x09\xf0\x00\x00\x01\x67\x42\xe0\x1f\xaa"
    assert h264_sps_header(annexb) == (66, 0xE0, 31)
    assert h264_sps_header(b"\x00\x00\x01\x65\x88\x84\x00") is None
    assert h264_profile_name(66, 0xE0) == "Constrained Baseline"
    assert h264_profile_name(66, 0x00) == "Baseline"
    assert h264_profile_name(77, 0x00) == "Main"
