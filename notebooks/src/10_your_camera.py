# mypy: disable-error-code="top-level-await, syntax"
# (cells run by IPython, where top-level await, async with and async for are allowed; real
# syntax errors are still caught by ruff and by build.py, which compiles every cell)
# %% [markdown]
# # 10 · Your camera: the browser as master and viewer of a storage session
#
# The camera you have is the one in front of your browser, not the one of the machine the
# kernel runs on (on Binder or a remote JupyterLab that machine has none). `BrowserSession`
# puts the browser showing this notebook into a channel's storage session:
#
# - as the **master** (`role="MASTER"`): your camera and microphone are sent to the storage
#   session and stored, with a preview of what is sent;
# - as a **viewer** (`role="VIEWER"`): the master's video, live (a fraction of a second
#   behind, where the `Player` of notebook 09 plays what is stored, a fragment or two behind),
#   and your microphone sent up, as AWS lets viewers do.
#
# **Your credentials stay in the kernel.** The kernel makes every AWS call and holds the
# signaling socket, with kvsnb's join and retry rules; the page receives only the storage
# session's offer, its ICE candidates and the TURN servers of `GetIceServerConfig`, over a
# WebSocket of the kernel's own (the *bridge*: it keeps working while a cell runs, so a cell
# may start the session and `await` it).
#
# Two ways for the media (`transport=`): **direct**, the browser's own WebRTC through the TURN
# server (JupyterLab on the machine running Local KVS, or any browser against AWS), and
# **kernel**, the browser hands the encoded media to the kernel over the bridge (Binder, a
# remote JupyterLab). `"auto"` picks one and says which.
#
# Run in JupyterLab, the cells below ask for your camera. Run headless (nbval, nbconvert), no
# browser shows the widgets: the notebook says so and a kvsnb test pattern stands in for your
# camera, so everything after still runs.

# %%
import asyncio

import matplotlib.pyplot as plt

import kvsnb
from kvsnb.client.session import JoinPolicy, MasterSession
from kvsnb.local.storage.peer import StorageOptions
from kvsnb.playback import HlsReader, get_images, hls_session_url, list_fragments
from kvsnb.sources import TestPatternTrack, ToneTrack
from kvsnb.widgets import BrowserSession

target = kvsnb.connect("local", extra={"storage": StorageOptions(fragment_duration_s=1.0)})
channel_arn, stream_arn = target.create_storage_channel("my-camera")
policy = JoinPolicy.local() if target.local is not None else JoinPolicy()

# %% [markdown]
# ## 1. Your camera as master
#
# Pick a camera and a size, then press **Start** or run the next cell. The widget shows what
# is sent, the session's state, the same setup timeline as `MasterSession` (join call, offer,
# answer, ICE, connected, first frame) and the browser's own figures (`getStats`: frames sent,
# bitrate, round-trip time, the candidate pair in use: `relay` ones, through TURN).

# %%
cam = BrowserSession(target, "my-camera", role="MASTER", policy=policy)
cam

# %%
stand_in = None
if await cam.page_connected(5):
    cam.start()
    await cam.wait_connected(120)
    print("your camera is the master:", cam.state, "·", cam.transport_used)
else:
    print("No browser shows this notebook: a kvsnb test pattern stands in for your camera.")
    stand_in = MasterSession(
        target, "my-camera", video=TestPatternTrack(640, 480, 30), audio=ToneTrack(440.0),
        policy=policy,
    )  # fmt: skip
    await stand_in.start(timeout=60)
    print("the stand-in master is", stand_in.state)

# %% [markdown]
# ## 2. Watching it live, as a viewer
#
# A second widget joins the same session as a viewer (`JoinStorageSessionAsViewer`, with its
# own ClientId) and plays the master's video as it arrives. It sends your microphone to the
# session (mute the master's tab, or wear headphones, against an echo).

# %%
viewer = BrowserSession(target, "my-camera", role="VIEWER", policy=policy)
viewer

# %%
if await viewer.page_connected(5):
    viewer.start()
    await viewer.wait_connected(120)
    print("watching live as", viewer.client_id)
else:
    print("No browser shows this notebook: the viewer waits for one.")

# %% [markdown]
# ## 3. What was stored
#
# We let the master send a few seconds (until eight fragments are stored), stop both
# sessions, and read the stream back: HLS frames and GetImages, as in notebook 03.

# %%
while len(list_fragments(target, stream_arn)) < 8:
    await asyncio.sleep(0.5)
await viewer.stop()
await cam.stop()
if stand_in is not None:
    await stand_in.stop()
fragments = list_fragments(target, stream_arn)
print(len(fragments), "fragments stored,", round(fragments["duration_ms"].sum() / 1000, 1), "s")

# %%
url = hls_session_url(target, stream_arn, mode="ON_DEMAND")
frames = [f async for f in HlsReader(url).frames(follow=False)]
images = get_images(
    target,
    stream_arn,
    fragments["producer_time"].min(),
    fragments["producer_time"].max(),
    interval_ms=2000,
    progress=False,
)
print(f"HLS: {len(frames)} frames of {frames[0].frame.width}x{frames[0].frame.height}")
fig, axes = plt.subplots(1, 4, figsize=(12, 2.4))
shown = [f.to_ndarray() for f in frames[:: max(1, len(frames) // 2)][:2]]
shown += [i for i in images["image"] if i is not None][:2]
for ax, picture, title in zip(axes, shown, ["HLS", "HLS", "GetImages", "GetImages"], strict=False):
    ax.imshow(picture)
    ax.set_title(title)
    ax.axis("off")
plt.show()

# %% [markdown]
# ## 4. Ingest latency
#
# Each fragment's producer timestamp is the capture time of its first frame (the sender's
# clock, carried by RTCP sender reports; after the first frame the storage session runs on the
# media clock, so timestamps stay smooth); its server timestamp is when that frame reached the
# storage session. The difference is the capture → storage latency of each fragment: the
# first one carries the connection's start, the others are the network and the jitter
# between the two clocks (on one machine, a few ms either way; against AWS, your uplink).

# %%
latency = fragments.assign(
    ingest_ms=(fragments["server_time"] - fragments["producer_time"]).dt.total_seconds() * 1000
)
fig, ax = plt.subplots(figsize=(9, 3))
ax.bar(range(len(latency)), latency["ingest_ms"], color="#4c72b0")
ax.set_xlabel("fragment")
ax.set_ylabel("capture → storage (ms)")
ax.set_title("ingest latency per fragment")
plt.show()
latency["ingest_ms"].describe()[["count", "50%", "max"]].round(1)

# %% [markdown]
# The master's setup timeline (your browser's, or the stand-in's), step by step:

# %%
master_timeline = cam.timeline if stand_in is None else stand_in.timeline
master_timeline.to_frame()[["step", "t_ms", "delta_ms"]].head(16)

# %%
cam.close()
viewer.close()
target.close()
