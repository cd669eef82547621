"""Ingest media into a channel's storage session for a while: sources by name, a master
``MasterSession``, and what was sent (``IngestResult``)."""

from __future__ import annotations

import asyncio
import datetime as dt
import logging
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path

import pandas as pd
from aiortc.mediastreams import MediaStreamTrack

from kvsnb.client.session import JoinPolicy, MasterSession
from kvsnb.client.target import Target
from kvsnb.client.timeline import SessionTimeline, TimelineEvent
from kvsnb.sources.files import FileSource
from kvsnb.sources.tracks import TEST_PATTERN, TestPatternTrack, ToneTrack

logger = logging.getLogger(__name__)


@dataclass
class Source:
    """The tracks a master sends, and the stamped pattern when there is one."""

    video: MediaStreamTrack | None
    audio: MediaStreamTrack | None
    pattern: TestPatternTrack | None = None
    description: str = ""
    file: FileSource | None = field(default=None, repr=False)

    def stop(self) -> None:
        """Stop the tracks (and close the file)."""
        if self.file is not None:
            self.file.stop()
        for t in (self.video, self.audio):
            if t is not None:
                t.stop()


def make_source(
    spec: str | Path = TEST_PATTERN,
    *,
    width: int = 640,
    height: int = 480,
    fps: float = 30.0,
    audio: bool = True,
) -> Source:
    """``"testpattern"``: the stamped test pattern (and a tone); otherwise a media file."""
    if str(spec) == TEST_PATTERN:
        pattern = TestPatternTrack(width, height, fps)
        tone = ToneTrack() if audio else None
        return Source(pattern, tone, pattern, f"stamped test pattern {width}x{height}@{fps:g}")
    fs = FileSource(spec)
    return Source(fs.video, fs.audio if audio else None, None, repr(fs), fs)


@dataclass
class IngestResult:
    """What an ingest did: the session timeline, the frames the pattern sent, the times."""

    channel_arn: str
    timeline: SessionTimeline
    source: str
    started: float  # epoch s when media started flowing (peer connected)
    ended: float  # epoch s when the session stopped
    frames_sent: pd.DataFrame  # stamped frames: frame_index, capture_ms, ... (may be empty)

    @property
    def seconds(self) -> float:
        """Seconds of media sent."""
        return self.ended - self.started

    def sample_range(self, margin_s: float = 0.5) -> tuple[dt.datetime, dt.datetime]:
        """The range to sample stored media in (GetImages, HLS): from ``margin_s`` after the
        first frame's capture (producer timestamps run a little after capture times, so the
        very first instant may have no media yet) to the last frame's capture."""
        if self.frames_sent.empty:
            first, last = self.started, self.ended
        else:
            first = float(self.frames_sent["capture_ms"].min()) / 1000
            last = float(self.frames_sent["capture_ms"].max()) / 1000
        start = min(first + margin_s, last)
        return (dt.datetime.fromtimestamp(start, dt.UTC), dt.datetime.fromtimestamp(last, dt.UTC))


async def ingest(
    target: Target,
    channel: str,
    *,
    seconds: float = 10.0,
    source: str | Path | Source = TEST_PATTERN,
    width: int = 640,
    height: int = 480,
    fps: float = 30.0,
    audio: bool = True,
    policy: JoinPolicy | None = None,
    on_event: Callable[[TimelineEvent], None] | None = None,
    connect_timeout: float = 60.0,
    drain_s: float = 0.3,
    force_turn: bool = False,
) -> IngestResult:
    """Join ``channel``'s storage session as master, send ``seconds`` of media, stop.

    ``on_event`` sees each timeline step as it happens (the CLI prints them); ``force_turn``
    gathers relay candidates only (the SDK samples' "force TURN").
    """
    src = (
        source
        if isinstance(source, Source)
        else make_source(source, width=width, height=height, fps=fps, audio=audio)
    )
    session = MasterSession(
        target, channel, video=src.video, audio=src.audio, policy=policy, force_turn=force_turn
    )
    if on_event is not None:
        session.timeline.on_event(on_event)
    try:
        await session.start(timeout=connect_timeout)
        started = time.time()
        await asyncio.sleep(seconds)
        # Stop the sources first, so the frames already captured leave the sender before
        # the peer connection closes (a frame logged as sent is then really sent).
        src.stop()
        ended = time.time()
        await asyncio.sleep(drain_s)
    finally:
        src.stop()
        await session.stop()
    frames = src.pattern.frames_df() if src.pattern is not None else pd.DataFrame()
    assert session.channel_arn is not None
    return IngestResult(
        session.channel_arn, session.timeline, src.description, started, ended, frames
    )
