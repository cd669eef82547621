# mypy: disable-error-code="top-level-await, syntax"
# (cells run by IPython, where top-level await, async with and async for are allowed; real
# syntax errors are still caught by ruff and by build.py, which compiles every cell)
# %% [markdown]
# # 03 · Getting stored media back: HLS, GetImages, GetClip
#
# Once a storage session has recorded media into a stream, KVS gives it back in several
# ways. kvsnb turns each into numpy frames and pandas tables:
#
# | API | kvsnb | what you get |
# |---|---|---|
# | `GetHLSStreamingSessionURL` + HLS | `hls_session_url`, `HlsReader` | every frame (fMP4 or TS) |
# | `GetImages` | `get_images` | one JPEG/PNG per sampling interval, scaled if asked |
# | `GetClip` | `get_clip` | one MP4 file of a time range |
#
# We ingest 5 s of the stamped test pattern into Local KVS, then read it back all three
# ways and check, with the stamps, that they give the frames that were sent.

# %%
import datetime as dt
import tempfile
from pathlib import Path

import av
import matplotlib.pyplot as plt
import pandas as pd

import kvsnb
from kvsnb.analysis import stamps_from_frames, stamps_from_images
from kvsnb.playback import (
    HlsReader,
    get_clip,
    get_images,
    hls_session_url,
    list_fragments,
    stored_range,
)

target = kvsnb.connect("local")
channel_arn, stream_arn = target.create_storage_channel("playback")
result = await kvsnb.ingest(target, "playback", seconds=5)
sent = result.frames_sent
fragments = list_fragments(target, stream_arn)
print(f"sent {len(sent)} frames; {len(fragments)} fragments stored")
fragments

# %% [markdown]
# ## 1. HLS, as numpy frames
#
# `hls_session_url` calls `GetHLSStreamingSessionURL`. In `ON_DEMAND` mode without a time
# range it asks for the whole stored range of the stream. `HlsReader` fetches the master
# playlist, the media playlist and each segment, and decodes the frames with PyAV; each
# `HlsFrame` has its wall-clock timestamp (from `#EXT-X-PROGRAM-DATE-TIME`), its segment's
# media sequence number, a keyframe flag and `to_ndarray()`.
#
# KVS serves HLS in two container formats: **fragmented MP4** (the default) and **MPEG-TS**.
# Local KVS remuxes the stored fragments into either, without re-encoding.

# %%
hls = {}
for container in ("FRAGMENTED_MP4", "MPEG_TS"):
    url = hls_session_url(target, stream_arn, mode="ON_DEMAND", container=container)
    reader = HlsReader(url)
    frames = [f async for f in reader.frames(follow=False)]
    hls[container] = (reader, frames)
    print(
        f"{container:<15} {len(reader.segments_read)} segments, {len(frames)} frames,",
        f"first frame as numpy: {frames[0].to_ndarray().shape} {frames[0].to_ndarray().dtype}",
    )
print("session URL:", url.split("?")[0] + "?SessionToken=…")

# %%
reader, frames = hls["FRAGMENTED_MP4"]
pd.DataFrame(
    [
        {
            "sequence": f.sequence,
            "timestamp": f.timestamp,
            "pts_s": round(f.pts_s, 3),
            "keyframe": f.keyframe,
            "stamp": kvsnb.read_stamp(f.to_ndarray()).index,
        }
        for f in frames
    ]
).groupby("sequence").agg(
    frames=("pts_s", "size"),
    first_timestamp=("timestamp", "first"),
    keyframes=("keyframe", "sum"),
    first_stamp=("stamp", "first"),
    last_stamp=("stamp", "last"),
)

# %% [markdown]
# The first frame of each segment (a keyframe: fragments start at one), with the frame index
# read from its stamp:

# %%
firsts = [f for i, f in enumerate(frames) if i == 0 or f.sequence != frames[i - 1].sequence]
fig, axes = plt.subplots(1, len(firsts), figsize=(2.8 * len(firsts), 2.4))
for ax, f in zip(list(axes) if len(firsts) > 1 else [axes], firsts, strict=False):
    ax.imshow(f.to_ndarray())
    ax.set_title(f"segment {f.sequence}: #{kvsnb.read_stamp(f.to_ndarray()).index}", fontsize=9)
    ax.axis("off")
fig.tight_layout()

# %%
# NBVAL_CHECK_OUTPUT
stamps = {c: stamps_from_frames(frames)[0] for c, (_, frames) in hls.items()}
indexes = {c: list(s["frame_index"].astype(int)) for c, s in stamps.items()}
print("fMP4 and MPEG-TS give the same frames:", indexes["FRAGMENTED_MP4"] == indexes["MPEG_TS"])
print(
    "HLS has every frame sent, once, in order:",
    indexes["FRAGMENTED_MP4"] == sorted(sent["frame_index"].astype(int)),
)

# %% [markdown]
# ## 2. GetImages: an image grid
#
# `get_images` calls `GetImages` (splitting ranges longer than 300 s and following
# `NextToken`) and decodes each image to numpy. Here: one 320x240 JPEG every 500 ms over
# what was stored, by producer timestamp (`stored_range`: the first fragment's start to the
# last one's end); `stamps_from_images` reads the stamp of each image. Producer timestamps
# run a little after capture times (notebook 02), so sampling from the first capture on
# could start before the stream has media.

# %%
first, last = stored_range(target, stream_arn, "PRODUCER_TIMESTAMP")
start, end = first, last - dt.timedelta(milliseconds=1)  # the end itself is past the media
images = stamps_from_images(
    get_images(
        target,
        stream_arn,
        start,
        end,
        interval_ms=500,
        width=320,
        height=240,
        progress=False,
    )
)
images.drop(columns="image").head(10)

# %%
shown = images.dropna(subset=["stamp_index"]).head(10)
fig, axes = plt.subplots(2, 5, figsize=(10, 4.4))
for ax in axes.flat:
    ax.axis("off")
for ax, (_, row) in zip(axes.flat, shown.iterrows(), strict=False):
    ax.imshow(row["image"])
    offset = (row["timestamp"] - images["timestamp"].iloc[0]).total_seconds()
    ax.set_title(f"+{offset:.1f} s · #{row['stamp_index']}", fontsize=8)
fig.suptitle("GetImages every 500 ms, 320x240 JPEG (stamp read back from each image)")
fig.tight_layout()

# %%
# NBVAL_CHECK_OUTPUT
asked = int((end - start).total_seconds() * 1000) // 500 + 1  # Start, Start + 500 ms, ...
print("one image per sampled time:", len(images) == asked)
print(
    "every image has media and a stamp of a frame sent:",
    bool(
        images["stamp_index"].notna().all()
        and images["stamp_index"].astype(int).isin(sent["frame_index"]).all()
    ),
)
print("image size:", {img.shape for img in images["image"]})

# %% [markdown]
# ## 3. The same in widgets: `ImageBrowser` and `HlsViewer`
#
# `ImageBrowser` fetches GetImages over a time range (typed as `now`, `last 60 s`,
# `5 min ago` or ISO 8601) and steps through the images with their stamps;
# `from_ingest` presets the range to what an `ingest` sent. `HlsViewer` reads an HLS
# session (a URL, or one it builds from a stream) and steps through the decoded frames,
# marking fragment boundaries (◀◀ / ▶▶ jump between them).
#
# Both were filled from code below (`await browser.fetch()`, `await viewer.read()`: what
# the Fetch and Read buttons do). They keep what they fetched after the target closes at the
# end of this notebook; fetching again needs a running target (run the notebook again).

# %%
from kvsnb.widgets import HlsViewer, ImageBrowser

browser = ImageBrowser.from_ingest(target, "playback", result, interval_ms=500)
await browser.fetch()
browser

# %%
viewer = HlsViewer.from_stream(target, stream_arn, start=first, end=last)
await viewer.read()
viewer.show(45)
viewer

# %%
viewer.segment_table()

# %% [markdown]
# ## 4. GetClip: one MP4 file
#
# `get_clip` saves the MP4 clip of a time range (KVS stops a clip at 200 fragments or
# 100 MB). We count its frames with PyAV and compare them with HLS.

# %%
workdir = Path(tempfile.mkdtemp(prefix="kvsnb-03-"))
ends = fragments["producer_time"] + pd.to_timedelta(fragments["duration_ms"], unit="ms")
start, end = fragments["producer_time"].min().to_pydatetime(), ends.max().to_pydatetime()
clip = get_clip(target, stream_arn, start, end, workdir / "clip.mp4")
with av.open(str(clip), mode="r") as mp4:
    video = mp4.streams.video[0]
    clip_stamps, _ = stamps_from_frames(
        kvsnb.playback.DecodedFrame(f.time or 0.0, f.key_frame, f)  # time: pts × time base
        for f in mp4.decode(video)
    )
    codec = video.codec_context.name
print(f"{clip.name}: {clip.stat().st_size / 1e6:.2f} MB, {codec}, {len(clip_stamps)} frames")

# %%
# NBVAL_CHECK_OUTPUT
print(
    "the clip has the same frames as HLS:",
    list(clip_stamps["frame_index"].astype(int)) == indexes["FRAGMENTED_MP4"],
)

# %% [markdown]
# ## Clean up

# %%
import shutil

browser.close()
viewer.close()
target.close()
shutil.rmtree(workdir)
