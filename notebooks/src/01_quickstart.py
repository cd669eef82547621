# mypy: disable-error-code="top-level-await, syntax"
# (cells run by IPython, where top-level await, async with and async for are allowed; real
# syntax errors are still caught by ruff and by build.py, which compiles every cell)
# %% [markdown]
# # 01 · Quickstart: ingest into a storage session and read it back
#
# This notebook goes through the whole loop of **KVS WebRTC ingestion and storage** on
# **Local KVS**, the emulator that ships with kvsnb (no AWS account needed):
#
# 1. start Local KVS and make a signaling channel and a stream mapped for media storage;
# 2. join the channel's storage session as the **master** and send a few seconds of the
#    *stamped test pattern* (every frame carries its capture time and frame index);
# 3. look at the **setup timeline** of the session, step by step;
# 4. list the **stored fragments** and decode a **stored frame**, reading its stamp back;
# 5. do the same from a widget, the `SessionPanel`.
#
# Every cell runs top to bottom in a fresh kernel; the notebook is also a test (`pytest
# --nbval-lax`), and the cells marked `# NBVAL_CHECK_OUTPUT` must print the same lines as
# stored here.

# %% [markdown]
# ## 1. Start Local KVS
#
# `kvsnb.connect()` picks the target from the environment (`KVSNB_TARGET=aws` for AWS,
# `KVSNB_ENDPOINT_URL` for a Local KVS running elsewhere) and otherwise starts an **embedded
# Local KVS** on its own thread, on 127.0.0.1 and a free port. The tutorials ask for
# `"local"` so that they always run here; notebook 07 runs the same steps on AWS.

# %%
import asyncio

import matplotlib.pyplot as plt
import pandas as pd

import kvsnb
from kvsnb.playback import decode_video, get_media, list_fragments

target = kvsnb.connect("local")
target

# %% [markdown]
# ## 2. A channel and a stream, mapped for media storage
#
# `create_storage_channel` calls `CreateSignalingChannel`, `CreateStream` and
# `UpdateMediaStorageConfiguration` (it reuses them if they exist). A channel must have
# media storage **ENABLED** before a master can join its storage session.

# %%
channel_arn, stream_arn = target.create_storage_channel("quickstart")
storage = target.kinesisvideo.describe_media_storage_configuration(ChannelARN=channel_arn)
pd.Series(
    {
        "channel ARN": channel_arn,
        "stream ARN": stream_arn,
        "media storage": storage["MediaStorageConfiguration"]["Status"],
    }
).to_frame("value")

# %% [markdown]
# ## 3. Join as master and send the stamped test pattern
#
# `MasterSession` does what the KVS SDKs do: describe the channel, get its endpoints and
# ICE servers, open the signaling WebSocket, call `JoinStorageSession`, answer the storage
# session's SDP offer and connect (ICE, DTLS). Media then flows: H.264 video from the
# `TestPatternTrack`, Opus audio from the `ToneTrack`.
#
# We stop the pattern a moment before leaving, so that every frame it captured has left
# the sender when the peer connection closes (`kvsnb.ingest` does the same for you).

# %%
pattern = kvsnb.TestPatternTrack()  # 640x480, 30 fps, stamped
tone = kvsnb.ToneTrack()  # 440 Hz with a time mark every second
async with kvsnb.MasterSession(target, "quickstart", video=pattern, audio=tone) as master:
    print("connected, state:", master.state)
    await asyncio.sleep(4)
    pattern.stop()
    tone.stop()
    await asyncio.sleep(0.3)
sent = pattern.frames_df()
print(f"frames sent: {len(sent)} ({len(sent) / 30:.1f} s at 30 fps)")

# %% [markdown]
# This is what the master sent: the moving picture, and at the top the **stamp**, a band of
# cells coding the capture time (ms) and the frame index, made to survive H.264 and scaling.

# %%
fig, ax = plt.subplots(figsize=(5, 3.75))
ax.imshow(pattern.render(45, int(sent["capture_ms"].iloc[45])).to_ndarray(format="rgb24"))
ax.set_title("the test pattern, frame 45 (as sent)")
ax.axis("off")
plt.show()

# %% [markdown]
# ## 4. The setup timeline
#
# Every step of the session landed in `master.timeline`, with wall-clock and monotonic
# times: `t_ms` is the time since the first step, `delta_ms` the time since the previous
# one. On Local KVS the whole setup takes a fraction of a second; on AWS the same table
# shows where the time goes (endpoints, TURN, ICE).

# %%
steps = master.timeline.to_frame()
steps[steps["step"] != "pc_state"].drop(columns="time")

# %%
fig, ax = plt.subplots(figsize=(8, 3.2))
shown = steps[steps["step"].isin(kvsnb.client.timeline.STEPS)].drop_duplicates("step")
ax.barh(shown["step"], shown["delta_ms"], left=shown["t_ms"] - shown["delta_ms"])
ax.invert_yaxis()
ax.set_xlabel("ms since the first step")
ax.set_title("setup timeline (each bar: the wait before that step)")
ax.grid(axis="x", alpha=0.3)
fig.tight_layout()
join_to_frame = master.timeline.between("join_call", "first_frame_sent")
assert join_to_frame is not None  # None if either step is missing
print(f"JoinStorageSession call → first frame sent: {join_to_frame * 1000:.0f} ms")

# %% [markdown]
# Check: the master went through every setup step, in the order of the storage-session
# sequence (`kvsnb.client.timeline.STEPS`).

# %%
# NBVAL_CHECK_OUTPUT
from itertools import pairwise

firsts = [master.timeline.first(step) for step in kvsnb.client.timeline.STEPS]
happened = [e for e in firsts if e is not None]
print("every setup step happened:", len(happened) == len(firsts))
print("in order:", all(a.mono <= b.mono for a, b in pairwise(happened)))
print("steps:", " → ".join(kvsnb.client.timeline.STEPS))

# %% [markdown]
# ## 5. Stored fragments
#
# Local KVS recorded the master into Matroska **fragments**, each starting at a keyframe
# (`ListFragments`). Producer time is the sender's clock, server time when the storage
# session received the fragment's first frame.

# %%
fragments = list_fragments(target, stream_arn)
fragments

# %% [markdown]
# ## 6. A stored frame, with its stamp read back
#
# `GetMediaForFragmentList` returns the fragments' bytes; `decode_video` decodes them with
# PyAV. The stamp of each decoded frame tells which frame it is and when it was captured,
# so what was stored can be compared with what was sent, frame by frame.

# %%
media = get_media(target, stream_arn, list(fragments["fragment_number"]))
stored_frames = list(decode_video(media))
stored, unreadable = kvsnb.analysis.stamps_from_frames(stored_frames)
delivery = kvsnb.analysis.compare_delivery(sent, stored, unreadable)
print(f"{len(media) / 1e6:.2f} MB of Matroska, {len(stored_frames)} frames decoded")
print("delivery:", delivery)

# %%
position = int(stored.index[stored["frame_index"] == 45][0])
frame = stored_frames[position]
stamp = kvsnb.read_stamp(frame.to_ndarray())
capture = pd.Timestamp(stamp.capture_ms, unit="ms", tz="UTC")
fig, ax = plt.subplots(figsize=(5, 3.75))
ax.imshow(frame.to_ndarray())
ax.set_title(f"stored frame #{stamp.index}, captured {capture:%H:%M:%S.%f}"[:-3])
ax.axis("off")
plt.show()

# %%
# NBVAL_CHECK_OUTPUT
sent_45 = sent.set_index("frame_index").loc[45]
print("stamp read from the stored frame: index", stamp.index)
print("its capture time is the one the master sent:", stamp.capture_ms == sent_45["capture_ms"])
print("every frame sent was stored, once, in order:", delivery.complete)

# %% [markdown]
# ## 7. The same from a widget: `SessionPanel`
#
# `SessionPanel` joins a storage session from the notebook: choose or create a channel,
# the role (master, or viewer with a client id) and the source, then press **Join**. It
# shows the state, the setup timeline as it happens, the frames and bitrate sent or
# received, and a preview. **Stop** leaves.
#
# The panel gets a Local KVS of its own, with a channel that has storage, so that it stays
# usable after this notebook closes its `target` at the end (`panel.close()` and
# `panel_target.close()` stop it).

# %%
from kvsnb.widgets import SessionPanel

panel_target = kvsnb.connect("local")
panel = SessionPanel(panel_target)
await panel.create_channel("quickstart-panel")  # what the Create button does
panel

# %% [markdown]
# Pressing **Join** runs `panel.join()`; here it is called from code, and **Stop** after
# two seconds of media. Press Join above to do it again.

# %%
await panel.join()
print("state after Join:", panel.state)
await asyncio.sleep(2)
await panel.stop()
print("state after Stop:", panel.state)

# %% [markdown]
# ## Clean up
#
# `target.close()` stops this notebook's embedded Local KVS and removes its temporary data.
# (The panel's own Local KVS keeps running for the widget.)

# %%
target.close()
