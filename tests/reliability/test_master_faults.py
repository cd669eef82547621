"""A master that goes away mid-fragment: one that stops (DTLS and WebSocket closed as a
client does) and one whose network vanishes (a ``kvsnb ingest`` child process killed with
SIGKILL: no DTLS close, no WebSocket close frame, media just stops). Either way every frame
that reached the storage peer's recorder is stored (the partial fragment is closed and
stored, docs/design.md, principle 4), and the storage session is cleaned up (the master idle timeout
is shortened for the vanished one)."""

from __future__ import annotations

import asyncio
import os
import signal
import subprocess
import sys
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest

from kvsnb.client.session import JoinPolicy, MasterSession
from kvsnb.client.target import Target
from kvsnb.local import LocalKvs
from kvsnb.sources import TestPatternTrack, ToneTrack
from tests.conftest import start_kvs, stored_stamps, wait_until

pytestmark = pytest.mark.timeout(90)

FRAGMENT_S = 2.0
IDLE_S = 1.0  # master idle timeout: a master silent this long is ended
CLEANUP_S = 10.0  # the session must be gone well within this
POLICY = JoinPolicy.local()


@pytest.fixture
def kvs(tmp_path: Path) -> Iterator[LocalKvs]:
    server = start_kvs(
        tmp_path / "data", fragment_duration_s=FRAGMENT_S, master_idle_timeout_s=IDLE_S
    )
    yield server
    server.stop_in_thread()


def current_master(kvs: LocalKvs, channel_arn: str) -> Any:
    """The channel's storage session with its master, if any."""
    st = kvs.sessions.channels.get(channel_arn)
    return None if st is None else st.master


async def ended_session(kvs: LocalKvs, channel_arn: str) -> Any:
    """Wait for the channel's master storage session to end and release all; returns it."""

    def finished() -> bool:
        master = current_master(kvs, channel_arn)
        return master is not None and master.finished

    await wait_until(finished, "the storage session was cleaned up", deadline_s=CLEANUP_S)
    return current_master(kvs, channel_arn)


def check_everything_received_is_stored(target: Target, stream_arn: str, master: Any) -> Any:
    """Frames the storage peer received = frames the recorder took = frames stored = frames
    decoded from GetMediaForFragmentList; returns the fragments table."""
    recorder = master.recorder
    assert recorder is not None
    stats = recorder.stats
    assert master.stats.video_frames > 30
    assert stats.frames_in == master.stats.video_frames, (stats, master.stats)
    assert stats.errors == 0, stats
    assert stats.frames_stored == stats.frames_in - stats.dropped_before_keyframe, stats
    assert stats.dropped_before_keyframe <= 2, stats
    fragments, (stamps, unreadable) = stored_stamps(target, stream_arn)
    assert len(stamps) + unreadable == stats.frames_stored, (len(stamps), unreadable, stats)
    assert unreadable == 0
    # Stored frames are contiguous: nothing lost between the first and the last one.
    indexes = sorted(stamps["frame_index"])
    assert indexes == list(range(indexes[0], indexes[0] + len(indexes))), "a hole"
    assert len(fragments) == stats.fragments
    return fragments


def check_cleaned_up(kvs: LocalKvs, channel_arn: str, master: Any) -> None:
    assert master.pc.connectionState == "closed"
    assert master.running_tasks == 0, master.running_tasks
    assert master.recorder.closed


async def test_master_stops_mid_fragment(target: Target, kvs: LocalKvs) -> None:
    channel_arn, stream_arn = target.create_storage_channel("stops")
    pattern = TestPatternTrack(320, 240, 30)
    session = MasterSession(target, "stops", video=pattern, audio=ToneTrack(), policy=POLICY)
    await session.start(timeout=15)
    # paces the sender, not an assertion: 1.25 fragments of media (fragments are cut by
    # media time, so the length of what is sent is set in time)
    await asyncio.sleep(2.5)
    await session.stop()  # sources still running: frames in flight are cut off
    pattern.stop()
    master = await ended_session(kvs, channel_arn)
    assert master.stats.end_reason in ("peer connection closed", "idle timeout"), master.stats
    fragments = check_everything_received_is_stored(target, stream_arn, master)
    assert len(fragments) == 2
    # the first fragment is whole, the last one is the partial one
    assert abs(fragments["duration_ms"].iloc[0] - FRAGMENT_S * 1000) < 150
    assert fragments["duration_ms"].iloc[-1] < FRAGMENT_S * 1000 * 0.8
    check_cleaned_up(kvs, channel_arn, master)


async def test_master_network_vanishes(target: Target, kvs: LocalKvs) -> None:
    """``kvsnb ingest`` in a child process, SIGKILLed mid-fragment."""
    channel_arn, stream_arn = target.create_storage_channel("vanishes")
    child = subprocess.Popen(
        [
            sys.executable,
            "-m",
            "kvsnb.cli",
            "ingest",
            "--endpoint-url",
            kvs.url,
            "--channel",
            "vanishes",
            "--seconds",
            "60",
        ],
        stdout=subprocess.DEVNULL,
        stderr=subprocess.DEVNULL,
        start_new_session=True,
    )
    try:

        def media_flowing() -> bool:  # ~2.5 s (75 frames at 30 fps), then kill
            assert child.poll() is None, "the ingest child ended early"
            master = current_master(kvs, channel_arn)
            return master is not None and master.stats.video_frames >= 75

        await wait_until(media_flowing, "the child's media arrived", deadline_s=40)
        os.kill(child.pid, signal.SIGKILL)
        killed = time.monotonic()
        child.wait(10)
    finally:
        if child.poll() is None:
            child.kill()
            child.wait(10)
    master = await ended_session(kvs, channel_arn)
    took = time.monotonic() - killed
    assert master.stats.end_reason == "idle timeout", master.stats
    assert took < IDLE_S + 2.0, took
    fragments = check_everything_received_is_stored(target, stream_arn, master)
    assert fragments["duration_ms"].iloc[-1] < FRAGMENT_S * 1000
    check_cleaned_up(kvs, channel_arn, master)
    # the signaling socket of the dead master is gone too
    relay = kvs.relay
    assert relay is not None
    await wait_until(
        lambda: relay.master(channel_arn) is None,
        "the dead master's socket is unregistered",
        deadline_s=3,
    )
