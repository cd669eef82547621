"""Rate limits as AWS applies them: a token bucket per limited thing (a channel's connects,
a socket's messages, a streaming session's playlist calls)."""

from __future__ import annotations

import time
from collections.abc import Callable


class TokenBucket:
    """``rate`` calls a second with a burst of ``rate``: ``take()`` is True while a call is
    allowed and counts it. ``clock`` is in seconds (a clock that steps back refills nothing)."""

    def __init__(self, rate: float, clock: Callable[[], float] = time.monotonic) -> None:
        self.rate = rate
        self.tokens = rate
        self._clock = clock
        self.stamp = clock()

    def take(self) -> bool:
        """Count one call; False (and nothing counted) when the bucket is empty."""
        now = self._clock()
        self.tokens = min(self.rate, self.tokens + max(0.0, now - self.stamp) * self.rate)
        self.stamp = now
        if self.tokens >= 1.0:
            self.tokens -= 1.0
            return True
        return False
