"""GetImages' renderer (``kvsnb.local.archive.render``) in this process, on a fragment the
storage peer's recorder stored: which frames it decodes, and what it encodes."""

from __future__ import annotations

import asyncio
import base64
import io
from collections.abc import Iterator
from pathlib import Path
from typing import Literal

import av
import numpy as np
import pytest
from PIL import Image

from kvsnb.local.archive.render import (
    ERROR_NO_MEDIA,
    EncodeSpec,
    FragmentRenderer,
    FragmentTask,
    encode_image,
    load_media,
)
from kvsnb.local.storage.recorder import FragmentRecorder
from kvsnb.local.store.fragments import FragmentStore
from tests.unit.test_recorder import BASE_S, FPS, STREAM, Camera

PNG = EncodeSpec("PNG", 80, None, None)
BASE_MS = round(BASE_S * 1000)


@pytest.fixture
def fragment(tmp_path: Path) -> Iterator[Path]:
    """One stored 2 s fragment: a keyframe every second (frames 0 and 30), 60 frames."""
    store = FragmentStore(tmp_path)
    recorder = FragmentRecorder(store, STREAM, fragment_duration_s=10.0, audio=False)
    camera = Camera(gop=30)
    for _ in range(2 * FPS):
        recorder.add_video(camera.next())
    (stored,) = asyncio.run(recorder.close())
    yield store.resolve(stored)
    store.close()


def frame_ms(index: int) -> int:
    """Producer time of frame ``index`` as stored (ms)."""
    return BASE_MS + round(index * 1000 / FPS)


def pixels(content: str) -> np.ndarray:
    return np.asarray(Image.open(io.BytesIO(base64.b64decode(content))).convert("RGB"))


def test_a_gop_is_decoded_once_up_to_its_last_sample(fragment: Path) -> None:
    renderer = FragmentRenderer()
    samples = ((0, frame_ms(5)), (1, frame_ms(12)), (2, frame_ms(33)), (3, BASE_MS - 1))
    result = renderer.render(FragmentTask(str(fragment), samples, PNG))
    assert sorted(result.images) == [0, 1, 2]
    assert result.errors == {3: ERROR_NO_MEDIA}  # before the fragment's first frame
    assert result.decoded == 13 + 4  # frames 0..12 of the first GOP, 30..33 of the second


def test_a_decoder_left_mid_gop_serves_the_next_sample_of_that_gop(fragment: Path) -> None:
    renderer = FragmentRenderer()
    first = renderer.render(FragmentTask(str(fragment), ((0, frame_ms(10)),), PNG))
    later = renderer.render(FragmentTask(str(fragment), ((0, frame_ms(20)),), PNG))
    again = renderer.render(FragmentTask(str(fragment), ((0, frame_ms(20)),), PNG))
    assert (first.decoded, later.decoded) == (11, 10)  # on from frame 11, not the keyframe
    assert again.decoded == 0  # the decoder's last frame is the one asked
    assert pixels(later.images[0]).tobytes() == pixels(again.images[0]).tobytes()
    earlier = renderer.render(FragmentTask(str(fragment), ((0, frame_ms(3)),), PNG))
    assert earlier.decoded == 4  # behind the decoder: a new one, from the keyframe


def test_images_are_pyav_rgb_conversions_at_the_size_asked(fragment: Path) -> None:
    # one converter serves every size in turn; each image must be what PyAV's own
    # conversion of that frame to RGB at that size gives (PNG: lossless)
    media = load_media(fragment)
    with av.open(str(fragment)) as container:
        frames = [f for _, f in zip(range(3), container.decode(video=0), strict=False)]
    assert len(frames) == 3 and media.pts[0] == BASE_MS
    for frame in frames:
        for width, height in ((None, None), (320, 240), (64, 48), (1280, 720)):
            content = encode_image(frame, EncodeSpec("PNG", 80, width, height))
            if width is None:
                expected = frame.to_ndarray(format="rgb24")
            else:
                expected = frame.to_ndarray(width=width, height=height, format="rgb24")
            assert np.array_equal(pixels(content), expected), (width, height)


def test_a_gop_started_anew_reuses_an_idle_decoder_and_decodes_the_same(
    fragment: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    fresh = FragmentRenderer().render(FragmentTask(str(fragment), ((0, frame_ms(3)),), PNG))
    created: list[object] = []
    create = av.CodecContext.create

    def counted(codec: str, mode: Literal["r", "w"] | None = None) -> object:
        created.append(codec)
        return create(codec, mode)

    monkeypatch.setattr(av.CodecContext, "create", counted)
    renderer = FragmentRenderer()
    renderer.render(FragmentTask(str(fragment), ((0, frame_ms(40)),), PNG))
    renderer.render(FragmentTask(str(fragment), ((0, frame_ms(20)),), PNG))
    # behind the decoders of both GOPs: one of their contexts, flushed, starts frame 0 again
    reused = renderer.render(FragmentTask(str(fragment), ((0, frame_ms(3)),), PNG))
    assert len(created) == 2 and reused.decoded == 4
    assert pixels(reused.images[0]).tobytes() == pixels(fresh.images[0]).tobytes()
