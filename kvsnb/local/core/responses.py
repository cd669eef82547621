"""Responses whose payload is not JSON: the planes return them, the front sends them as they are."""

from __future__ import annotations

from dataclasses import dataclass, field


@dataclass(frozen=True)
class RawResponse:
    """A response whose payload is not JSON (GetClip, GetMediaForFragmentList, HLS)."""

    body: bytes
    content_type: str
    headers: dict[str, str] = field(default_factory=dict)
    status: int = 200
