"""Getting stored media back: fragments, HLS, DASH, GetImages and GetClip, as numpy frames and
pandas tables."""

from .clip import get_clip
from .dash import DashReader, DashSegment, ManifestError, dash_session_url
from .fragments import DecodedFrame, decode_video, get_media, list_fragments
from .hls import HlsFrame, HlsReader, PlaylistError, hls_session_url
from .images import decode_image, get_images, image_windows
from .times import parse_time

__all__ = [
    "DashReader",
    "DashSegment",
    "DecodedFrame",
    "HlsFrame",
    "HlsReader",
    "ManifestError",
    "PlaylistError",
    "dash_session_url",
    "decode_image",
    "decode_video",
    "get_clip",
    "get_images",
    "get_media",
    "hls_session_url",
    "image_windows",
    "list_fragments",
    "parse_time",
]
