# mypy: disable-error-code="top-level-await, syntax"
# (cells run by IPython, where top-level await, async with and async for are allowed; real
# syntax errors are still caught by ruff and by build.py, which compiles every cell)
# %% [markdown]
# # 02 · Track testing: will this source ingest?
#
# A KVS storage session takes **H.264 video** (Constrained Baseline, as its SDP offer says)
# and **Opus audio**, within an ingest quota of 1 Mbps. Before sending a source, kvsnb can
# check it against these rules (`check_tracks`), and then test it for real: ingest a few
# seconds and verify, through `GetImages`, that the frames arrived.
#
# 1. **Preflight** on media files made with `make_test_file`: a good one, and four that
#    break a rule (High profile, VP8, no audio, too high a bitrate). Each rule says ✓ or ✗,
#    the value found, what is expected and why.
# 2. **End-to-end test** of the stamped test pattern on Local KVS: ingest 4 s, sample
#    GetImages once a second and read the stamps back, plus the latency of each step.
# 3. The same from a widget: `TrackTester`.

# %%
import tempfile
from pathlib import Path

import pandas as pd
from IPython.display import display

import kvsnb
from kvsnb.analysis import (
    RetrievalProbe,
    fragment_latency,
    frame_latency,
    latency_summary,
    plot_latency_cdf,
    stamps_from_images,
)
from kvsnb.playback import get_images, list_fragments
from kvsnb.sources import make_test_file

workdir = Path(tempfile.mkdtemp(prefix="kvsnb-02-"))

# %% [markdown]
# ## 1. Preflight: good and bad sources
#
# `make_test_file` writes a real media file with PyAV: the stamped test pattern and a tone,
# 2 s at 640x480 and 30 fps. We make five, each a classic reason for a source to be refused
# or transcoded. A fixed `start_ms` makes the files (and so the checks) the same on every run.

# %%
START_MS = 1_700_000_000_000  # the stamps' clock: 2023-11-14T22:13:20Z
files = {
    "good (Constrained Baseline + AAC)": make_test_file(workdir / "good.mp4", start_ms=START_MS),
    "High profile": make_test_file(workdir / "high.mp4", profile="high", start_ms=START_MS),
    "VP8": make_test_file(workdir / "vp8.webm", codec="vp8", start_ms=START_MS),
    "no audio": make_test_file(workdir / "noaudio.mp4", audio=False, start_ms=START_MS),
    "3 Mbps": make_test_file(workdir / "fat.mp4", bitrate=3_000_000, start_ms=START_MS),
}
reports = {label: kvsnb.check_tracks(path) for label, path in files.items()}
pd.DataFrame(
    {
        "file": [p.name for p in files.values()],
        "size (kB)": [round(p.stat().st_size / 1000) for p in files.values()],
        "ok": [r.ok for r in reports.values()],
        "failed rules": [", ".join(f.rule for f in r.failures) or "–" for r in reports.values()],
    },
    index=list(files),
)

# %% [markdown]
# Each report shows as a checklist: ✓ passed, ✗ failed (a required rule), ! failed (an
# advisory rule, a warning only). The reason says what the storage session expects and what
# kvsnb's `FileSource` would do about it (for instance, decode High-profile H.264 and let
# aiortc re-encode it as Constrained Baseline).

# %%
for report in reports.values():
    display(report)

# %% [markdown]
# All rules against all five files at a glance (✓ passed, ✗ failed, – not applied: a VP8
# file has no H.264 profile, a file without audio no audio codec):


# %%
# NBVAL_CHECK_OUTPUT
def mark(report: kvsnb.TrackReport, rule: str) -> str:
    try:
        r = report.rule(rule)
    except KeyError:
        return "–"
    return "✓" if r.passed else ("✗" if r.required else "!")


rules = [r.rule for r in reports["good (Constrained Baseline + AAC)"].rules]
matrix = pd.DataFrame(
    {label.split(" (")[0]: [mark(rep, rule) for rule in rules] for label, rep in reports.items()},
    index=rules,
)
print(matrix.to_string())
print()
print("ok:", {label.split(" (")[0]: rep.ok for label, rep in reports.items()})

# %% [markdown]
# The stamped test pattern itself, as a kvsnb master sends it (encoded for 2 s with aiortc's
# H.264 settings, video capped at 850 kbps so that it stays under the quota with Opus):

# %%
pattern_report = kvsnb.check_tracks("testpattern")
pattern_report

# %% [markdown]
# ## 2. End-to-end: ingest, then verify through GetImages
#
# A rule check cannot prove that media arrives. The end-to-end test does: a master ingests
# the source for a few seconds into a channel's storage session while a `RetrievalProbe`
# watches the stream (when each fragment is listed, appears in a LIVE HLS playlist, and
# becomes retrievable by GetImages). Then `GetImages` samples what was sent once a second,
# and the stamps read from the images say which frames those are.

# %%
target = kvsnb.connect("local")
channel_arn, stream_arn = target.create_storage_channel("track-test")

source = kvsnb.make_source("testpattern")  # pattern + tone
probe = RetrievalProbe(target, stream_arn)
assert source.pattern is not None  # make_source() without a file: the stamped pattern
source.pattern.on_frame = probe.frame_sent
await probe.start()
result = await kvsnb.ingest(target, "track-test", seconds=4, source=source)
record = await probe.stop(2.5)  # keep watching for the last fragment
sent = result.frames_sent
print(f"sent {len(sent)} frames in {result.seconds:.1f} s ({result.source})")

# %%
start, end = result.sample_range(margin_s=0.5)  # first capture + margin → last
images = stamps_from_images(
    get_images(
        target,
        stream_arn,
        start,
        end,
        interval_ms=1000,
        progress=False,
    )
)
images.drop(columns="image")

# %% [markdown]
# Each sampled time gives the image of the frame stored at (or just before) it, by producer
# timestamp: its stamp says which frame was sent then. `stamp_offset_ms` is how far that
# frame's capture time is from the sampled time: about a frame interval (33 ms at 30 fps)
# when capture is steady, since the producer timestamp (from the RTP clock) runs a few ms
# after the capture time. It grows when the kernel was busy while the pattern captured
# frames (the capture clock lags the RTP clock for a moment), so it is a rough look at
# capture jitter; notebook 05 measures that properly.
#
# The samples start half a second in: exactly at the first frame's capture time, the
# stream has no media yet (its first producer timestamp is a few ms later), and GetImages
# would answer `NO_MEDIA` for that sample.

# %%
# NBVAL_CHECK_OUTPUT
stamped = images["stamp_index"].dropna().astype(int)
print("every sampled image has media:", bool(images["error"].isna().all()))
print(
    "every image carries the stamp of a frame that was sent:",
    bool(len(stamped) == len(images) and stamped.isin(sent["frame_index"]).all()),
)
print("stamps in increasing order:", bool(stamped.is_monotonic_increasing))

# %% [markdown]
# ### Latency of each step
#
# From the probe's record: capture → listed by ListFragments, → in the LIVE HLS playlist,
# → retrievable by GetImages, and the same measured from the end of each fragment (a frame
# waits for its fragment to fill: up to its duration, 2 s on Local KVS). Notebook 04 looks
# at these numbers in depth.

# %%
fragments = list_fragments(target, stream_arn)
frame_lat = frame_latency(sent, fragments, record)
frag_lat = fragment_latency(fragments, record, sent)
latency_summary(frame_lat, frag_lat)

# %%
fig = plot_latency_cdf(frame_lat)
# %% [markdown]
# ## 3. The same from a widget: `TrackTester`
#
# `TrackTester` runs both tests for a source: **Check** shows the checklist, **End-to-end
# test** ingests for the chosen seconds, verifies through GetImages and shows the latency.
# Type a file path (or `testpattern`) in *source*. The checklist below was filled from code
# (`await tester.check()`, what the Check button does); the end-to-end test starts its own
# Local KVS when you press the button.

# %%
from kvsnb.widgets import TrackTester

tester = TrackTester("testpattern", seconds=4)
await tester.check()
tester

# %%
# NBVAL_CHECK_OUTPUT
print("TrackTester checklist ok:", tester.ok)

# %% [markdown]
# ## Clean up

# %%
import shutil

target.close()
shutil.rmtree(workdir)
