"""Which certificate authority the client half trusts for an endpoint.

The system's CAs (or ``AWS_CA_BUNDLE`` for boto3) everywhere, plus, for the host and port of
a Local KVS in TLS mode that this process started or was pointed at, that Local KVS's local
CA: ``kvsnb.client.target`` registers it with ``trust_ca``, and the clients that do not go through
boto3 (the signaling WebSocket, HLS fetches) ask ``ssl_context(url)``. So ``https``/``wss``
to Local KVS needs no extra step, and nothing else trusts that CA.
"""

from __future__ import annotations

import functools
import ssl
import threading
from urllib.parse import urlsplit

_DEFAULT_PORTS = {"http": 80, "ws": 80, "https": 443, "wss": 443}
_lock = threading.Lock()
_cas: dict[tuple[str, int], str] = {}


def _key(url: str) -> tuple[str, int]:
    parts = urlsplit(url)
    host = (parts.hostname or "").lower()
    return host, parts.port or _DEFAULT_PORTS.get(parts.scheme.lower(), 443)


def trust_ca(url: str, cafile: str) -> None:
    """Trust ``cafile`` (PEM) for the host and port of ``url``, whatever the scheme."""
    with _lock:
        _cas[_key(url)] = cafile


def forget(url: str) -> None:
    """Stop trusting a registered CA for the host and port of ``url``."""
    with _lock:
        _cas.pop(_key(url), None)


def ca_file(url: str) -> str | None:
    """The CA file registered for ``url``'s host and port, if any."""
    with _lock:
        return _cas.get(_key(url))


@functools.lru_cache(maxsize=16)
def _context(cafile: str) -> ssl.SSLContext:
    return ssl.create_default_context(cafile=cafile)


def ssl_context(url: str) -> ssl.SSLContext | None:
    """A verifying ``ssl.SSLContext`` for ``url`` when a CA is registered for it; ``None``
    (the library's default verification) otherwise."""
    cafile = ca_file(url)
    return _context(cafile) if cafile else None
