"""Getting stored media back: fragments, frames and (with the archived-media plane) HLS,
images and clips, as numpy frames and pandas tables."""

from .fragments import DecodedFrame, decode_video, get_media, list_fragments

__all__ = ["DecodedFrame", "decode_video", "get_media", "list_fragments"]
