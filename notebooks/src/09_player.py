# mypy: disable-error-code="top-level-await, syntax"
# (cells run by IPython, where top-level await, async with and async for are allowed; real
# syntax errors are still caught by ruff and by build.py, which compiles every cell)
# %% [markdown]
# # 09 · Watch it play: the Player widget, HLS and DASH, LIVE and ON_DEMAND
#
# `kvsnb.widgets.Player` plays a stream's HLS or DASH session in a `<video>` element with
# **hls.js** or **dash.js**, as a web page would. Under the video it shows the *program
# date time* of the frame on screen (the producer timestamp KVS gives each fragment), and
# the kernel can read it back, pause and seek.
#
# The browser itself fetches the playlists and segments. On this machine it reaches Local
# KVS at `127.0.0.1`; on Binder or a remote JupyterLab, Local KVS answers under the Jupyter
# server's `/proxy/PORT/` path (`jupyter-server-proxy`), and kvsnb gives the browser that
# URL by itself (`target.public_url`).
#
# We ingest the stamped test pattern with 1 s fragments and watch it LIVE, then play the
# stored range ON_DEMAND. (`HlsViewer`, in notebook 03, is the tool for stepping through
# frames in the kernel.)

# %%
import asyncio

import pandas as pd

import kvsnb
from kvsnb.local.storage.peer import StorageOptions
from kvsnb.playback import DashReader, dash_session_url, list_fragments
from kvsnb.widgets import Player

target = kvsnb.connect("local", extra={"storage": StorageOptions(fragment_duration_s=1.0)})
channel_arn, stream_arn = target.create_storage_channel("watch")
print("Local KVS reached by the browser at:", target.public_url or target.endpoint_url)

live = asyncio.ensure_future(kvsnb.ingest(target, "watch", seconds=20))
while len(list_fragments(target, stream_arn)) < 4:  # a few seconds stored: a live window
    await asyncio.sleep(0.25)

# %% [markdown]
# ## 1. LIVE
#
# A LIVE session lists the newest fragments and grows as the master sends more. The Player
# keeps close to the live edge: hls.js plays one segment behind the newest (its default is
# three) and dash.js three target durations behind now (a fragment is listed only once it is
# stored), both speeding up a little to catch up. Each Player starts playing by itself
# (muted), whether or not it is scrolled into view.

# %%
live_hls = Player.from_stream(target, stream_arn, protocol="HLS", mode="LIVE")
live_hls

# %%
live_dash = Player.from_stream(target, stream_arn, protocol="DASH", mode="LIVE")
live_dash

# %% [markdown]
# The browser reports what it shows a few times a second, over a socket of the kernel's own
# (the *kernel bridge*), so the kernel hears it even while a cell is running. `on_screen` is
# the producer timestamp of the frame on screen (`None` until a browser has drawn the
# player); `await player.wait_on_screen(after=...)` waits for a frame later than a time. Its
# distance to the clock is the capture → on-screen latency (`bench/bench_player.py` measures
# it from screenshots). When this notebook runs headless (nbval, nbconvert) no browser shows
# the players, and the cell says so.

# %%
for name, player in (("HLS", live_hls), ("DASH", live_dash)):
    if not await player.page_connected(timeout=10):
        print(f"{name}: no browser shows this player (a headless run)")
        continue
    try:
        first = await player.wait_on_screen(timeout=30)
        later = await player.wait_on_screen(after=first + pd.Timedelta(seconds=1), timeout=30)
    except TimeoutError as exc:
        print(f"{name}: {exc}")
        continue
    behind = (kvsnb.playback.parse_time("now") - later).total_seconds()
    print(f"{name}: frame of {later} on screen, {behind:.1f} s behind now")

# %% [markdown]
# ## 2. ON_DEMAND
#
# Once the ingest is over, an ON_DEMAND session plays the stored range (the whole stream
# when no range is given). `pause`, `seek` and `play` act on the video element. The LIVE
# players above now say *live stream stopped*: no new fragment comes, and they have played
# all there was. An ON_DEMAND player that reaches the end says *ended* and keeps its last
# frame's time; press play to watch it again.

# %%
sent = await live
vod_hls = Player.from_stream(target, stream_arn, protocol="HLS", mode="ON_DEMAND")
vod_hls

# %%
vod_dash = Player.from_stream(target, stream_arn, protocol="DASH", mode="ON_DEMAND")
vod_dash

# %%
vod_dash.pause()
vod_dash.seek(5.0)
vod_dash.play()

# %% [markdown]
# ## 3. DASH in the kernel
#
# `DashReader` reads a DASH session as `HlsReader` reads HLS: frames as numpy arrays with
# their timestamps (from the manifest's `kvs:ts`), and a table of the segments read.

# %%
reader = DashReader(dash_session_url(target, stream_arn, mode="ON_DEMAND"))
frames = [f async for f in reader.frames(follow=False)]
stamp = kvsnb.read_stamp(frames[0].to_ndarray())
print(
    f"{len(frames)} frames decoded, {len(sent.frames_sent)} sent;",
    f"first frame {frames[0].to_ndarray().shape}, stamp index {stamp.index}",
)
reader.segments_table().head()

# %% [markdown]
# The players stay on the page, playing, as long as the kernel runs. When you are done,
# `player.close()` removes a player (its views stop) and `target.close()` stops this
# notebook's Local KVS (the players then have nothing left to play): for example,
# `for p in (live_hls, live_dash, vod_hls, vod_dash): p.close()`. Shutting the kernel down
# does both.
