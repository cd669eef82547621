"""What every widget family shares: scheduling coroutines from button callbacks, plain-word
errors, JPEG/PNG rendering for ``Image`` widgets, HTML tables and time-range text.

Nothing here knows about KVS: it is the glue between the kvsnb API and ipywidgets.
"""

from __future__ import annotations

import asyncio
import datetime as dt
import html
import io
import logging
from collections.abc import Callable, Coroutine
from typing import Any

import av
import numpy as np
import pandas as pd
from botocore.exceptions import BotoCoreError, ClientError
from matplotlib.figure import Figure
from PIL import Image as PILImage

from kvsnb.client.session import SessionError

logger = logging.getLogger(__name__)

PREVIEW_WIDTH = 320  # pixels: previews are scaled down to this width before JPEG encoding
JPEG_QUALITY = 80
FIGURE_DPI = 90
ERROR_COLOUR = "#cf222e"
OK_COLOUR = "#1a7f37"


class Tasks:
    """Runs a widget's work on the event loop the widget was made on (the kernel's main
    loop, in a notebook), keeps a reference to every task (asyncio holds only weak ones),
    and logs a task's exception if nobody awaited it.

    JupyterLab 4.6 with ipykernel 7 delivers widget messages on a kernel *subshell*, a
    thread with an event loop of its own (``commsOverSubshells``): a button's work started
    there could wait for ever on objects of the main loop (aiortc's peer connections).
    So work is always handed to the widget's home loop."""

    def __init__(self) -> None:
        self._tasks: set[asyncio.Future[Any]] = set()
        try:
            self.home: asyncio.AbstractEventLoop = asyncio.get_running_loop()
        except RuntimeError:
            self.home = asyncio.get_event_loop()

    def spawn(self, coro: Coroutine[Any, Any, Any]) -> asyncio.Future[Any]:
        """Schedule ``coro`` on the home loop; the result can be awaited on the loop of
        the caller (a task when that is the home loop)."""
        try:
            current: asyncio.AbstractEventLoop | None = asyncio.get_running_loop()
        except RuntimeError:
            current = None
        task: asyncio.Future[Any]
        if current is None or current is self.home or self.home.is_closed():
            task = (current or self.home).create_task(coro)
        else:
            task = asyncio.wrap_future(asyncio.run_coroutine_threadsafe(coro, self.home))
        self._tasks.add(task)
        task.add_done_callback(self._done)
        return task

    def _done(self, task: asyncio.Future[Any]) -> None:
        self._tasks.discard(task)
        if not task.cancelled() and task.exception() is not None:
            logger.error("widget task failed", exc_info=task.exception())

    def spawn_guarded(
        self, coro: Coroutine[Any, Any, Any], on_error: Callable[[str], None]
    ) -> asyncio.Future[Any]:
        """Schedule ``coro``; if it fails, ``on_error`` gets the error in plain words (the
        widget shows it instead of dying)."""

        async def guarded() -> None:
            try:
                await coro
            except Exception as exc:
                on_error(describe_error(exc))

        return self.spawn(guarded())

    def cancel(self) -> None:
        """Cancel every task still running."""
        for task in list(self._tasks):
            task.cancel()

    def __len__(self) -> int:
        return len(self._tasks)


def describe_error(exc: BaseException) -> str:
    """An exception in plain words: the AWS error code and message, the session's reason,
    or the exception's own text."""
    if isinstance(exc, ClientError):
        err = exc.response.get("Error", {})
        return f"{err.get('Code', 'Error')}: {err.get('Message', '')}".strip()
    if isinstance(exc, SessionError):
        return str(exc)
    if isinstance(exc, TimeoutError):
        return f"timed out: {exc}" if str(exc) else "timed out"
    if isinstance(exc, BotoCoreError | OSError) and str(exc):
        return str(exc)
    text = str(exc)
    return f"{type(exc).__name__}: {text}" if text else type(exc).__name__


def error_html(text: str) -> str:
    """``text`` as a red line of HTML ('' when there is no error)."""
    if not text:
        return ""
    return f'<div style="color:{ERROR_COLOUR}"><b>Error:</b> {html.escape(text)}</div>'


def table_html(df: pd.DataFrame, *, max_rows: int | None = None) -> str:
    """A DataFrame as a compact HTML table without the index."""
    return str(
        df.to_html(
            index=False,
            border=0,
            na_rep="–",
            max_rows=max_rows,
            float_format=lambda v: f"{v:.1f}",
        )
    )


def to_jpeg(
    image: np.ndarray | av.VideoFrame,
    *,
    width: int | None = PREVIEW_WIDTH,
    quality: int = JPEG_QUALITY,
) -> bytes:
    """A frame (RGB numpy array or PyAV frame) as JPEG bytes, scaled down to ``width``."""
    if isinstance(image, av.VideoFrame):
        if width is not None and image.width > width:
            height = max(2, round(image.height * width / image.width) & ~1)
            image = image.reformat(width=width, height=height, format="rgb24")
        rgb = image.to_ndarray(format="rgb24")
    else:
        rgb = np.asarray(image)
    picture = PILImage.fromarray(rgb, "RGB")
    if width is not None and picture.width > width:
        picture = picture.resize((width, max(1, round(picture.height * width / picture.width))))
    buffer = io.BytesIO()
    picture.save(buffer, "JPEG", quality=quality)
    return buffer.getvalue()


def figure_png(
    plot: Callable[..., Figure], *args: Any, size: tuple[float, float] = (7, 3.5)
) -> bytes:
    """Draw ``plot(*args, ax=...)`` (one of ``kvsnb.analysis``' plots) on a figure outside
    pyplot, so notebooks show it only in the widget, and return it as PNG bytes."""
    fig = Figure(figsize=size)
    ax = fig.subplots()
    plot(*args, ax=ax)
    buffer = io.BytesIO()
    fig.savefig(buffer, format="png", dpi=FIGURE_DPI)
    return buffer.getvalue()


def iso(t: dt.datetime | pd.Timestamp | None) -> str:
    """A UTC time as ISO 8601 with milliseconds, or '–'."""
    if t is None or pd.isna(t):
        return "–"
    ts = pd.Timestamp(t)
    ts = ts.tz_localize("UTC") if ts.tzinfo is None else ts.tz_convert("UTC")
    return ts.isoformat(timespec="milliseconds")
