"""Media for KVS ingestion: stamped test pattern, tone, file and camera sources, the stamp
codec that reads capture times back from retrieved frames, and track checks."""

from kvsnb.media.check import RuleResult, TrackReport, check_tracks
from kvsnb.media.faults import DroppingTrack
from kvsnb.media.files import FileSource
from kvsnb.media.sources import (
    AudioRecord,
    CameraNotFoundError,
    CameraSource,
    FrameRecord,
    TestPatternTrack,
    ToneGenerator,
    ToneTrack,
    find_tone_marks,
    make_test_file,
)
from kvsnb.media.stamp import (
    Stamp,
    StampError,
    draw_stamp,
    draw_stamp_yuv420p,
    read_stamp,
    read_stamp_frame,
    try_read_stamp,
)

__all__ = [
    "AudioRecord",
    "CameraNotFoundError",
    "CameraSource",
    "DroppingTrack",
    "FileSource",
    "FrameRecord",
    "RuleResult",
    "Stamp",
    "StampError",
    "TestPatternTrack",
    "ToneGenerator",
    "ToneTrack",
    "TrackReport",
    "check_tracks",
    "draw_stamp",
    "draw_stamp_yuv420p",
    "find_tone_marks",
    "make_test_file",
    "read_stamp",
    "read_stamp_frame",
    "try_read_stamp",
]
