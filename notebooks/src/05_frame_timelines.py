# mypy: disable-error-code="top-level-await, syntax"
# (cells run by IPython, where top-level await, async with and async for are allowed; real
# syntax errors are still caught by ruff and by build.py, which compiles every cell)
# %% [markdown]
# # 05 · Frame timelines: drops, gaps, jitter, keyframes, fragment boundaries
#
# A **frame timeline** has one row per frame the source sent, joined with what was stored:
# was the frame stored (and how many times), was it a keyframe, which fragment holds it,
# and the capture interval to the previous frame. From it, `timeline_summary` counts drops,
# gaps (runs of missing frames), duplicates, interval jitter, keyframes and fragments.
#
# To have something to find, we **inject a fault**: a `DroppingTrack` between the stamped
# pattern and the sender discards frames 45, 46, 47 and 70, exactly as frames lost between
# capture and the encoder would be. The pattern still logs them as sent, so the timeline
# must show them missing, and nothing else.
#
# Local KVS cuts a fragment every 2 s by default (at the next keyframe, which its storage
# peer asks for); here 1 s, a Local KVS setting, so that 6 s show several boundaries.

# %%
import matplotlib.pyplot as plt
import pandas as pd

import kvsnb
from kvsnb import Source
from kvsnb.analysis import (
    frame_timeline,
    plot_intervals,
    plot_timeline,
    stamps_from_frames,
    timeline_summary,
)
from kvsnb.local.storage.peer import StorageOptions
from kvsnb.playback import decode_video, get_media, list_fragments

target = kvsnb.connect("local", extra={"storage": StorageOptions(fragment_duration_s=1.0)})
channel_arn, stream_arn = target.create_storage_channel("timelines")

# %% [markdown]
# ## 1. Ingest with an injected fault

# %%
DROPS = [45, 46, 47, 70]
pattern = kvsnb.TestPatternTrack()
dropping = kvsnb.DroppingTrack(pattern, DROPS)
source = Source(
    video=dropping,
    audio=kvsnb.ToneTrack(),
    pattern=pattern,
    description="stamped pattern, 4 frames dropped",
)
result = await kvsnb.ingest(target, "timelines", seconds=6, source=source)
print(
    f"the pattern captured {len(result.frames_sent)} frames;",
    f"the DroppingTrack discarded {dropping.dropped}",
)

# %% [markdown]
# ## 2. Read back what was stored, and build the timeline
#
# `GetMediaForFragmentList` gives the stored fragments; the stamp of each decoded frame
# says which frame it is. We read the fragments one by one, so that we know exactly which
# fragment holds each stored frame. `frame_timeline` joins the stamps with the frames sent
# and the fragments (ListFragments).
#
# (`frame_timeline` also places frames into fragments by itself, from the fragments'
# producer timestamps; that estimate can be one frame off at a boundary when the producer
# timestamp runs about half a frame interval after the capture time, so the exact placement
# from the per-fragment reads replaces it here.)

# %%
fragments = list_fragments(target, stream_arn)
per_fragment_stamps = []
for number in fragments["fragment_number"]:
    media = get_media(target, stream_arn, [number])
    stamps, unreadable = stamps_from_frames(decode_video(media))
    assert unreadable == 0, f"fragment {number}: {unreadable} frames without a readable stamp"
    per_fragment_stamps.append(stamps.assign(fragment_number=number))
stored = pd.concat(per_fragment_stamps, ignore_index=True)

tl = frame_timeline(result.frames_sent, stored, fragments)
exact = stored.drop_duplicates("frame_index").set_index("frame_index")["fragment_number"]
tl["fragment_number"] = tl["frame_index"].map(exact).ffill()  # a lost frame: the one before
tl["fragment_start"] = tl["fragment_number"].ne(tl["fragment_number"].shift())
print(f"{len(fragments)} fragments, {len(stored)} frames stored")
tl.head(8)

# %%
summary = timeline_summary(tl)
pd.Series(summary, dtype=object).to_frame("value")

# %% [markdown]
# The fault is found exactly: two gaps, frames 45–47 and frame 70, and nothing else lost,
# duplicated or unreadable (every stored frame's stamp was read). Every fragment starts
# with a keyframe, so there are at least as many keyframes as fragments.

# %%
# NBVAL_CHECK_OUTPUT
print("gaps (first, last frame):", summary["gap_ranges"])
print("dropped:", summary["dropped"], "· duplicates:", summary["duplicates"])
print("fragments in the timeline = fragments listed:", summary["fragments"] == len(fragments))
print("keyframes ≥ fragments:", summary["keyframes"] >= summary["fragments"])
starts = tl[tl["fragment_start"]]
print("every fragment starts with a keyframe:", bool(starts["keyframe"].all()))

# %% [markdown]
# ## 3. The timeline strip: how to read it
#
# One tick per frame sent, over its capture time: **green** stored, **red** (tall) missing,
# **black** on top a keyframe, **dashed** lines the fragment boundaries. The red ticks at
# 1.5 s (frames 45–47) and 2.33 s (frame 70) are the injected drops. Each dashed line sits on
# a black tick: a fragment starts at a keyframe (the storage peer asks the sender for one,
# with a PLI, when a fragment is due).

# %%
fig = plot_timeline(tl)
# %% [markdown]
# ## 4. Jitter: capture intervals and stored intervals
#
# The **capture interval** (top) is the time between consecutive frames as the pattern
# captured them: 33.3 ms at 30 fps, with the jitter of the kernel's event loop around it.
# A dropped frame does not show here: it was captured.
#
# The **stored interval** (bottom) is the time between consecutive frames *that were
# stored*, from their capture stamps: a drop shows as a spike (n + 1 frame intervals for n
# frames lost), which is how a gap looks to whoever plays the stream back.

# %%
fig, (top, bottom) = plt.subplots(2, 1, figsize=(9, 5), sharex=True)
plot_intervals(tl, ax=top)
top.set_title("capture interval (every frame sent)")
top.set_xlabel("")
kept = tl[tl["stored"]]
t0 = tl["capture_ms"].min()
bottom.plot((kept["capture_ms"] - t0) / 1000, kept["capture_ms"].diff(), lw=0.8, color="C1")
for first, last in summary["gap_ranges"]:
    resumed = kept[kept["frame_index"] > last].iloc[0]
    bottom.annotate(
        f"frames {first}–{last} lost" if last > first else f"frame {first} lost",
        (
            (resumed["capture_ms"] - t0) / 1000,
            resumed["capture_ms"] - kept[kept["frame_index"] < first].iloc[-1]["capture_ms"],
        ),
        textcoords="offset points",
        xytext=(8, -4),
        fontsize=8,
    )
bottom.set_title("stored interval (consecutive stored frames)")
bottom.set_xlabel("capture time (s)")
bottom.set_ylabel("interval (ms)")
bottom.grid(alpha=0.3)
fig.tight_layout()

# %%
intervals = tl["interval_ms"].dropna()
pd.DataFrame(
    {
        "capture interval (ms)": intervals.describe(percentiles=[0.5, 0.95]).round(2),
        "stored interval (ms)": kept["capture_ms"]
        .diff()
        .dropna()
        .describe(percentiles=[0.5, 0.95])
        .round(2),
    }
)

# %% [markdown]
# ## 5. Keyframes and fragment boundaries
#
# Per fragment: its frames, the first and last frame index, and where its keyframes are.
# Fragments last about 1 s (30 frames) here. A fragment can hold more than one keyframe:
# the encoder may add one (a scene cut, or a PLI after a loss).

# %%
per_fragment = (
    tl.groupby("fragment_number", sort=False)
    .agg(
        frames=("frame_index", "size"),
        stored=("stored", "sum"),
        first_frame=("frame_index", "min"),
        last_frame=("frame_index", "max"),
        keyframes=("keyframe", "sum"),
    )
    .reset_index()
)
per_fragment["keyframe_at"] = [
    list(tl.loc[(tl["fragment_number"] == n) & tl["keyframe"], "frame_index"])
    for n in per_fragment["fragment_number"]
]
per_fragment.merge(fragments[["fragment_number", "duration_ms"]], on="fragment_number")

# %% [markdown]
# ## 6. In a widget: `TimelineView`
#
# `TimelineView` draws the strip, the intervals and the summary; `attach(target, stream,
# pattern)` redraws them every few seconds while an ingest runs, reading each newly listed
# fragment once. Here it is drawn once from the timeline above.

# %%
from kvsnb.widgets import TimelineView

TimelineView.from_timeline(tl)

# %% [markdown]
# ## Clean up

# %%
target.close()
