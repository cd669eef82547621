"""Getting stored media back: fragments, HLS, DASH, GetImages and GetClip, as numpy frames and
pandas tables."""

from kvsnb.playback.clip import get_clip
from kvsnb.playback.dash import DashReader, DashSegment, ManifestError, dash_session_url
from kvsnb.playback.fragments import DecodedFrame, decode_video, get_media, list_fragments
from kvsnb.playback.hls import HlsFrame, HlsReader, PlaylistError, hls_session_url, stored_range
from kvsnb.playback.images import decode_image, get_images, image_windows
from kvsnb.playback.media_stream import (
    MediaChunk,
    MediaResult,
    iter_chunks,
    iter_media,
    open_media,
    read_media,
    start_selector,
)
from kvsnb.wire.times import parse_time

__all__ = [
    "DashReader",
    "DashSegment",
    "DecodedFrame",
    "HlsFrame",
    "HlsReader",
    "ManifestError",
    "MediaChunk",
    "MediaResult",
    "PlaylistError",
    "dash_session_url",
    "decode_image",
    "decode_video",
    "get_clip",
    "get_images",
    "get_media",
    "hls_session_url",
    "image_windows",
    "iter_chunks",
    "iter_media",
    "list_fragments",
    "open_media",
    "parse_time",
    "read_media",
    "start_selector",
    "stored_range",
]
