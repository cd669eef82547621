# mypy: disable-error-code="top-level-await, syntax"
# (cells run by IPython, where top-level await, async with and async for are allowed; real
# syntax errors are still caught by ruff and by build.py, which compiles every cell)
# %% [markdown]
# # 07 · Running on AWS
#
# Everything in notebooks 01–06 speaks the real KVS wire protocol (boto3 with SigV4, the
# signaling WebSocket, WebRTC), so the same code runs against **Amazon Kinesis Video
# Streams** by changing one thing: the target. `kvsnb.connect("aws")` (or
# `KVSNB_TARGET=aws` with `kvsnb.connect()`) uses boto3's credential chain and region.
#
# **Before you run it**
#
# - AWS credentials that boto3 finds (environment, `~/.aws`, an instance role) and a region
#   where KVS WebRTC ingestion is available (`AWS_DEFAULT_REGION` or `KVSNB_REGION`).
# - Permissions: `kinesisvideo:*` on the channel and stream this notebook creates
#   (CreateSignalingChannel, CreateStream, UpdateMediaStorageConfiguration,
#   DescribeSignalingChannel, DescribeMediaStorageConfiguration, GetSignalingChannelEndpoint,
#   GetIceServerConfig, ConnectAsMaster, JoinStorageSession, GetDataEndpoint, ListFragments,
#   GetMediaForFragmentList, GetImages, GetHLSStreamingSessionURL, GetHLSMasterPlaylist,
#   GetHLSMediaPlaylist, GetMP4InitFragment, GetMP4MediaFragment, DeleteStream,
#   DeleteSignalingChannel).
# - It **costs money** (a little): about 15 s of ingestion and storage, kept 1 hour, plus
#   the retrieval calls. It creates a channel and a stream named `kvsnb-notebook-…` and
#   deletes both at the end; if a cell fails, delete them yourself (the names are printed).
#
# Under `pytest --nbval-lax` this notebook is **skipped** unless `KVSNB_TARGET=aws` is set
# (see `notebooks/conftest.py`): the test suite needs no AWS account.
#
# On AWS the numbers differ from Local KVS: the setup goes through TURN and the public
# internet, fragments are cut by the service, and media takes seconds, not tenths, to
# become retrievable.

# %%
import uuid

import matplotlib.pyplot as plt

import kvsnb
from kvsnb.analysis import (
    RetrievalProbe,
    fragment_latency,
    frame_latency,
    latency_summary,
    plot_latency_cdf,
    stamps_from_frames,
    stamps_from_images,
)
from kvsnb.playback import HlsReader, get_images, hls_session_url, list_fragments

target = kvsnb.connect("aws")
print(target, "region:", target.region)

# %% [markdown]
# ## 1. A channel and a stream, mapped for media storage

# %%
name = f"kvsnb-notebook-{uuid.uuid4().hex[:8]}"
channel_arn, stream_arn = target.create_storage_channel(name, retention_hours=1)
print("channel:", channel_arn)
print("stream: ", stream_arn)

# %% [markdown]
# ## 2. Ingest 10 s of the stamped test pattern while a probe watches
#
# The same `ingest` and `RetrievalProbe` as on Local KVS. On AWS the probe polls every
# 250 ms (its calls count against the API quotas) and keeps watching 8 s after the ingest.

# %%
source = kvsnb.make_source()
probe = RetrievalProbe(target, stream_arn, interval_s=0.25)
assert source.pattern is not None  # make_source() without a file: the stamped pattern
source.pattern.on_frame = probe.frame_sent
await probe.start()
result = await kvsnb.ingest(target, name, seconds=10, source=source)
record = await probe.stop(8)
sent = result.frames_sent
print(f"sent {len(sent)} frames in {result.seconds:.1f} s; probe errors: {len(record.errors)}")

# %% [markdown]
# ## 3. The setup timeline, on AWS

# %%
steps = result.timeline.to_frame()
steps[steps["step"] != "pc_state"].drop(columns="time")

# %% [markdown]
# ## 4. Stored fragments and ingest latency

# %%
fragments = list_fragments(target, stream_arn)
fragments

# %%
frame_lat = frame_latency(sent, fragments, record)
frag_lat = fragment_latency(fragments, record, sent)
latency_summary(frame_lat, frag_lat)

# %%
fig = plot_latency_cdf(frame_lat)
# %% [markdown]
# ## 5. Read it back: HLS and GetImages

# %%
url = hls_session_url(target, stream_arn, mode="ON_DEMAND")
hls_frames = [f async for f in HlsReader(url).frames(follow=False)]
hls_stamps, unreadable = stamps_from_frames(hls_frames)
delivery = kvsnb.analysis.compare_delivery(sent, hls_stamps, unreadable)
print(f"HLS: {len(hls_frames)} frames; {delivery}")

# %%
start, end = result.sample_range(margin_s=0.5)  # first capture + margin → last
images = stamps_from_images(
    get_images(
        target,
        stream_arn,
        start,
        end,
        interval_ms=2000,
        width=320,
        height=240,
        progress=False,
    )
)
shown = images.dropna(subset=["stamp_index"]).head(5)
fig, axes = plt.subplots(1, 5, figsize=(14, 2.6))
for ax in axes:
    ax.axis("off")
for ax, (_, row) in zip(axes, shown.iterrows(), strict=False):
    ax.imshow(row["image"])
    ax.set_title(f"frame #{row['stamp_index']}", fontsize=9)
fig.tight_layout()
images.drop(columns="image")

# %%
# NBVAL_CHECK_OUTPUT
print("fragments stored:", len(fragments) > 0)
print(
    "HLS frames carry stamps of frames sent:",
    bool(len(hls_stamps)) and bool(hls_stamps["frame_index"].isin(sent["frame_index"]).all()),
)
print("GetImages returned stamped images:", bool(images["stamp_index"].notna().any()))

# %% [markdown]
# ## Clean up
#
# Unmap the stream, then delete the stream and the channel (a stream mapped for media
# storage cannot be deleted), and close the target.

# %%
kv = target.kinesisvideo
kv.update_media_storage_configuration(
    ChannelARN=channel_arn,
    MediaStorageConfiguration={"StreamARN": stream_arn, "Status": "DISABLED"},
)
kv.delete_stream(StreamARN=stream_arn)
kv.delete_signaling_channel(ChannelARN=channel_arn)
print("deleted", name)
target.close()
