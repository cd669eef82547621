"""Local KVS killed with SIGKILL while two masters stream into it, then restarted on the same
data directory (``kvsnb local --port 0 --data DIR`` in a child process; the masters are
kvsnb ``MasterSession``s in the test process).

Every fragment ListFragments showed before the kill is listed again with the same metadata,
served by GetMediaForFragmentList, and decodes fully (ffmpeg with ``-xerror``, and PyAV);
no half-written fragment is ever listed (every fragment listed after the restart decodes
fully and starts with a keyframe; temp files of interrupted writes are gone); a master can
ingest again after the restart and its fragment numbers continue upwards. Run with the
storage sessions in the server process and in 2 storage workers (which, left without their
server, store the fragments they hold and exit)."""

from __future__ import annotations

import asyncio
import os
import signal
import subprocess
import sys
import time
from pathlib import Path
from typing import Any

import pytest

from bench.common import process_name, process_tree
from kvsnb.client.ingest import ingest
from kvsnb.client.session import MasterSession
from kvsnb.client.target import Target
from kvsnb.launch import connect
from kvsnb.local.runner import LocalKvsProcess
from kvsnb.local.store.fragments import TEMP_PREFIX
from kvsnb.playback import decode_video, get_media
from kvsnb.sources import TestPatternTrack, ToneTrack
from tests.conftest import FAST, FRAGMENT_S, stored_delivery, wait_until
from tests.reliability.conftest import decode_fully

pytestmark = pytest.mark.timeout(120)

FRAGMENTS_BEFORE_KILL = 2  # listed for each stream before the kill (1 s fragments)
MID_FRAGMENT_S = 0.5  # then this much more: the kill lands mid-fragment
LISTED_WITHIN_S = 60.0
POLL_S = 0.1
CTRL_C_EXIT_S = 20.0  # a liveness bound: an idle stop takes ~2 s, a hung one ~35 s


def listed(target: Target, stream_arn: str) -> dict[str, dict[str, Any]]:
    """ListFragments (every page) through a plain boto3 client: number → fragment."""
    kv = target.kinesisvideo
    endpoint = kv.get_data_endpoint(StreamARN=stream_arn, APIName="LIST_FRAGMENTS")
    am = target.client("kinesis-video-archived-media", endpoint["DataEndpoint"])
    out: dict[str, dict[str, Any]] = {}
    kwargs: dict[str, Any] = {"StreamARN": stream_arn}
    for _ in range(100):
        page = am.list_fragments(**kwargs)
        for f in page["Fragments"]:
            out[f["FragmentNumber"]] = f
        if not page.get("NextToken"):
            break
        kwargs["NextToken"] = page["NextToken"]
    return out


def ffmpeg_decodes(media: bytes) -> str:
    """Decode with ffmpeg, failing on the first error; returns its error output."""
    run = subprocess.run(
        # repeat+: every message in full, never collapsed into "Last message repeated"
        ["ffmpeg", "-nostdin", "-v", "repeat+error", "-xerror", "-i", "pipe:0", "-f", "null", "-"],
        input=media,
        capture_output=True,
        timeout=60,
    )
    text = run.stderr.decode(errors="replace")
    assert run.returncode == 0, text[-500:]
    # ffmpeg's null muxer complains when ms timestamps round onto the same tick of its
    # frame-rate time base: a note about its own output, not a decoding error.
    return "\n".join(ln for ln in text.splitlines() if "non monotonically increasing" not in ln)


def check_fragment(target: Target, stream_arn: str, fragment: dict[str, Any]) -> None:
    """Served, decodes fully, starts with a keyframe, holds about its duration of video."""
    media = get_media(target, stream_arn, [fragment["FragmentNumber"]])
    assert media.count(b"AWS_KINESISVIDEO_FRAGMENT_NUMBER") == 1
    assert not ffmpeg_decodes(media).strip()
    video, audio = decode_fully(media)
    frames = list(decode_video(media))
    assert frames and frames[0].keyframe and video == len(frames)
    # its frames lie within its length (how many a loaded sender produced is not asserted)
    span_ms = (frames[-1].pts_s - frames[0].pts_s) * 1000
    assert span_ms <= fragment["FragmentLengthInMilliseconds"], (span_ms, fragment)
    assert audio > 0


def start_child(data: Path, workers: int) -> LocalKvsProcess:
    """``kvsnb local`` on ``data`` in a child process (1 s fragments, storage sessions in
    ``workers`` processes of its own), so that it can be killed with SIGKILL."""
    return LocalKvsProcess(
        "--fragment-seconds", str(FRAGMENT_S), "--workers", str(workers), data_dir=data
    )


@pytest.mark.parametrize("workers", [0, 2], ids=["in-process", "2-workers"])
async def test_sigkill_while_two_masters_stream(tmp_path: Path, workers: int) -> None:
    data = tmp_path / "data"
    child = start_child(data, workers)
    children = [p for p in process_tree(child.pid) if p != child.pid]
    turn_pids = [p for p in children if process_name(p) == "turnserver"]
    worker_pids = [p for p in children if p not in turn_pids]
    assert len(turn_pids) == 1  # Local KVS's coturn
    assert len(worker_pids) == (workers + 1 if workers else 0)  # and the join worker
    seen: dict[str, dict[str, dict[str, Any]]] = {}
    sessions: list[MasterSession] = []
    sources: list[Any] = []
    try:
        target = connect(endpoint_url=child.url)
        streams = {}
        for name in ("crash-a", "crash-b"):
            _, streams[name] = target.create_storage_channel(name)
            seen[streams[name]] = {}
        for name in streams:
            pattern, tone = TestPatternTrack(320, 240, 30), ToneTrack()
            sources += [pattern, tone]
            session = MasterSession(target, name, video=pattern, audio=tone, policy=FAST)
            await session.start(timeout=20)
            sessions.append(session)

        # Poll ListFragments for both streams until each lists FRAGMENTS_BEFORE_KILL
        # (however long a busy machine takes), then a little more so that the kill lands
        # in the middle of the next fragment.
        deadline = time.monotonic() + LISTED_WITHIN_S
        kill_at: float | None = None
        while kill_at is None or time.monotonic() < kill_at:
            for arn in streams.values():
                seen[arn].update(await asyncio.to_thread(listed, target, arn))
            if kill_at is None and all(len(f) >= FRAGMENTS_BEFORE_KILL for f in seen.values()):
                kill_at = time.monotonic() + MID_FRAGMENT_S
            assert time.monotonic() < deadline, f"not {FRAGMENTS_BEFORE_KILL} fragments each"
            await asyncio.sleep(POLL_S)
        child.kill()  # SIGKILL, mid-fragment, while both masters send
        for s in sources:
            s.stop()
        # stopped while the restarted Local KVS is checked: each stop waits ~30 s for the
        # dead TURN server to answer its deallocation
        stopping = asyncio.gather(*(session.stop() for session in sessions))
        target.close()
    finally:
        child.kill()
    # Storage workers outlive their server only to store what they hold (their peers end
    # when ICE consent expires, 30 s after the media stopped), then exit; its coturn goes
    # with it.
    await wait_until(
        lambda: not any(Path(f"/proc/{p}").exists() for p in worker_pids + turn_pids),
        "storage workers or coturn outlived their server",
        deadline_s=60,
    )

    again = start_child(data, 0)
    try:
        assert not list((data / "fragments").glob(f"*/{TEMP_PREFIX}*")), "temp files left"
        with connect(endpoint_url=again.url) as tg:
            for arn, before in seen.items():
                after = await asyncio.to_thread(listed, tg, arn)
                for number, fragment in before.items():
                    assert number in after, f"fragment {number} listed before the kill is gone"
                    assert after[number] == fragment
                for fragment in after.values():  # listed ones: all whole, also the late ones
                    await asyncio.to_thread(check_fragment, tg, arn, fragment)
            # Ingest resumes on the same data; numbers keep increasing.
            arn = next(iter(seen))
            top = max(int(n) for n in await asyncio.to_thread(listed, tg, arn))
            result = await ingest(tg, "crash-a", seconds=1.2, policy=FAST, width=320, height=240)
            delivery = await stored_delivery(tg, arn, result.frames_sent, within_s=15, after=top)
            assert delivery.complete, delivery  # every frame sent after the restart is stored
            after_restart = await asyncio.to_thread(listed, tg, arn)
            newer = [n for n in after_restart if int(n) > top]
            assert newer, "the new fragments continue the numbering"
            for number in newer:
                await asyncio.to_thread(check_fragment, tg, arn, after_restart[number])
    finally:
        again.stop()
    await stopping
    assert all(session.closed for session in sessions)


async def test_ctrl_c_stops_local_kvs_and_its_children_in_order(tmp_path: Path) -> None:
    # A terminal's Ctrl-C sends SIGINT to the whole foreground process group. Only
    # ``kvsnb local`` may take it: it stores the open fragment and ends its storage workers
    # and coturn itself. When coturn got it too, each storage peer's close waited for the dead
    # relay to answer its deallocation, and Local KVS took ~35 s to exit.
    data = tmp_path / "data"
    child = start_child(data, 1)
    children = [p for p in process_tree(child.pid) if p != child.pid]
    assert len(children) == 3  # coturn, a storage worker and the join worker
    pattern, tone = TestPatternTrack(320, 240, 30), ToneTrack()
    target = connect(endpoint_url=child.url)
    try:
        _, arn = target.create_storage_channel("ctrl-c")
        session = MasterSession(target, "ctrl-c", video=pattern, audio=tone, policy=FAST)
        await session.start(timeout=20)
        await wait_until(
            lambda: len(listed(target, arn)) >= 1, "a fragment listed", deadline_s=LISTED_WITHIN_S
        )
        before = listed(target, arn)
        os.killpg(child.pid, signal.SIGINT)  # the group leader: start_new_session
        try:
            code = await asyncio.to_thread(child.proc.wait, CTRL_C_EXIT_S)
        except subprocess.TimeoutExpired:
            pytest.fail(f"Local KVS still running {CTRL_C_EXIT_S} s after Ctrl-C: {child.output()}")
        pattern.stop()
        tone.stop()
        stopping = asyncio.ensure_future(session.stop())
    finally:
        target.close()
        output = child.output()
        child.kill()
    assert code == 0 and "stopping Local KVS" in output and "Traceback" not in output, output
    await wait_until(
        lambda: not any(Path(f"/proc/{p}").exists() for p in children),
        "coturn or a storage worker outlived Local KVS",
        deadline_s=30,
    )
    again = start_child(data, 0)
    try:
        with connect(endpoint_url=again.url) as tg:
            after = await asyncio.to_thread(listed, tg, arn)
            assert set(before) < set(after), "the fragment open at Ctrl-C was not stored"
            for fragment in after.values():
                await asyncio.to_thread(check_fragment, tg, arn, fragment)
    finally:
        again.stop()
    await stopping


PARENT = """
import sys
from kvsnb.local.runner import LocalKvsProcess
child = LocalKvsProcess("--workers", "1", data_dir=sys.argv[1])
print(child.pid, flush=True)
sys.stdin.read()  # until the test kills this process
"""


async def test_a_local_kvs_process_stops_when_its_parent_is_killed(tmp_path: Path) -> None:
    # LocalKvsProcess's child has a session of its own (a Ctrl-C must not reach it), so
    # nothing ended it when its parent died without stopping it: it is told to watch
    parent = subprocess.Popen(
        [sys.executable, "-c", PARENT, str(tmp_path / "data")],
        stdin=subprocess.PIPE,
        stdout=subprocess.PIPE,
        text=True,
    )
    try:
        assert parent.stdout is not None
        line = await asyncio.to_thread(parent.stdout.readline)
        pid = int(line)
        tree = process_tree(pid)
        assert len(tree) == 4  # Local KVS, coturn, a storage worker and the join worker
        parent.kill()
        parent.wait()
        await wait_until(
            lambda: not any(Path(f"/proc/{p}").exists() for p in tree),
            "Local KVS or one of its children outlived the killed parent",
            deadline_s=30,
        )
    finally:
        parent.kill()
        parent.wait()
    assert (tmp_path / "data").is_dir()  # its data directory is the caller's: kept
