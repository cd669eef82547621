"""Fault injection for sources: tracks that lose frames on purpose, so that the frame
timeline has something to find (notebooks and tests)."""

from __future__ import annotations

from collections.abc import Callable, Collection

import av
from aiortc.mediastreams import MediaStreamTrack


class DroppingTrack(MediaStreamTrack):
    """Wraps a video track and silently discards the frames ``drop`` selects.

    ``drop`` is a collection of frame numbers (0-based, in the order the source produced
    them) or a predicate on that number. The source still logs a dropped frame as sent (a
    ``TestPatternTrack`` keeps it in ``sent``), exactly as a frame lost between capture and
    the encoder would be.
    """

    kind = "video"

    def __init__(
        self, source: MediaStreamTrack, drop: Collection[int] | Callable[[int], bool]
    ) -> None:
        super().__init__()
        self.source = source
        self._drop = drop if callable(drop) else frozenset(drop).__contains__
        self._n = 0
        self.dropped: list[int] = []

    async def recv(self) -> av.frame.Frame | av.Packet:
        """The next frame that is not dropped."""
        while True:
            frame = await self.source.recv()
            n = self._n
            self._n += 1
            if not self._drop(n):
                return frame
            self.dropped.append(n)

    def stop(self) -> None:
        """Stop this track and its source."""
        super().stop()
        self.source.stop()
