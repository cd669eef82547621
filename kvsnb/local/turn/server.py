"""coturn as a child process of Local KVS, on loopback, in the shape AWS's TURN has for
WebRTC ingestion (docs/wire.md, "TURN").

- Clients reach it at ``127.0.0.1`` on two ports of its own: ``turn:…?transport=udp`` on the
  plain port, ``turns:…?transport=udp`` (DTLS) and ``turns:…?transport=tcp`` (TLS) on the TLS
  port, with Local KVS's certificate.
- Relayed addresses are on a loopback address of their own (``RELAY_IP``, 127.0.0.2), and coturn
  relays only to peers on that address: two relay allocations reach each other, a host or
  server-reflexive candidate never reaches a relayed one. The storage peer gathers relay
  candidates only, so a peer connection without TURN cannot reach it, as on AWS.
- Credentials are coturn's shared-secret (TURN REST API) ones, issued by ``credentials``;
  coturn refuses a user name past its expiry when it is used for a new allocation.

Its configuration and log are in ``<data dir>/turn/``; ``stop()`` ends the process.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import shutil
import socket
import subprocess
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from kvsnb.local.turn.credentials import TTL_S, TurnCredentials, issue, new_secret
from kvsnb.wire.defaults import LOOPBACK

logger = logging.getLogger(__name__)

BINARY = "turnserver"
RELAY_IP = "127.0.0.2"
REALM = "kinesisvideo.local"
TURN_DIR = "turn"
READY_TIMEOUT_S = 15.0
SETPRIV = "setpriv"  # util-linux: sets the signal coturn gets when its parent ends
NO_COTURN = (
    "coturn is not installed (no `turnserver` on PATH): Local KVS runs without TURN, so peers "
    "reach the storage peer directly, which AWS does not allow. Install it with "
    "`apt-get install coturn` (make setup does) to fail locally as AWS fails."
)


class TurnUnavailable(RuntimeError):
    """coturn cannot be started (not installed, or it failed to come up: the message says)."""


def coturn_binary() -> str | None:
    """The path of coturn's ``turnserver``, or None when it is not installed."""
    return shutil.which(BINARY)


@dataclass(frozen=True)
class TurnEndpoint:
    """Where clients reach a running TURN server, and how to sign its credentials."""

    host: str
    port: int
    tls_port: int
    secret: str
    ttl: int = TTL_S

    def uris(self) -> list[str]:
        """The three URI forms AWS hands out, in its order."""
        return [
            f"turn:{self.host}:{self.port}?transport=udp",
            f"turns:{self.host}:{self.tls_port}?transport=udp",
            f"turns:{self.host}:{self.tls_port}?transport=tcp",
        ]

    def credentials(self, channel_arn: str, *, now: float | None = None) -> TurnCredentials:
        """Fresh credentials for one client of ``channel_arn``."""
        return issue(self.secret, channel_arn, ttl=self.ttl, now=now)

    def ice_server(self, channel_arn: str) -> dict[str, Any]:
        """One ``IceServerList`` entry, as GetIceServerConfig returns it."""
        cred = self.credentials(channel_arn)
        return {
            "Uris": self.uris(),
            "Username": cred.username,
            "Password": cred.password,
            "Ttl": cred.ttl,
        }

    def peer_ice_server(self, channel_arn: str) -> dict[str, Any]:
        """The entry a storage peer allocates with (plain ``turn:`` over UDP, which aioice
        speaks without a CA to trust)."""
        cred = self.credentials(channel_arn)
        return {"Uris": self.uris()[:1], "Username": cred.username, "Password": cred.password}


def _free_port(host: str) -> int:
    """A port free for both UDP and TCP on ``host`` (coturn listens on both)."""
    for _ in range(50):
        with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as tcp:
            tcp.bind((host, 0))
            port = int(tcp.getsockname()[1])
            with socket.socket(socket.AF_INET, socket.SOCK_DGRAM) as udp:
                try:
                    udp.bind((host, port))
                except OSError:
                    continue
            return port
    raise TurnUnavailable(f"no free port on {host} for coturn")


def coturn_command(binary: str, conf: Path) -> list[str]:
    """coturn's command line. Behind util-linux's ``setpriv --pdeathsig TERM`` (on every
    Debian), Linux ends coturn when the thread that started it ends, even by SIGKILL, so no
    relay outlives Local KVS. setpriv sets that and execs coturn: no Python code runs in the
    forked child. (Python there, such as a ``preexec_fn``, drops the other threads' state,
    and freeing a PyAV reformatter's swscale context waits forever for slice threads that
    the child does not have.) Without setpriv, ``stop()`` alone ends coturn."""
    command = [binary, "-c", str(conf)]
    setpriv = shutil.which(SETPRIV)
    return [setpriv, "--pdeathsig", "TERM", *command] if setpriv else command


class TurnServer:
    """One coturn process owned by a Local KVS (``start()`` / ``stop()``)."""

    def __init__(
        self,
        data_dir: Path,
        *,
        cert: Path,
        key: Path,
        host: str = LOOPBACK,
        relay_ip: str = RELAY_IP,
        ttl: int = TTL_S,
    ) -> None:
        self.folder = data_dir / TURN_DIR
        self.cert = cert
        self.key = key
        self.host = host
        self.relay_ip = relay_ip
        self.ttl = ttl
        self.proc: subprocess.Popen[bytes] | None = None
        self.endpoint: TurnEndpoint | None = None

    @property
    def log_file(self) -> Path:
        """coturn's log."""
        return self.folder / "turnserver.log"

    def _config(self, port: int, tls_port: int, secret: str) -> str:
        lines = [
            f"listening-ip={self.host}",
            f"relay-ip={self.relay_ip}",
            f"listening-port={port}",
            f"tls-listening-port={tls_port}",
            f"realm={REALM}",
            "use-auth-secret",
            f"static-auth-secret={secret}",
            "fingerprint",
            f"cert={self.cert}",
            f"pkey={self.key}",
            # relay only between relayed addresses on RELAY_IP (AWS: TURN required)
            "allow-loopback-peers",
            "denied-peer-ip=0.0.0.0-255.255.255.255",
            f"allowed-peer-ip={self.relay_ip}",
            "no-multicast-peers",
            "no-tcp-relay",
            "no-cli",
            "no-software-attribute",
            f"pidfile={self.folder / 'turnserver.pid'}",
            f"log-file={self.log_file}",
            "simple-log",
            "no-stdout-log",
        ]
        return "\n".join(lines) + "\n"

    async def start(self) -> TurnEndpoint:
        """Start coturn and wait until it answers on its port; ``TurnUnavailable`` if it is
        not installed or does not come up (the message quotes its log)."""
        binary = coturn_binary()
        if binary is None:
            raise TurnUnavailable(NO_COTURN)
        self.folder.mkdir(parents=True, exist_ok=True)
        port, tls_port = _free_port(self.host), _free_port(self.host)
        while tls_port == port:
            tls_port = _free_port(self.host)
        secret = new_secret()
        conf = self.folder / "turnserver.conf"
        conf.write_text(self._config(port, tls_port, secret))
        conf.chmod(0o600)
        self.log_file.unlink(missing_ok=True)
        self.proc = subprocess.Popen(
            coturn_command(binary, conf),
            stdin=subprocess.DEVNULL,
            stdout=subprocess.DEVNULL,
            stderr=subprocess.DEVNULL,
            process_group=0,  # a terminal's Ctrl-C reaches Local KVS, which stops it last
        )
        deadline = time.monotonic() + READY_TIMEOUT_S
        while not await self._answers(port):
            if self.proc.poll() is not None or time.monotonic() > deadline:
                log = self._log_tail()
                await self.stop()
                raise TurnUnavailable(f"coturn did not start ({conf}): {log}")
            await asyncio.sleep(0.02)  # polls a child process that gives no other signal
        self.endpoint = TurnEndpoint(self.host, port, tls_port, secret, self.ttl)
        logger.info("TURN (coturn) at %s:%d, relaying on %s", self.host, port, self.relay_ip)
        return self.endpoint

    async def _answers(self, port: int) -> bool:
        try:
            _, writer = await asyncio.open_connection(self.host, port)
        except OSError:
            return False
        writer.close()
        with contextlib.suppress(OSError):
            await writer.wait_closed()
        return True

    def _log_tail(self) -> str:
        try:
            return " | ".join(self.log_file.read_text(errors="replace").splitlines()[-5:])
        except OSError:
            return "no log"

    async def stop(self) -> None:
        """End coturn (SIGTERM, then SIGKILL after 5 s)."""
        proc, self.proc = self.proc, None
        self.endpoint = None
        if proc is None or proc.poll() is not None:
            return
        proc.terminate()
        try:
            await asyncio.wait_for(asyncio.to_thread(proc.wait), 5.0)
        except TimeoutError:
            proc.kill()
            await asyncio.to_thread(proc.wait)
