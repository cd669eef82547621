"""Analysis on synthetic tables: frame timelines find drops, gaps and duplicates; latency
tables match frames to fragments and compute the stages; the archive's frame functions
measure what they say."""

from __future__ import annotations

import datetime as dt

import av
import matplotlib

matplotlib.use("Agg")
import numpy as np
import pandas as pd
import pytest

from kvsnb.analysis import (
    ProbeRecord,
    compare_delivery,
    fragment_latency,
    frame_latency,
    frame_timeline,
    latency_summary,
    plot_latency_cdf,
    plot_latency_waterfall,
    plot_timeline,
    timeline_summary,
)
from kvsnb.analysis.archive import MOTION_STEP, Brightness, FrameContext, Motion, exact_sum

T0 = 1_800_000_000_000  # epoch ms


def sent(n: int, fps: float = 30.0) -> pd.DataFrame:
    return pd.DataFrame(
        {"frame_index": range(n), "capture_ms": [T0 + round(i * 1000 / fps) for i in range(n)]}
    )


def fragments(count: int, dur_ms: int = 1000, server_lag_ms: int = 20) -> pd.DataFrame:
    rows = []
    for i in range(count):
        start = T0 + i * dur_ms
        rows.append(
            {
                "fragment_number": str(90000 + i),
                "producer_time": pd.Timestamp(start, unit="ms", tz="UTC"),
                "server_time": pd.Timestamp(start + server_lag_ms, unit="ms", tz="UTC"),
                "duration_ms": dur_ms,
                "size_bytes": 1000,
            }
        )
    return pd.DataFrame(rows)


def test_timeline_finds_drops_gaps_and_duplicates() -> None:
    s = sent(90)
    stored_idx = [i for i in range(90) if i not in (10, 40, 41, 42)] + [5]
    stored = pd.DataFrame(
        {"frame_index": stored_idx, "keyframe": [i % 30 == 0 for i in stored_idx]}
    )
    tl = frame_timeline(s, stored, fragments(3))
    summary = timeline_summary(tl)
    assert summary["dropped"] == 4
    assert summary["gaps"] == 2
    assert summary["gap_ranges"] == [(10, 10), (40, 42)]
    assert summary["longest_gap_frames"] == 3
    assert summary["duplicates"] == 1
    assert summary["keyframes"] == 3
    assert summary["fragments"] == 3
    assert summary["interval_mean_ms"] == pytest.approx(33.3, abs=0.1)
    assert list(tl.loc[tl["fragment_start"], "frame_index"]) == [0, 30, 60]
    d = compare_delivery(s, stored)
    assert d.missing == [10, 40, 41, 42] and d.duplicates == [5] and not d.complete


def test_latency_stages() -> None:
    frag = fragments(3)
    record = ProbeRecord()
    for i, n in enumerate(frag["fragment_number"]):
        end_s = (T0 + (i + 1) * 1000) / 1000
        record.listed[n] = end_s + 0.030  # listed 30 ms after the fragment ends
        record.hls.append(
            {
                "segment": str(i),
                "program_date_time": dt.datetime.fromtimestamp(
                    (T0 + i * 1000 + 20) / 1000, tz=dt.UTC
                ),
                "duration_s": 1.0,
                "seen_at": end_s + 0.045,
            }
        )
    record.images.append(
        {"frame_index": 0, "capture_ms": T0, "retrievable_at": (T0 + 1000) / 1000 + 0.05}
    )
    fl = fragment_latency(frag, record)
    assert list(fl["arrival_ms"]) == [20, 20, 20]
    assert fl["listed_beyond_end_ms"].round().tolist() == [30, 30, 30]
    assert fl["hls_beyond_end_ms"].round().tolist() == [45, 45, 45]
    lat = frame_latency(sent(90), frag, record)
    first = lat.loc[lat["frame_index"] == 0].iloc[0]
    assert first["fragment_number"] == "90000"
    assert first["listed_ms"] == pytest.approx(1030, abs=1)
    assert first["images_ms"] == pytest.approx(1050, abs=1)
    assert first["images_beyond_end_ms"] == pytest.approx(50, abs=1)
    summary = latency_summary(lat, fl).set_index("measure")
    assert summary.loc["fragment end → listed", "p50_ms"] == pytest.approx(30, abs=1)
    assert summary.loc["capture → retrievable by GetImages", "count"] == 1
    # the plots draw from these tables
    for fig in (plot_latency_cdf(lat), plot_latency_waterfall(fl)):
        assert fig.axes and fig.axes[0].has_data()
    tl = frame_timeline(sent(90), pd.DataFrame({"frame_index": range(90)}), frag)
    assert plot_timeline(tl).axes[0].has_data()


@pytest.mark.parametrize("offset_ms", [0, 12, 20, 29, 45, 92])
def test_frames_are_placed_by_a_producer_offset_larger_than_half_a_frame(offset_ms: int) -> None:
    """Producer timestamps run after capture by a constant offset (encode, send, RTCP
    mapping) that may exceed half a frame interval, and capture intervals jitter under load:
    each fragment's first frame is still the one it starts with, so capture → server is never
    negative (issue 15, point 5)."""
    import numpy as np

    from kvsnb.analysis.frame_timeline import fragment_of, producer_offset_ms

    rng = np.random.default_rng(7)
    capture = T0 + np.cumsum(rng.integers(28, 60, size=150))  # a busy sender's intervals
    firsts = [0, 31, 58, 90, 121]  # keyframes starting the fragments
    rows = []
    for k, i in enumerate(firsts):
        start = int(capture[i]) + offset_ms
        end = int(capture[firsts[k + 1]]) + offset_ms if k + 1 < len(firsts) else start + 900
        rows.append(
            {
                "fragment_number": str(90000 + k),
                "producer_time": pd.Timestamp(start, unit="ms", tz="UTC"),
                # the keyframe arrives a little after it was sent
                "server_time": pd.Timestamp(start + 3, unit="ms", tz="UTC"),
                "duration_ms": end - start,
                "size_bytes": 1000,
            }
        )
    frags = pd.DataFrame(rows)
    assert producer_offset_ms(
        capture, frags["producer_time"].map(lambda t: t.timestamp() * 1000).to_numpy()
    ) == pytest.approx(offset_ms)
    placed = fragment_of(capture, frags)
    expected = [str(90000 + sum(1 for f in firsts if f <= i) - 1) for i in range(len(capture))]
    assert placed == expected
    frames = pd.DataFrame({"frame_index": range(len(capture)), "capture_ms": capture})
    # each fragment is listed 5 ms after the next one's first frame was captured (its end)
    record = ProbeRecord()
    for k, number in enumerate(frags["fragment_number"]):
        end = capture[firsts[k + 1]] if k + 1 < len(firsts) else capture[-1] + 33
        record.listed[number] = (float(end) + 5) / 1000
    lat = fragment_latency(frags, record, frames)
    assert (lat["arrival_ms"] == offset_ms + 3).all()
    assert (lat["producer_offset_ms"] == offset_ms).all()
    beyond = lat["listed_beyond_end_ms"].iloc[:-1]  # the last one's end is a guess here
    assert beyond.round(3).eq(5.0).all(), beyond.tolist()


@pytest.mark.parametrize("shape", [(480, 640), (1080, 1920), (257, 3), (258, 3), (1, 5)])
def test_exact_sum_is_numpy_s_sum(shape: tuple[int, int]) -> None:
    rng = np.random.default_rng(1)
    image = rng.integers(0, 256, shape, dtype=np.uint8)
    assert exact_sum(image) == int(image.sum(dtype=np.uint64))
    image[:] = 255  # the worst case for the uint16 column sums
    assert exact_sum(image) == 255 * image.size


def frame_of(luma: np.ndarray) -> av.VideoFrame:
    frame = av.VideoFrame(luma.shape[1], luma.shape[0], "gray")
    frame.planes[0].update(luma.tobytes())
    return frame


def test_brightness_and_motion_are_the_mean_luma_and_its_mean_change() -> None:
    rng = np.random.default_rng(2)
    a, b = (rng.integers(0, 256, (480, 640), dtype=np.uint8) for _ in range(2))
    motion = Motion()
    values = []
    for i, luma in enumerate((a, b)):
        ctx = FrameContext("1", i * 33, i == 0, 100, i == 0, frame_of(luma))
        values.append({**Brightness()(ctx), **motion(ctx)})
    assert values[0]["brightness"] == pytest.approx(a.mean())
    assert values[1]["brightness"] == pytest.approx(b.mean())
    assert np.isnan(values[0]["motion"])  # the first frame of a fragment has none
    step = (slice(None, None, MOTION_STEP),) * 2
    expected = np.abs(b[step].astype(np.int16) - a[step].astype(np.int16)).mean()
    assert values[1]["motion"] == pytest.approx(expected)
