"""Packet loss (5 %, 20 %) and 100 ms jitter on the media path between a master and the
storage peer, through a lossy UDP relay on 127.0.0.1 (``lossy_link``). The session must
survive (still connected at the end, ended only by the master's stop), NACK/RTX and PLI
must be seen repairing the stream, and the frame timeline built from the stored media
(``frame_timeline``/``timeline_summary``) shows what was lost: frames are stored, the drop
rate is within a plausible band, and it is never better than a clean run through the same
relay."""

from __future__ import annotations

import asyncio
from collections.abc import Iterator
from dataclasses import dataclass
from typing import Any

import pytest

from kvsnb.analysis import frame_timeline, timeline_summary
from kvsnb.client.session import JoinPolicy
from kvsnb.client.target import Target
from kvsnb.launch import connect
from kvsnb.local import LocalKvs, LocalKvsConfig, SignalingLimits
from kvsnb.local.storage.peer import StorageOptions
from kvsnb.sources import TestPatternTrack, ToneTrack
from tests.conftest import FRAGMENT_S, stored_stamps, wait_until
from tests.reliability.lossy_link import LinkedStorageSession, LinkStats, LossyLink

pytestmark = pytest.mark.timeout(90)

MEDIA_S = 4.0
SEED = 7
POLICY = JoinPolicy.local()


@dataclass
class Run:
    """One ingest through the link, and what the stored media says about it."""

    link: LinkStats
    summary: dict[str, Any]
    recorder: Any  # RecorderStats
    end_reason: str | None
    connected_at_end: bool


@dataclass
class Env:
    kvs: LocalKvs
    target: Target
    runs: dict[str, Run]


@pytest.fixture(scope="module")
def env(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Env]:
    # host candidates only (no TURN): the relay stands where a NAT would, between the two
    # peers' own addresses, and every packet crosses it
    config = LocalKvsConfig(
        data_dir=tmp_path_factory.mktemp("lossy") / "data",
        signaling=SignalingLimits(connects_per_s=100.0),
        ice="host",
        extra={"storage": StorageOptions(fragment_duration_s=FRAGMENT_S)},
    )
    kvs = LocalKvs(config).start_in_thread()
    try:
        with connect(endpoint_url=kvs.url) as tg:
            yield Env(kvs, tg, {})
    finally:
        kvs.stop_in_thread()


async def run(env: Env, name: str, loss: float = 0.0, jitter_ms: float = 0.0) -> Run:
    """Ingest ``MEDIA_S`` of stamped media through a link (cached per name)."""
    if name in env.runs:
        return env.runs[name]
    channel_arn, stream_arn = env.target.create_storage_channel(name)
    link = await LossyLink(loss, jitter_ms, SEED).start()
    pattern, tone = TestPatternTrack(320, 240, 30), ToneTrack()
    session = LinkedStorageSession(
        env.target, name, video=pattern, audio=tone, policy=POLICY, link=link
    )
    try:
        await session.start(timeout=20)
        # MEDIA_S of media sent, counted in frames (a busy machine produces them slowly)
        await wait_until(lambda: len(pattern.sent) >= MEDIA_S * 30, f"{MEDIA_S} s of frames")
        master = env.kvs.sessions.channels[channel_arn].master
        connected = session.state == "connected" and not master.closed and session.joins == 1
        pattern.stop()
        tone.stop()
        # this paces the end, not an assertion: retransmissions and packets the link delays
        # (up to jitter_ms) land before the master hangs up
        await asyncio.sleep(0.5)
    finally:
        pattern.stop()
        tone.stop()
        await session.stop()
        link.close()
    await wait_until(lambda: master.finished, "storage session ended", deadline_s=5)
    fragments, (stamps, unreadable) = stored_stamps(env.target, stream_arn)
    assert stamps is not None, "nothing stored"
    timeline = frame_timeline(pattern.frames_df(), stamps, fragments)
    summary = timeline_summary(timeline)
    summary["unreadable"] = unreadable
    result = Run(link.stats, summary, master.recorder.stats, master.stats.end_reason, connected)
    env.runs[name] = result
    return result


def check_survived(r: Run) -> None:
    assert r.connected_at_end, r
    assert r.end_reason == "peer connection closed", r.end_reason
    assert r.summary["frames_sent"] >= MEDIA_S * 30 * 0.8, r.summary
    assert r.summary["frames_stored"] > 0


async def test_clean_link_loses_nothing(env: Env) -> None:
    clean = await run(env, "clean")
    check_survived(clean)
    assert clean.link.media_forwarded > 300 and clean.link.media_dropped == 0
    assert clean.link.by_pt.get(126, 0) > 100 and clean.link.by_pt.get(111, 0) > 100
    assert clean.summary["drop_rate"] <= 0.01, clean.summary
    assert clean.link.nacks == 0 and clean.link.rtx_packets == 0


@pytest.mark.parametrize("loss", [0.05, 0.20])
async def test_packet_loss(env: Env, loss: float) -> None:
    clean = await run(env, "clean")
    lossy = await run(env, f"loss-{int(loss * 100)}", loss=loss)
    check_survived(lossy)
    link = lossy.link
    dropped_share = link.media_dropped / (link.media_dropped + link.media_forwarded)
    assert abs(dropped_share - loss) < 0.04, dropped_share
    # The receiver asked for repairs and got them: NACKs answered by RTX, PLIs.
    assert link.nacks > 0 and link.rtx_packets > 0, link
    assert link.plis + lossy.recorder.keyframe_requests > 0
    s = lossy.summary
    band = {0.05: (0.0, 0.4), 0.20: (0.0, 0.9)}[loss]
    assert band[0] <= s["drop_rate"] <= band[1], s
    assert s["drop_rate"] >= clean.summary["drop_rate"], (s, clean.summary)
    assert s["gaps"] >= clean.summary["gaps"]
    print(f"loss {loss:.0%}: {link} {s}")


async def test_jitter_100ms(env: Env) -> None:
    clean = await run(env, "clean")
    jittery = await run(env, "jitter-100", jitter_ms=100.0)
    check_survived(jittery)
    assert jittery.link.media_dropped == 0 and jittery.link.max_delay_ms > 80
    s = jittery.summary
    assert 0.0 <= s["drop_rate"] <= 0.6, s
    assert s["drop_rate"] >= clean.summary["drop_rate"], (s, clean.summary)
    print(f"jitter 100 ms: {jittery.link} {s}")
