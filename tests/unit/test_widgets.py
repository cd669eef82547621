"""The widgets without a browser and without a server: ipywidgets' dummy comm records the
messages each widget would send to the front end. The widgets driving a real Local KVS are in
tests/integration/test_widgets.py."""

from __future__ import annotations

import asyncio
import datetime as dt
from collections.abc import Iterator
from pathlib import Path

import pytest

from kvsnb.client.session import JoinPolicy
from kvsnb.playback import image_windows as windows
from kvsnb.playback import parse_time as parse_when
from kvsnb.sources import make_test_file
from kvsnb.widgets import (
    TrackTester,
)
from kvsnb.widgets._common import describe_error
from tests.widget_support import recording_comm, settled, states

FAST = JoinPolicy.local(offer_wait_s=0.5)
JPEG = b"\xff\xd8"
PNG = b"\x89PNG"


@pytest.fixture(scope="module", autouse=True)
def _recording_comm() -> Iterator[None]:
    """Swap in ipywidgets' recording dummy comm for this module."""
    yield from recording_comm()


def test_parse_when_accepts_relative_iso_and_now() -> None:
    now = dt.datetime(2025, 1, 31, 12, 0, tzinfo=dt.UTC)
    assert parse_when("now", now) == now
    assert parse_when("last 30 s", now) == now - dt.timedelta(seconds=30)
    assert parse_when("5 min ago", now) == now - dt.timedelta(minutes=5)
    assert parse_when("-2h", now) == now - dt.timedelta(hours=2)
    assert parse_when("2025-01-31T11:00:00Z", now) == now - dt.timedelta(hours=1)
    assert parse_when("2025-01-31T11:00:00", now).tzinfo is not None
    with pytest.raises(ValueError, match="cannot read the time 'yesterday'"):
        parse_when("yesterday", now)


def test_windows_cut_ranges_like_get_images() -> None:
    start = dt.datetime(2025, 1, 1, tzinfo=dt.UTC)
    parts = windows(start, start + dt.timedelta(seconds=700), 1000)
    assert [(a - start).total_seconds() for a, _ in parts] == [0, 300, 600]
    assert (parts[0][1] - start).total_seconds() == 299
    assert parts[-1][1] == start + dt.timedelta(seconds=700)
    assert sum(int((b - a).total_seconds()) + 1 for a, b in parts) == 701


# ---------------------------------------------------------------------- SessionPanel


async def test_track_tester_checklist(tmp_path: Path) -> None:
    high = make_test_file(tmp_path / "high.mp4", seconds=1, profile="high")
    tester = TrackTester.from_file(high)
    tester.check_button.click()
    await settled(tester.task)
    assert tester.ok is False
    row = tester.checklist.value.split("<td>h264_profile</td>")[0].rsplit("<tr", 1)[1]
    assert 'class="rule-failed"' in row and "✗" in row
    reason = tester.report.rule("h264_profile").reason if tester.report else ""
    assert reason and reason in tester.checklist.value
    assert "FAILED" in tester.checklist.value

    good = make_test_file(tmp_path / "good.mkv", seconds=1, profile="baseline")
    tester.source_input.value = str(good)
    tester.check_button.click()
    await settled(tester.task)
    assert tester.ok is True, tester.checklist.value
    assert "rule-failed" not in tester.checklist.value
    assert tester.checklist.value.count("✓") >= 8
    assert [s["value"] for s in states(tester.status) if "value" in s][-1].startswith("12 rules")

    tester.source_input.value = str(tmp_path / "missing.mp4")
    tester.check_button.click()
    await settled(tester.task)
    assert "no media file at" in tester.status.value
    assert not tester.check_button.disabled
    tester.close()


def test_describe_error_in_plain_words() -> None:
    from botocore.exceptions import ClientError

    exc = ClientError(
        {"Error": {"Code": "ResourceNotFoundException", "Message": "no stream"}}, "GetImages"
    )
    assert describe_error(exc) == "ResourceNotFoundException: no stream"
    assert describe_error(TimeoutError("after 3 s")) == "timed out: after 3 s"
    assert describe_error(ValueError("bad")) == "ValueError: bad"


async def test_work_started_on_another_loop_runs_on_the_widgets_loop() -> None:
    """JupyterLab 4.6 delivers widget messages on a kernel subshell: a thread with its own
    event loop. Work must still run on the loop the widget was made on."""
    import threading

    from kvsnb.widgets._common import Tasks

    tasks = Tasks()
    home = asyncio.get_running_loop()
    ran_on: list[asyncio.AbstractEventLoop] = []

    async def work() -> str:
        ran_on.append(asyncio.get_running_loop())
        return "done"

    results: list[str] = []

    def subshell() -> None:
        async def click() -> None:
            results.append(await tasks.spawn(work()))

        asyncio.run(click())

    thread = threading.Thread(target=subshell)
    thread.start()
    await asyncio.to_thread(thread.join, 30)  # this loop stays free to run the work
    assert not thread.is_alive()
    assert ran_on == [home] and results == ["done"]
