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

import kvsnb
from kvsnb.local.storage.peer import StorageOptions
from kvsnb.playback import DashReader, dash_session_url, list_fragments
from kvsnb.widgets import Player

target = kvsnb.connect("local", extra={"storage": StorageOptions(fragment_duration_s=1.0)})
channel_arn, stream_arn = target.create_storage_channel("watch")
print("Local KVS reached by the browser at:", target.public_url or target.endpoint_url)

live = asyncio.ensure_future(kvsnb.ingest(target, "watch", seconds=15))
while list_fragments(target, stream_arn).empty:  # the first fragment is stored
    await asyncio.sleep(0.25)

# %% [markdown]
# ## 1. LIVE
#
# A LIVE session lists the newest fragments and grows as the master sends more. The Player
# keeps close to the live edge: hls.js plays one segment behind the newest (its default is
# three) and dash.js aims at two target durations, both speeding up a little to catch up.

# %%
live_hls = Player.from_stream(target, stream_arn, protocol="HLS", mode="LIVE")
live_hls

# %%
live_dash = Player.from_stream(target, stream_arn, protocol="DASH", mode="LIVE")
live_dash

# %% [markdown]
# The browser reports what it shows a few times a second. `on_screen` is the producer
# timestamp of the frame on screen (`None` until a browser has drawn the player: when this
# notebook runs headless, nothing is shown). Its distance to the clock is the
# capture → on-screen latency (`bench/bench_player.py` measures it from screenshots).

# %%
await asyncio.sleep(3)
for name, player in (("HLS", live_hls), ("DASH", live_dash)):
    shown = player.on_screen
    if shown is None:
        print(f"{name}: no browser has shown this player yet")
    else:
        behind = (kvsnb.playback.parse_time("now") - shown).total_seconds()
        print(f"{name}: frame of {shown} on screen, {behind:.1f} s behind now")

# %% [markdown]
# ## 2. ON_DEMAND
#
# Once the ingest is over, an ON_DEMAND session plays the stored range (the whole stream
# when no range is given). `pause`, `seek` and `play` act on the video element.

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

# %%
for player in (live_hls, live_dash, vod_hls, vod_dash):
    player.close()
target.close()
