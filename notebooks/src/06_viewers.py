# mypy: disable-error-code="top-level-await, syntax"
# (cells run by IPython, where top-level await, async with and async for are allowed; real
# syntax errors are still caught by ruff and by build.py, which compiles every cell)
# %% [markdown]
# # 06 · Viewers: a master, two viewers, and talk-back audio
#
# In a storage session the **storage session itself** is the hub: the master sends its
# video and audio to it; each viewer (`JoinStorageSessionAsViewer`, up to 3) receives the
# master's video and the mixed audio from it, never peer to peer, and may send audio back.
# Everyone hears everyone else's audio (not their own), and the stored stream gets the mix.
#
# Here a master sends the stamped pattern and a 440 Hz tone; **viewer-1** talks back with a
# 1000 Hz tone, **viewer-2** only listens. We measure master → viewer latency from the
# stamps, and check with a spectrum who hears what.

# %%
import asyncio
import time

import matplotlib.pyplot as plt
import numpy as np
import pandas as pd

import kvsnb

MASTER_HZ, VIEWER_HZ, RATE = 440.0, 1000.0, 48_000
target = kvsnb.connect("local")
channel_arn, stream_arn = target.create_storage_channel("viewers")

# %% [markdown]
# ## 1. Join: the master, then two viewers
#
# A `ViewerSession` goes through the same steps as the master (describe, endpoints,
# signaling, then `JoinStorageSessionAsViewer` with its client id). Its `received` keeps
# the frames and audio it gets, with a receive time per frame. The pattern is 320x240 here,
# to keep three peers light on a small machine.
#
# The joins are a second apart: KVS takes at most 2 `JoinStorageSession[AsViewer]` calls
# per second per channel. A third call within the second gets `ClientLimitExceededException`;
# the session would retry it, as the KVS JS SDK does, but only after the SDK's 6 s wait
# for an offer.

# %%
master = kvsnb.MasterSession(
    target,
    "viewers",
    video=kvsnb.TestPatternTrack(320, 240, 30),
    audio=kvsnb.ToneTrack(MASTER_HZ),
)
viewer1 = kvsnb.ViewerSession(
    target, "viewers", client_id="viewer-1", audio=kvsnb.ToneTrack(VIEWER_HZ)
)
viewer2 = kvsnb.ViewerSession(target, "viewers", client_id="viewer-2")

await master.start(timeout=30)
await asyncio.sleep(1)
await viewer1.start(timeout=30)
await asyncio.sleep(1)
await viewer2.start(timeout=30)
# watch until each viewer has received 4 s of video (120 frames), however busy the machine
deadline = time.monotonic() + 60
while min(len(v.received.rows) for v in (viewer1, viewer2)) < 120:
    assert time.monotonic() < deadline, "the viewers did not receive 120 frames in 60 s"
    await asyncio.sleep(0.1)
stats = {
    name: await s.stats()
    for name, s in [("master", master), ("viewer-1", viewer1), ("viewer-2", viewer2)]
}
await viewer1.stop()
await viewer2.stop()
await master.stop()
pd.DataFrame(
    {
        name: {
            "join call → connected (ms)": round(
                1000 * (s.timeline.between("join_call", "dtls_connected") or float("nan")), 1
            ),
            "join calls": s.joins,
            "state now": s.state,
        }
        for name, s in [("master", master), ("viewer-1", viewer1), ("viewer-2", viewer2)]
    }
).T

# %% [markdown]
# What each peer sent and received over RTP (`stats()`, from the peer connection's
# statistics): the master sends video and audio; viewers receive video and audio, and
# viewer-1 also sends audio.

# %%
pd.DataFrame(
    {(name, kind): values for name, kinds in stats.items() for kind, values in kinds.items()}
).T

# %% [markdown]
# ## 2. Master → viewer latency
#
# `received.frames_df()` has one row per frame a viewer received: the receive time, and
# from the stamp the frame index and capture time; `latency_ms` is capture → received at
# the viewer (encode, the storage session's relay, decode), all on this machine's clock.
# On a busy 2-core machine, where the kernel runs all three peers and Local KVS, the tail
# is mostly CPU contention; the median is the figure to look at.

# %%
frames = {
    name: v.received.frames_df() for name, v in [("viewer-1", viewer1), ("viewer-2", viewer2)]
}
pd.DataFrame(
    {
        name: df["latency_ms"].describe(percentiles=[0.5, 0.95]).round(1)
        for name, df in frames.items()
    }
)

# %%
fig, ax = plt.subplots(figsize=(7, 3.2))
for name, df in frames.items():
    ax.hist(df["latency_ms"].dropna(), bins=30, alpha=0.6, label=name)
ax.set_xlabel("capture → received at the viewer (ms)")
ax.set_ylabel("frames")
ax.set_title("master → viewer latency")
ax.legend()
fig.tight_layout()

# %%
# NBVAL_CHECK_OUTPUT
for name, df in frames.items():
    idx = df["frame_index"].dropna().astype(int)
    print(
        f"{name}: received frames > 60: {len(idx) > 60}, stamps read and in order:",
        bool(df["frame_index"].notna().all() and idx.is_monotonic_increasing),
    )

# %% [markdown]
# The latest frame viewer-2 received, as numpy (`received.latest_frame()`):

# %%
plt.figure(figsize=(4, 3))
last_frame = viewer2.received.latest_frame()
assert last_frame is not None
plt.imshow(last_frame)
plt.title(f"viewer-2's last frame: #{int(frames['viewer-2']['frame_index'].iloc[-1])}")
plt.axis("off")
plt.show()

# %% [markdown]
# ## 3. Talk-back: who hears whom
#
# `received.audio()` is the audio a peer received (mono, 48 kHz). Its spectrum shows
# which tones are in it: the master hears viewer-1's 1000 Hz tone; viewer-2 hears both the
# master's 440 Hz and viewer-1's 1000 Hz; viewer-1 hears the master but not itself. (The
# small peaks at 2000 Hz are the tones' time marks, 50 ms every second.)


# %%
def spectrum(samples: np.ndarray, seconds: float = 2.0) -> tuple[np.ndarray, np.ndarray]:
    x = samples[-int(seconds * RATE) :].astype(float)
    mag = np.abs(np.fft.rfft(x * np.hanning(len(x))))
    return np.fft.rfftfreq(len(x), 1 / RATE), 20 * np.log10(mag / mag.max() + 1e-9)


def tone_level(samples: np.ndarray, hz: float) -> float:
    """Spectral peak near hz over the mean spectrum (≫ 1 when the tone is there)."""
    x = samples[-RATE:].astype(float)
    mag = np.abs(np.fft.rfft(x * np.hanning(len(x))))
    freqs = np.fft.rfftfreq(len(x), 1 / RATE)
    return float(mag[(freqs > hz - 15) & (freqs < hz + 15)].max() / (mag.mean() + 1e-9))


heard = {
    "master": master.received.audio(),
    "viewer-1": viewer1.received.audio(),
    "viewer-2": viewer2.received.audio(),
}
fig, axes = plt.subplots(3, 1, figsize=(8, 6.5), sharex=True)
for ax, (name, audio) in zip(axes, heard.items(), strict=False):
    f, db = spectrum(audio)
    ax.plot(f, db, lw=0.8)
    for hz, label in [(MASTER_HZ, "master 440 Hz"), (VIEWER_HZ, "viewer-1 1000 Hz")]:
        ax.axvline(hz, color="grey", ls="--", lw=0.8)
        ax.text(hz + 15, -12, label, fontsize=8)
    ax.set_xlim(0, 2500)
    ax.set_ylim(-100, 5)
    ax.set_ylabel("dB")
    ax.set_title(f"what {name} heard ({len(audio) / RATE:.1f} s of audio)", fontsize=10)
axes[-1].set_xlabel("frequency (Hz)")
fig.tight_layout()

# %%
# NBVAL_CHECK_OUTPUT
levels = pd.DataFrame(
    {
        name: {
            "master's 440 Hz": tone_level(a, MASTER_HZ) > 20,
            "viewer-1's 1000 Hz": tone_level(a, VIEWER_HZ) > 20,
        }
        for name, a in heard.items()
    }
).T
print("who hears which tone:")
print(levels.to_string())

# %% [markdown]
# ## 4. The stored stream has the mix
#
# The storage session records the master's video and the audio mix (viewer audio is
# stored while the master is connected, transcoded to AAC), so the stream holds both tones.

# %%
import io

import av

from kvsnb.playback import get_media, list_fragments

fragments = list_fragments(target, stream_arn)
media = get_media(target, stream_arn, list(fragments["fragment_number"]))
with av.open(io.BytesIO(media), mode="r") as container:
    stream = container.streams.audio[0]
    codec = stream.codec_context.name
    pcm = np.concatenate([f.to_ndarray().mean(axis=0) for f in container.decode(stream)])
stored_audio = pcm * 32767 if np.abs(pcm).max() <= 1.0 else pcm
print(f"stored audio: {codec}, {len(stored_audio) / RATE:.1f} s")
f, db = spectrum(stored_audio)
plt.figure(figsize=(8, 2.4))
plt.plot(f, db, lw=0.8)
plt.xlim(0, 2500)
plt.ylim(-100, 5)
plt.xlabel("frequency (Hz)")
plt.ylabel("dB")
plt.title("stored audio (last 2 s)")
plt.show()

# %%
# NBVAL_CHECK_OUTPUT
print("stored audio has the master's tone:", tone_level(stored_audio, MASTER_HZ) > 10)
print("stored audio has viewer-1's tone:", tone_level(stored_audio, VIEWER_HZ) > 10)

# %% [markdown]
# ## Clean up

# %%
target.close()
