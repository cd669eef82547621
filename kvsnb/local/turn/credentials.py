"""Time-limited TURN credentials in coturn's shared-secret (TURN REST API) scheme, shaped as
GetIceServerConfig hands them out on AWS (docs/wire.md, "TURN"):

- ``Username``: ``<expiry epoch seconds>:<base64("v1:" + ChannelARN)>``; coturn reads the
  expiry before the colon and refuses the name once it is past;
- ``Password``: ``base64(HMAC-SHA1(secret, Username))``, which coturn recomputes with the
  same secret (``static-auth-secret``);
- ``Ttl``: 300 seconds.
"""

from __future__ import annotations

import base64
import hashlib
import hmac
import secrets
import time
from dataclasses import dataclass

TTL_S = 300


def new_secret() -> str:
    """A fresh shared secret for one TURN server's lifetime."""
    return secrets.token_urlsafe(32)


@dataclass(frozen=True)
class TurnCredentials:
    """One user name and password, valid until ``expires`` (epoch seconds)."""

    username: str
    password: str
    ttl: int

    @property
    def expires(self) -> int:
        """The expiry coturn checks: the epoch seconds before the first colon."""
        return int(self.username.split(":", 1)[0])


def issue(
    secret: str, channel_arn: str, *, ttl: int = TTL_S, now: float | None = None
) -> TurnCredentials:
    """Credentials for ``channel_arn`` valid ``ttl`` seconds from ``now``."""
    expiry = int(now if now is not None else time.time()) + ttl
    tag = base64.b64encode(f"v1:{channel_arn}".encode()).decode()
    username = f"{expiry}:{tag}"
    return TurnCredentials(username, password_for(secret, username), ttl)


def password_for(secret: str, username: str) -> str:
    """The password coturn expects for ``username`` under ``secret``."""
    digest = hmac.new(secret.encode(), username.encode(), hashlib.sha1).digest()
    return base64.b64encode(digest).decode()
