"""Helpers of the widget tests (unit and integration): ipywidgets' recording comm, the state
updates a widget sent, and waiting for the work a widget started."""

from __future__ import annotations

import asyncio
from collections.abc import Iterator
from typing import Any

from ipywidgets.widgets.tests.utils import setup_test_comm, teardown_test_comm


async def settled(task: asyncio.Future[Any] | None) -> None:
    """Wait for the work a widget started (there must be some)."""
    assert task is not None
    await task


def recording_comm() -> Iterator[None]:
    """Swap in ipywidgets' recording dummy comm while the generator is suspended."""
    setup_test_comm()
    yield
    teardown_test_comm()


def states(widget: Any) -> list[dict[str, Any]]:
    """The state updates the widget sent to the front end, oldest first; a binary value
    (sent as a buffer) appears as its bytes."""
    out = []
    for _args, kwargs in widget.comm.messages:
        data = kwargs.get("data", {})
        if data.get("method") == "update":
            state = dict(data["state"])
            for path, buffer in zip(
                data.get("buffer_paths", []), kwargs.get("buffers") or [], strict=True
            ):
                state[path[0]] = bytes(buffer)
            out.append(state)
    return out
