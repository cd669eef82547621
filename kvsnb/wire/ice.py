"""ICE host-candidate policy for aiortc peers.

aioice gathers host candidates from every interface *except* loopback
(``aioice.ice.get_host_addresses`` drops 127.0.0.1). Local KVS runs on 127.0.0.1,
so its storage peer and the clients that talk to it must offer loopback candidates on
purpose, and only those: media between two processes on one machine then never
touches another interface.

The policy is a context variable, so it applies to the asyncio task that gathers
(and the tasks it starts) and never leaks into an unrelated peer in the same process,
e.g. a session against AWS running next to an embedded Local KVS::

    with host_addresses(["127.0.0.1"]):
        await pc.setLocalDescription(await pc.createAnswer())

aiortc gathers inside ``setLocalDescription``; wrap that call (or everything that may
call it) in the context manager.
"""

from __future__ import annotations

import contextlib
import contextvars
import logging
from collections.abc import Iterator, Sequence

import aioice.ice

logger = logging.getLogger(__name__)


_HOST_ADDRESSES: contextvars.ContextVar[tuple[str, ...] | None] = contextvars.ContextVar(
    "kvsnb_ice_host_addresses", default=None
)
_original_get_host_addresses = aioice.ice.get_host_addresses
_installed = False


def _policy_get_host_addresses(use_ipv4: bool, use_ipv6: bool) -> list[str]:
    """aioice hook: the addresses chosen by the current context, else aioice's own."""
    chosen = _HOST_ADDRESSES.get()
    if chosen is None:
        return list(_original_get_host_addresses(use_ipv4=use_ipv4, use_ipv6=use_ipv6))
    return [a for a in chosen if (":" in a and use_ipv6) or (":" not in a and use_ipv4)]


def install() -> None:
    """Install the hook into aioice (idempotent). Without a policy set, nothing changes."""
    global _installed
    if not _installed:
        aioice.ice.get_host_addresses = _policy_get_host_addresses
        _installed = True


@contextlib.contextmanager
def host_addresses(addresses: Sequence[str] | None) -> Iterator[None]:
    """Gather host candidates only on ``addresses`` inside this context.

    ``None`` keeps aioice's default (every interface but loopback).
    """
    install()
    token = _HOST_ADDRESSES.set(None if addresses is None else tuple(addresses))
    try:
        yield
    finally:
        _HOST_ADDRESSES.reset(token)


def set_host_addresses(addresses: Sequence[str] | None) -> None:
    """Set the policy for the current task and the tasks it creates from now on."""
    install()
    _HOST_ADDRESSES.set(None if addresses is None else tuple(addresses))
