# mypy: disable-error-code="top-level-await, syntax"
# (cells run by IPython, where top-level await, async with and async for are allowed; real
# syntax errors are still caught by ruff and by build.py, which compiles every cell)
# %% [markdown]
# # 08 · Long archives: `kvsnb import` and frame analysis on Dask
#
# A real archive is hours or days per camera, far more frames than one kernel decodes in
# reasonable time. Two pieces make it workable:
#
# 1. **Loading** an archive without ingesting it in real time: `kvsnb import` sends a media
#    file through **PutMedia** (what the producer SDKs and GStreamer's `kvssink` use), with
#    producer timestamps in the past, so an hour loads at disk speed. Each fragment is
#    acknowledged (`BUFFERING`, `RECEIVED`, `PERSISTED`) while the upload goes on.
# 2. **Analysing** it on **Dask**: the fragments of a time range are listed and grouped into
#    partitions; each Dask task fetches its own fragments (GetMediaForFragmentList, with its
#    own boto3 client), decodes them with PyAV and applies per-frame functions, and the
#    results form one `dask.dataframe`. Here on a `LocalCluster`; the same code runs on any
#    `distributed.Client` (dask-kubernetes, dask-gateway, a cloud cluster) and against AWS.
#
# The archive is generated: the stamped test pattern, imported twice with a 10 s hole
# between the two parts, so there is a gap to find. `MINUTES` sets its length: a few minutes
# keeps this notebook quick under test; set `MINUTES = 60` for the full hour.

# %%
import datetime as dt
import os
import subprocess
import sys
import tempfile
from pathlib import Path

import matplotlib.pyplot as plt

import kvsnb
from kvsnb.analysis import (
    analyze_archive,
    frame_gaps,
    keyframe_intervals,
    local_client,
    plan_archive,
    to_dask,
)
from kvsnb.sources import make_test_file

MINUTES = float(os.environ.get("KVSNB_ARCHIVE_MINUTES", "3"))  # 60 for the full hour
FPS = 15
target = kvsnb.connect("local")
stream_arn = target.kinesisvideo.create_stream(StreamName="archive", DataRetentionInHours=24 * 7)[
    "StreamARN"
]

# %% [markdown]
# ## 1. Make a media file and load it with `kvsnb import`
#
# The file is H.264 (a keyframe every 2 s) and AAC, so both pass through untouched; another
# codec would be transcoded, with a note. The archive starts at midnight UTC today, in the
# past: PutMedia accepts producer timestamps as old as you like.

# %%
half_s = MINUTES * 60 / 2
workdir = Path(tempfile.mkdtemp(prefix="kvsnb-08-"))
day = dt.datetime.now(dt.UTC).replace(hour=0, minute=0, second=0, microsecond=0)
media = make_test_file(
    workdir / "camera.mp4",
    seconds=half_s,
    width=320,
    height=240,
    fps=FPS,
    gop=2 * FPS,
    start_ms=int(day.timestamp() * 1000),
)
print(f"{media.name}: {media.stat().st_size / 1e6:.1f} MB, {half_s:.0f} s")


def kvsnb_import(start: dt.datetime) -> None:
    """Run the `kvsnb import` command against this notebook's Local KVS."""
    assert target.endpoint_url is not None  # a Local KVS target has one
    command = [sys.executable, "-m", "kvsnb.cli", "import", str(media), "--stream", "archive"]
    command += ["--start", start.isoformat(), "--endpoint-url", target.endpoint_url]
    done = subprocess.run(command, capture_output=True, text=True, check=True)
    print(done.stdout.strip())


kvsnb_import(day)
kvsnb_import(day + dt.timedelta(seconds=half_s + 10))  # a 10 s hole before the second part

# %% [markdown]
# ## 2. The fragments, and a Dask dataframe of the frames
#
# `plan_archive` lists the fragments (every page of ListFragments) and groups them into
# partitions of about `partition_seconds` of media. `to_dask` is lazy: its columns come
# from the frame functions (`meta`), nothing has been fetched yet.

# %%
end = day + dt.timedelta(minutes=MINUTES + 1)
plan = plan_archive(
    target,
    "archive",
    day,
    end,
    functions=("timeline", "brightness", "motion"),
    partition_seconds=30,
)
print(f"{len(plan.fragments)} fragments, {plan.media_seconds:.0f} media s,")
print(f"{len(plan.partitions)} partitions of about 30 s")
frames_ddf = to_dask(plan)
frames_ddf

# %% [markdown]
# ## 3. Run it on a LocalCluster
#
# Two single-threaded worker processes. The dashboard link shows the tasks as they run
# (Dask's own progress view; `distributed.progress` works too).

# %%
client = local_client(n_workers=2)
print("Dask dashboard:", client.dashboard_link)
frames = analyze_archive(plan, client)
print(f"{len(frames)} frames analysed")
frames.head()

# %% [markdown]
# ## 4. Motion and brightness per minute
#
# `motion` is the mean absolute change of luma from the previous frame (of the same
# fragment); `brightness` the mean luma. Per-frame rows resample like any time series.

# %%
per_minute = frames.set_index("producer_time")[["brightness", "motion"]].resample("1min").mean()
fig, axes = plt.subplots(2, 1, figsize=(8, 4), sharex=True)
per_minute["brightness"].plot(ax=axes[0], marker="o", title="brightness (mean luma)")
per_minute["motion"].plot(ax=axes[1], marker="o", title="motion (mean |Δ luma|)")
fig.tight_layout()
per_minute.round(2)

# %% [markdown]
# ## 5. Gaps and keyframe intervals
#
# `frame_gaps` marks every frame interval longer than 1.5 median intervals, with the frames
# estimated missing: the 10 s hole between the two imports is the one gap. Keyframes come
# every 2 s, as the file was encoded.

# %%
gaps = frame_gaps(frames)
found = gaps.loc[gaps["gap"], ["producer_time", "interval_ms", "missing"]]
print(f"{len(found)} gap(s)")
found

# %%
intervals = keyframe_intervals(frames)
intervals.describe().round(3)

# %%
client.close()
client.cluster.close()
target.close()
