"""``write_y4m``: a stamped YUV4MPEG2 file (Chromium's fake camera) that PyAV reads back."""

from __future__ import annotations

from pathlib import Path

import av
import pytest

from kvsnb.sources import read_stamp_frame, write_y4m


def test_every_frame_carries_its_stamp(tmp_path: Path) -> None:
    path = write_y4m(tmp_path / "cam.y4m", 1.0, 320, 240, 15, start_ms=1_700_000_000_000)
    with av.open(str(path)) as container:
        frames = list(container.decode(video=0))
    assert len(frames) == 15
    assert (frames[0].width, frames[0].height) == (320, 240)
    stamps = [read_stamp_frame(f) for f in frames]
    assert [s.index for s in stamps] == list(range(15))
    assert stamps[0].capture_ms == 1_700_000_000_000
    assert stamps[-1].capture_ms == 1_700_000_000_000 + round(14 * 1000 / 15)


def test_odd_sizes_are_refused(tmp_path: Path) -> None:
    with pytest.raises(ValueError, match="must be even"):
        write_y4m(tmp_path / "x.y4m", 1.0, 321, 240)
