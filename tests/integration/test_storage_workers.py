"""Storage sessions in worker processes (``LocalKvsConfig.storage_workers``): the same
storage sessions, spread over 2 child processes of a real Local KVS; masters and viewers
(kvsnb, aiortc) join them through boto3 and the signaling socket as always."""

from __future__ import annotations

import asyncio
import os
import signal
from collections.abc import Iterator
from pathlib import Path

import pytest

from kvsnb.client.ingest import ingest
from kvsnb.client.session import JoinPolicy, MasterSession, ViewerSession
from kvsnb.client.target import Target
from kvsnb.local import LocalKvs
from kvsnb.local.storage.workers import MAX_NICE, MEDIA_NICE, StorageWorkerPool
from kvsnb.playback import list_fragments
from kvsnb.sources import TestPatternTrack, ToneTrack
from tests.conftest import (
    FAST,
    ingest_frames,
    start_kvs,
    stored_delivery,
    stored_stamps,
    wait_until,
)
from tests.integration.test_storage_session import send_wrong_master_answer
from tests.integration.test_viewers import check_fourth_viewer_refused

POLICY = JoinPolicy.local()


@pytest.fixture
def kvs(tmp_path: Path) -> Iterator[LocalKvs]:
    server = start_kvs(tmp_path / "data", storage_workers=2)
    yield server
    server.stop_in_thread()


def streaming_master(
    target: Target, channel: str, video: TestPatternTrack | None = None
) -> MasterSession:
    """A master that sends the stamped test pattern (320x240) and a tone."""
    return MasterSession(
        target,
        channel,
        video=video or TestPatternTrack(320, 240, 30),
        audio=ToneTrack(),
        policy=POLICY,
    )


def pool(kvs: LocalKvs) -> StorageWorkerPool:
    assert isinstance(kvs.sessions, StorageWorkerPool)
    return kvs.sessions


async def test_masters_spread_over_workers_and_every_frame_is_stored(
    target: Target, kvs: LocalKvs
) -> None:
    streams = {name: target.create_storage_channel(name) for name in ("w1", "w2", "w3", "w4")}
    # each master sends 75 frames (2.5 s at 30 fps on an idle machine; longer on a busy one)
    results = await asyncio.gather(*(ingest_frames(target, name, 75) for name in streams))
    channels = {arn for arn, _ in streams.values()}
    await wait_until(lambda: set(pool(kvs).placement()) == channels, "all four channels placed")
    placement = pool(kvs).placement()
    assert set(placement.values()) <= set(pool(kvs).pids())
    assert len(set(placement.values())) >= 2  # spread, not all on one loop
    assert pool(kvs).join_worker in placement.values()  # the first join, on an idle pool
    assert os.getpid() not in pool(kvs).pids()
    for (name, (_, stream_arn)), result in zip(streams.items(), results, strict=True):
        delivery = await stored_delivery(target, stream_arn, result.frames_sent)
        assert list(result.frames_sent["frame_index"]) == list(range(75)), name
        assert delivery.complete, f"{name}: {delivery}"


def test_media_workers_run_nicer_than_the_join_worker(kvs: LocalKvs) -> None:
    # a join's offer, ICE and DTLS in the join worker get the CPU before the media of the
    # sessions in the other workers when the machine is full
    check_priorities(kvs)


def check_priorities(kvs: LocalKvs) -> None:
    """The join worker runs at the server's priority, the others ``MEDIA_NICE`` nicer."""
    server = os.getpriority(os.PRIO_PROCESS, 0)
    *media, joiner = pool(kvs).pids()
    assert joiner == pool(kvs).join_worker and len(media) == 2
    assert os.getpriority(os.PRIO_PROCESS, joiner) == server
    for pid in media:
        assert os.getpriority(os.PRIO_PROCESS, pid) == min(MAX_NICE, server + MEDIA_NICE)


async def test_server_store_announces_fragments_stored_by_workers(
    target: Target, kvs: LocalKvs
) -> None:
    _, stream_arn = target.create_storage_channel("announce")
    waiting = asyncio.wrap_future(
        asyncio.run_coroutine_threadsafe(
            kvs.store.wait_for_fragment(stream_arn, timeout=20), kvs.loop
        )
    )
    session = streaming_master(target, "announce")
    await session.start(timeout=15)
    try:
        fragment = await asyncio.wait_for(waiting, 20)
        assert fragment.stream_arn == stream_arn
        assert fragment.frame_count > 0
    finally:
        await session.stop()


async def test_viewers_in_a_worker_get_media_and_the_viewer_limit_holds(
    target: Target, kvs: LocalKvs
) -> None:
    channel_arn, _ = target.create_storage_channel("wview")
    master = streaming_master(target, "wview")
    viewers = [ViewerSession(target, "wview", client_id=f"v{i}", policy=POLICY) for i in range(3)]
    await master.start(timeout=15)
    for v in viewers:
        await v.start(timeout=15)
    try:
        for v in viewers:
            await wait_until(
                lambda v=v: len(v.received.frames_df().dropna()) > 20,  # type: ignore[misc]
                f"{v.client_id} receives the master's stamped frames",
            )
        # the worker's ClientLimitExceededException reaches boto3 as AWS sends it
        await check_fourth_viewer_refused(target, "wview", channel_arn)
    finally:
        for v in viewers:
            await v.stop()
        await master.stop()


async def test_wrong_answer_in_a_worker_gets_status_response(target: Target) -> None:
    channel_arn, _ = target.create_storage_channel("wwrong")
    status = await send_wrong_master_answer(target, channel_arn)
    assert status.error_type == "InvalidArgumentException"
    assert status.status_code == "400"
    assert "video must be sendonly" in (status.description or "")


async def test_a_killed_worker_leaves_the_other_sessions_and_the_store_intact(
    target: Target, kvs: LocalKvs
) -> None:
    names = ("k1", "k2")
    streams = {name: target.create_storage_channel(name) for name in names}
    tracks = {name: TestPatternTrack(320, 240, 30) for name in names}
    sessions = {name: streaming_master(target, name, tracks[name]) for name in names}
    for s in sessions.values():
        await s.start(timeout=15)
    await wait_until(
        lambda: len(list_fragments(target, streams["k1"][1])) > 0,
        "a fragment of k1 is listed",
        every_s=0.2,
    )
    placement = pool(kvs).placement()
    victim_arn, survivor_arn = (streams[n][0] for n in names)
    victim_pid = placement[victim_arn]
    assert placement[survivor_arn] != victim_pid
    listed_before = set(list_fragments(target, streams["k1"][1])["fragment_number"])
    assert listed_before

    os.kill(victim_pid, signal.SIGKILL)
    await sessions["k1"].stop()
    await wait_until(
        lambda: victim_pid not in pool(kvs).pids(), "the dead worker is replaced", deadline_s=20
    )
    check_priorities(kvs)  # the replacement too

    # The survivor streams on (45 more frames): every frame it sent is stored.
    # The pattern ends once the sender asks for a frame past the last: all have left it.
    tracks["k2"].max_frames = len(tracks["k2"].sent) + 45
    await wait_until(lambda: tracks["k2"].readyState == "ended", "k2 streams 45 more frames")
    await sessions["k2"].stop()
    sent = tracks["k2"].frames_df()
    delivery = await stored_delivery(target, streams["k2"][1], sent)
    assert delivery.complete, str(delivery)

    # Everything the dead worker had listed is still listed and decodes.
    fragments, (stamps, unreadable) = stored_stamps(target, streams["k1"][1])
    assert listed_before <= set(fragments["fragment_number"])
    assert unreadable == 0 and stamps is not None and len(stamps) > 0

    # A new join of the lost channel gets a session in a live worker and stores media.
    again = await ingest(target, "k1", seconds=1.5, policy=FAST)
    assert pool(kvs).placement()[victim_arn] in pool(kvs).pids()
    delivery = await stored_delivery(target, streams["k1"][1], again.frames_sent)
    assert delivery.missing == [], str(delivery)


async def test_storage_disabled_ends_the_session_in_its_worker(
    target: Target, kvs: LocalKvs
) -> None:
    channel_arn, stream_arn = target.create_storage_channel("wdisable")
    session = streaming_master(target, "wdisable")
    await session.start(timeout=15)
    try:
        await wait_until(
            lambda: len(list_fragments(target, stream_arn)) > 0, "a fragment is listed", every_s=0.2
        )
        target.kinesisvideo.update_media_storage_configuration(
            ChannelARN=channel_arn, MediaStorageConfiguration={"Status": "DISABLED"}
        )
        await wait_until(
            lambda: any(
                e.step == "pc_state" and e.detail.get("state") in ("failed", "closed")
                for e in session.timeline.events
            ),
            "the session ends with its storage",
            deadline_s=15,
        )
        # what was received before is stored (the partial fragment too) and decodes
        _, (stamps, unreadable) = stored_stamps(target, stream_arn)
        assert stamps is not None and len(stamps) > 0 and unreadable == 0
        indexes = sorted(int(i) for i in stamps["frame_index"])
        assert indexes == list(range(indexes[0], indexes[-1] + 1))  # no hole
    finally:
        await session.stop()


async def test_new_channels_go_to_the_worker_the_load_rule_picks(
    target: Target, kvs: LocalKvs
) -> None:
    # 2 workers and the join worker. The join worker takes a new channel when nothing sets
    # up anywhere and it runs at most half the live sessions of the least loaded other
    # worker; else the other with the fewest live sessions (ended ones don't count).
    workers = pool(kvs)
    first, second, joiner = workers.pids()
    assert workers.join_worker == joiner
    names = ("p1", "p2", "p3", "p4", "p5")
    arns = {name: target.create_storage_channel(name)[0] for name in names}
    sessions: dict[str, MasterSession] = {}

    async def settled(loads: dict[int, tuple[int, int]], what: str) -> None:
        await wait_until(lambda: workers.loads() == loads, what, deadline_s=20)

    async def join(name: str, expected: int) -> None:
        assert workers.next_worker() == expected, name
        sessions[name] = streaming_master(target, name)
        await sessions[name].start(timeout=15)
        assert workers.placement()[arns[name]] == expected, name

    async def leave(name: str) -> None:
        await sessions.pop(name).stop()

    try:
        await join("p1", joiner)  # an idle pool: the join worker
        await settled({first: (0, 0), second: (0, 0), joiner: (1, 0)}, "p1 connected")
        await join("p2", first)  # 1 > half of 0
        await settled({first: (1, 0), second: (0, 0), joiner: (1, 0)}, "p2 connected")
        await join("p3", second)
        await settled({first: (1, 0), second: (1, 0), joiner: (1, 0)}, "p3 connected")
        await join("p4", first)  # 1 > half of 1; the others tie: the lowest index
        await settled({first: (2, 0), second: (1, 0), joiner: (1, 0)}, "p4 connected")
        for name in ("p2", "p4"):
            await leave(name)
        await settled({first: (0, 0), second: (1, 0), joiner: (1, 0)}, "p2 and p4 ended")
        # the first worker was given two channels, the second one; it now runs none
        assert workers.next_worker() == first
        await leave("p1")
        await settled({first: (0, 0), second: (1, 0), joiner: (0, 0)}, "p1 ended")
        await join("p5", joiner)  # 0 ≤ half of 0
    finally:
        for session in sessions.values():
            await session.stop()
