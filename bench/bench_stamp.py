"""Stamp codec figures: draw/read speed and the share of stamps read back after H.264.

Run: ``python -m bench.bench_stamp [--quick]`` (prints figures, never passes or fails on
time; ``--quick``: 640x480 only, 2 bit rates, 60 frames).
"""

from __future__ import annotations

import argparse
import logging
import time
from collections.abc import Callable
from functools import partial

import av
import numpy as np

from bench.common import report
from kvsnb.sources import Stamp, TestPatternTrack, draw_stamp, read_stamp, read_stamp_frame
from kvsnb.sources.stamp import draw_stamp_yuv420p, try_read_stamp
from kvsnb.sources.tracks import webrtc_h264_encoder

logger = logging.getLogger(__name__)

BASE_MS = 1_763_700_000_000
FRAMES = 150
SIZES = ((640, 480), (1280, 720))
BITRATES = (150_000, 200_000, 300_000, 500_000, 1_000_000)
QUICK_FRAMES = 60
QUICK_BITRATES = (200_000, 1_000_000)
READ_SIZES = ("full", "quarter", "200x90")


def per_call_us(fn: Callable[[], object], repeat: int = 2000) -> float:
    """Median time of one call in microseconds over ``repeat`` calls."""
    times = []
    for _ in range(repeat):
        start = time.perf_counter()
        fn()
        times.append(time.perf_counter() - start)
    return float(np.median(times) * 1e6)


def speed(sizes: tuple[tuple[int, int], ...] = SIZES) -> None:
    """Print the draw and read times of the stamp at each of ``sizes``; report 640x480's."""
    stamp = Stamp(BASE_MS, 1234)
    for width, height in sizes:
        rgb = np.random.default_rng(0).integers(0, 256, (height, width, 3), dtype=np.uint8)
        draw_stamp(rgb, stamp)
        y = rgb[:, :, 1].copy()
        u = np.zeros((height // 2, width // 2), np.uint8)
        v = u.copy()
        frame = av.VideoFrame.from_ndarray(rgb, format="rgb24").reformat(format="yuv420p")
        small = np.ascontiguousarray(rgb[::4, ::4])
        track = TestPatternTrack(width, height)
        print(f"{width}x{height}")
        calls: list[tuple[str, Callable[[], object], int]] = [
            ("draw_stamp (RGB)", partial(draw_stamp, rgb, stamp), 2000),
            ("draw_stamp_yuv420p", partial(draw_stamp_yuv420p, y, u, v, stamp), 2000),
            ("read_stamp (RGB)", partial(read_stamp, rgb), 2000),
            ("read_stamp (RGB 1/4)", partial(read_stamp, small), 2000),
            ("read_stamp_frame (yuv)", partial(read_stamp_frame, frame), 2000),
            ("TestPatternTrack.render", partial(track.render, 7, BASE_MS), 300),
        ]
        timings = {name: per_call_us(fn, repeat) for name, fn, repeat in calls}
        for name, us in timings.items():
            print(f"  {name:<24}{us:8.1f} us")
        if (width, height) == (640, 480):
            report(
                read_stamp_us_640x480=timings["read_stamp (RGB)"],
                draw_stamp_yuv_us_640x480=timings["draw_stamp_yuv420p"],
            )


def survival(
    width: int, height: int, bitrate: int, frames: int = FRAMES
) -> tuple[float, dict[str, float]]:
    """Encode ``frames`` pattern frames like aiortc (plus gop 30); return kbps and read
    shares."""
    track = TestPatternTrack(width, height)
    encoder = webrtc_h264_encoder(width, height, bitrate, gop=30)
    decoder = av.CodecContext.create("h264", "r")
    size = 0
    good = dict.fromkeys(READ_SIZES, 0)
    count = 0
    for i in range(frames + 1):
        frame = track.render(i, BASE_MS + 33 * i) if i < frames else None
        if frame is not None:
            frame.pts, frame.time_base = i, encoder.time_base
        for packet in encoder.encode(frame):
            size += packet.size
            for decoded in decoder.decode(packet):
                assert isinstance(decoded, av.VideoFrame)
                expected = Stamp(BASE_MS + 33 * count, count)
                count += 1
                shapes = {
                    "full": (width, height),
                    "quarter": (width // 4, height // 4),
                    "200x90": (200, 90),
                }
                for name, (w, h) in shapes.items():
                    image = decoded.reformat(w, h, format="rgb24").to_ndarray()
                    good[name] += try_read_stamp(image) == expected
    kbps = size * 8 / (frames / 30) / 1000
    return kbps, {name: 100 * n / max(count, 1) for name, n in good.items()}


def main(argv: list[str] | None = None) -> None:
    """Print the speed and survival tables (``--quick``: 640x480 only, fewer bit rates and
    frames)."""
    ap = argparse.ArgumentParser(prog="python -m bench.bench_stamp")
    ap.add_argument("--quick", action="store_true", help="a smoke run")
    args = ap.parse_args(argv)
    sizes = SIZES[:1] if args.quick else SIZES
    bitrates = QUICK_BITRATES if args.quick else BITRATES
    frames = QUICK_FRAMES if args.quick else FRAMES
    speed(sizes)
    print(f"\nstamps read back after libx264 baseline zerolatency, {frames} frames, gop 30")
    print(f"{'size':>10} {'target':>8} {'actual':>8}  " + "  ".join(f"{n:>8}" for n in READ_SIZES))
    for width, height in sizes:
        for bitrate in bitrates:
            kbps, shares = survival(width, height, bitrate, frames)
            cells = "  ".join(f"{shares[n]:7.1f}%" for n in READ_SIZES)
            print(f"{width}x{height:<4} {bitrate // 1000:>5}k {kbps:>6.0f}k  {cells}")


if __name__ == "__main__":
    main()
