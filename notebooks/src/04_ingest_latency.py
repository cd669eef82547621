# mypy: disable-error-code="top-level-await, syntax"
# (cells run by IPython, where top-level await, async with and async for are allowed; real
# syntax errors are still caught by ruff and by build.py, which compiles every cell)
# %% [markdown]
# # 04 · Ingest latency: capture → stored → retrievable
#
# How long after a frame is captured can it be read back? With the stamped test pattern
# each frame carries its capture time, and a `RetrievalProbe` watches the stream while the
# master ingests, polling every 50 ms:
#
# - **ListFragments**: when each fragment is first listed (stored durably);
# - a **LIVE HLS** session: when each segment first appears in the media playlist;
# - **GetImages**: for one frame in 15, when an image of it can first be retrieved.
#
# The capture times and the probe use the same clock (one machine), so the differences are
# latencies. A frame cannot be listed before its **fragment** is complete, so most of the
# latency is the wait for the fragment to fill (up to the fragment's duration, 2 s on
# Local KVS); the part that is KVS's own work is measured **beyond the fragment's end**.

# %%
import matplotlib.pyplot as plt

import kvsnb
from kvsnb.analysis import (
    RetrievalProbe,
    fragment_latency,
    frame_latency,
    latency_summary,
    plot_latency_cdf,
    plot_latency_waterfall,
)
from kvsnb.playback import list_fragments

target = kvsnb.connect("local")
channel_arn, stream_arn = target.create_storage_channel("latency")

# %% [markdown]
# ## 1. Ingest 6 s while the probe watches
#
# `make_source()` gives the stamped pattern and a tone; the pattern tells the probe about
# each frame it captures (`on_frame`). After the ingest the probe keeps watching 2.5 s more,
# for the last fragment (closed when the master leaves).

# %%
source = kvsnb.make_source()
probe = RetrievalProbe(target, stream_arn)
assert source.pattern is not None  # make_source() without a file: the stamped pattern
source.pattern.on_frame = probe.frame_sent
await probe.start()
result = await kvsnb.ingest(target, "latency", seconds=6, source=source)
record = await probe.stop(2.5)
sent = result.frames_sent
fragments = list_fragments(target, stream_arn)
print(
    f"sent {len(sent)} frames; {len(fragments)} fragments;",
    f"probe saw {len(record.listed)} listed, {len(record.hls)} HLS segments,",
    f"{len(record.images)} GetImages samples; errors: {len(record.errors)}",
)

# %% [markdown]
# ## 2. The summary
#
# One row per measure, in ms: count, median (p50), p95 and maximum.
#
# - *capture → server*: the transit of a fragment's first frame to the storage session
#   (encode, RTP, the storage peer); *capture → producer timestamp*: how far the sender's
#   RTP clock runs after capture.
# - *capture → listed / in LIVE HLS / retrievable by GetImages*: per frame, end to end.
# - *fragment end → …*: the same, minus the wait for the fragment to fill.

# %%
frame_lat = frame_latency(sent, fragments, record)
frag_lat = fragment_latency(fragments, record, sent)
summary = latency_summary(frame_lat, frag_lat)
summary

# %% [markdown]
# ## 3. The CDF: how to read it
#
# One line per way of retrieving, over every frame: a point (x, y) says that a fraction
# y of the frames were retrievable within x ms of capture. The lines rise **evenly from a
# few hundred ms to about the fragment duration**: a frame captured at the end of a fragment
# waits little, one captured at its start waits the whole fragment. Lines on top of each
# other mean that listing, the LIVE HLS playlist and GetImages see a fragment at the same
# moment; a line shifted right would be an extra delay of that path.

# %%
fig = plot_latency_cdf(frame_lat)
# %% [markdown]
# The same per frame, over capture time: a **sawtooth**, one tooth per fragment. Each tooth
# falls from the fragment's duration (its first frame waits for the whole fragment) to the
# part beyond the fragment's end (its last frame). The dashed lines are the fragment starts.

# %%
fig, ax = plt.subplots(figsize=(9, 3.4))
t0 = frame_lat["capture_ms"].min()
for _, rows in frame_lat.groupby("fragment_number", sort=False):
    ax.plot((rows["capture_ms"] - t0) / 1000, rows["listed_ms"], ".", ms=3)
for start in fragments["producer_time"]:
    ax.axvline((start.timestamp() * 1000 - t0) / 1000, color="grey", ls="--", lw=0.8)
ax.set_xlabel("capture time (s)")
ax.set_ylabel("capture → listed (ms)")
ax.set_title("per frame: capture → listed by ListFragments, one colour per fragment")
ax.grid(alpha=0.3)
fig.tight_layout()

# %% [markdown]
# ## 4. The waterfall: per fragment
#
# Each bar is one fragment, from its first frame: light blue is the time the fragment takes
# to fill (its duration), dark blue the time from its end until it is listed, orange the
# extra time until it shows in the LIVE HLS playlist. The dark and orange parts are Local
# KVS's own latency: cutting the fragment at the next keyframe, writing it durably, indexing
# it. The last fragment is shorter: it closed when the master left.

# %%
fig = plot_latency_waterfall(frag_lat)
# %%
frag_lat[
    [
        "fragment_number",
        "duration_ms",
        "arrival_ms",
        "listed_beyond_end_ms",
        "hls_beyond_end_ms",
    ]
].round(1)

# %% [markdown]
# Checks: every fragment was seen being listed and in the LIVE HLS playlist; those the
# recorder cut on its schedule (all but the last) within a second of their end; and every
# frame the probe sampled became retrievable by GetImages.

# %%
# NBVAL_CHECK_OUTPUT
beyond = frag_lat["listed_beyond_end_ms"]
print("every fragment listed:", bool(frag_lat["listed_at"].notna().all()))
print("every fragment in the LIVE HLS playlist:", bool(frag_lat["hls_at"].notna().all()))
print("listed within 1 s of its end:", bool((beyond.iloc[:-1] < 1000).all()))
print(
    "every sampled frame retrievable by GetImages:",
    bool(probe.images_frame()["retrievable_at"].notna().all()),
)

# %% [markdown]
# ## 5. In a widget: `LatencyView`
#
# `LatencyView` draws the same summary and plots; `attach(probe, pattern)` redraws them
# every second while an ingest runs. Here it is drawn once from the tables above.

# %%
from kvsnb.widgets import LatencyView

LatencyView.from_tables(frame_lat, frag_lat)

# %% [markdown]
# ## Clean up

# %%
target.close()
