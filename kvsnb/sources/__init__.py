"""Media for KVS ingestion: stamped test pattern, tone, file and camera sources, media encoded
elsewhere (a browser's WebCodecs) sent undecoded, the stamp codec that reads capture times back
from retrieved frames, and track checks."""

from kvsnb.sources.check import RuleResult, TrackReport, check_tracks
from kvsnb.sources.encoded import (
    ChunkError,
    EncodedAudioTrack,
    EncodedChunk,
    EncodedVideoTrack,
    JpegVideoTrack,
    PcmAudioTrack,
    h264_access_units,
    pack_chunk,
    parse_chunk,
)
from kvsnb.sources.faults import DroppingTrack
from kvsnb.sources.files import FileSource
from kvsnb.sources.stamp import (
    Stamp,
    StampError,
    draw_stamp,
    draw_stamp_yuv420p,
    read_stamp,
    read_stamp_frame,
    try_read_stamp,
)
from kvsnb.sources.tracks import (
    AudioRecord,
    CameraNotFoundError,
    CameraSource,
    FrameRecord,
    RealtimeH264Encoder,
    TestPatternTrack,
    ToneGenerator,
    ToneTrack,
    find_tone_marks,
    make_test_file,
)
from kvsnb.sources.y4m import write_y4m

__all__ = [
    "AudioRecord",
    "CameraNotFoundError",
    "CameraSource",
    "ChunkError",
    "DroppingTrack",
    "EncodedAudioTrack",
    "EncodedChunk",
    "EncodedVideoTrack",
    "FileSource",
    "FrameRecord",
    "JpegVideoTrack",
    "PcmAudioTrack",
    "RealtimeH264Encoder",
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
    "h264_access_units",
    "make_test_file",
    "pack_chunk",
    "parse_chunk",
    "read_stamp",
    "read_stamp_frame",
    "try_read_stamp",
    "write_y4m",
]
