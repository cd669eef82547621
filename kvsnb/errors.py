"""The base of the errors kvsnb raises on purpose.

Each error also subclasses the built-in exception that fits it (as PyAV's do), so callers
catch either ``KvsnbError`` or, say, ``ValueError``. AWS errors from boto3 stay
``botocore.exceptions.ClientError``; where kvsnb wraps one, the AWS code is kept in
``code``.
"""

from __future__ import annotations

import asyncio
import logging
from collections.abc import Awaitable
from typing import Any


class KvsnbError(Exception):
    """Something kvsnb could not do, with a message naming what and why."""


async def reap(task: Awaitable[Any], what: str, log: logging.Logger) -> None:
    """Await a task that is being stopped. Its cancellation is expected; any other failure is
    logged with its traceback (never raised, never silently dropped) under ``what``."""
    try:
        await task
    except asyncio.CancelledError:
        if (current := asyncio.current_task()) is not None and current.cancelling():
            raise  # we are being cancelled ourselves, not just the task
    except Exception:
        log.warning("%s failed while stopping", what, exc_info=True)
