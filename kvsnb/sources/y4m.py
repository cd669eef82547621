"""``write_y4m``: the stamped test pattern as a YUV4MPEG2 file, e.g. for Chromium's fake camera
(``--use-file-for-fake-video-capture=<file>.y4m``), so the frames a browser sends carry stamps
that ``read_stamp`` finds again in what was stored."""

from __future__ import annotations

import time
from pathlib import Path

import numpy as np

from kvsnb.sources.stamp import MAX_INDEX, Stamp, draw_stamp_yuv420p

__all__ = ["write_y4m"]


def write_y4m(
    path: str | Path,
    seconds: float,
    width: int = 640,
    height: int = 480,
    fps: int = 30,
    *,
    start_ms: int | None = None,
) -> Path:
    """Write ``seconds`` of the stamped pattern (4:2:0, ``width`` x ``height``, ``fps``) to
    ``path`` and return it. Frame ``i`` carries ``Stamp(start_ms + i·1000/fps, i)``
    (``start_ms``: now by default) over a moving luma gradient. Chromium loops the file, so
    make it longer than the capture it feeds (the index then starts again at 0)."""
    if width % 2 or height % 2:
        raise ValueError(f"width and height must be even, got {width}x{height}")
    count = round(seconds * fps)
    if not 0 < count <= MAX_INDEX:
        raise ValueError(f"{seconds} s at {fps} fps is not 1..{MAX_INDEX} frames")
    start = int(time.time() * 1000) if start_ms is None else start_ms
    out = Path(path)
    ramp = (np.arange(width, dtype=np.int32)[None, :] + np.arange(height)[:, None]) % 220
    with out.open("wb") as f:
        f.write(f"YUV4MPEG2 W{width} H{height} F{fps}:1 Ip A1:1 C420jpeg\n".encode())
        for i in range(count):
            y = (16 + (ramp + 4 * i) % 220).astype(np.uint8)
            u = np.full((height // 2, width // 2), 128 + (i % 64), np.uint8)
            v = np.full((height // 2, width // 2), 160, np.uint8)
            draw_stamp_yuv420p(y, u, v, Stamp(start + round(i * 1000 / fps), i))
            f.write(b"FRAME\n")
            f.write(y.tobytes())
            f.write(u.tobytes())
            f.write(v.tobytes())
    return out
