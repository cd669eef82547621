"""The KVS control plane (``kinesisvideo``): signaling channels, streams, their storage
mapping, endpoints and tags, persisted in SQLite under the data directory.

Each public method is one operation: it takes the input members already validated against
the botocore model (``protocol.parse_input``) and returns the output members, which the server
renders against the output shape. Errors are the AWS ones (``errors``). A restart on the same
data directory keeps everything (docs/design.md, principle 4).
"""

from __future__ import annotations

import logging
import secrets
import sqlite3
import string
import threading
import time
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from kvsnb.local.core.errors import (
    ClientLimitExceededException,
    InvalidArgumentException,
    NoDataRetentionException,
    ResourceInUseException,
    ResourceNotFoundException,
    TagsPerResourceExceededLimitException,
    VersionMismatchException,
)
from kvsnb.local.core.tokens import INVALID_TOKEN, decode_token, encode_token
from kvsnb.wire.defaults import DEFAULT_REGION

logger = logging.getLogger(__name__)

DEFAULT_ACCOUNT = "000000000000"
DEFAULT_MESSAGE_TTL_S = 60
MAX_TAGS = 50
LIST_PAGE_DEFAULT = 10000
VERSION_LENGTH = 20
CHANNEL_NOT_FOUND = "The requested channel is not found or not active."
STREAM_NOT_FOUND = "The requested stream is not found or not active."
WEBRTC_NEEDS_STORAGE = "MediaStorageConfiguration is required for WEBRTC protocol"
# AWS's quota: at most 100 signaling channels with media storage enabled per account and
# region [DG ingest-media]; the error is ClientLimitExceededException, the one limit error
# UpdateMediaStorageConfiguration's model names (docs/wire.md, "Channels with storage")
MAX_STORAGE_CHANNELS = 100
_ALNUM = string.ascii_letters + string.digits

_SCHEMA = """
CREATE TABLE IF NOT EXISTS channels (
    arn TEXT PRIMARY KEY,
    name TEXT NOT NULL UNIQUE,
    type TEXT NOT NULL,
    status TEXT NOT NULL,
    created REAL NOT NULL,
    ttl INTEGER NOT NULL,
    version TEXT NOT NULL,
    storage_status TEXT NOT NULL DEFAULT 'DISABLED',
    storage_stream_arn TEXT
);
CREATE TABLE IF NOT EXISTS streams (
    arn TEXT PRIMARY KEY,
    name TEXT NOT NULL UNIQUE,
    device_name TEXT,
    media_type TEXT,
    kms_key_id TEXT,
    retention_hours INTEGER NOT NULL,
    status TEXT NOT NULL,
    created REAL NOT NULL,
    version TEXT NOT NULL,
    storage_tier TEXT
);
CREATE TABLE IF NOT EXISTS tags (
    resource_arn TEXT NOT NULL,
    key TEXT NOT NULL,
    value TEXT NOT NULL,
    PRIMARY KEY (resource_arn, key)
);
"""


def new_version() -> str:
    """A resource version: 20 random alphanumerics, as AWS's."""
    return "".join(secrets.choice(_ALNUM) for _ in range(VERSION_LENGTH))


MEDIA_PLANE_APIS = frozenset({"PUT_MEDIA", "GET_MEDIA"})


@dataclass(frozen=True)
class Endpoints:
    """Where each plane of one Local KVS answers (the URLs the control plane hands out)."""

    # e.g. http://127.0.0.1:4566 (https:// in TLS mode), the control plane itself; or the
    # public base URL Local KVS is reached at behind a proxy (absolute, or root-relative such
    # as /proxy/4566)
    http: str

    @property
    def control(self) -> str:
        """The control plane: the root URL."""
        return self.http

    @property
    def signaling_https(self) -> str:
        """The signaling REST plane (GetIceServerConfig)."""
        return f"{self.http}/signaling"

    def signaling_wss(self, role: str = "MASTER") -> str:
        """The signaling WebSocket endpoint for a role (AWS also hands out one per role):
        ``ws://`` under an ``http://`` root, ``wss://`` under ``https://``; a root-relative
        base stays relative (browsers resolve it against the page)."""
        base = self.signaling_https
        if base.startswith("http"):
            base = "ws" + base[len("http") :]
        return base + "/" + role.lower()

    @property
    def webrtc(self) -> str:
        """The webrtc-storage plane (JoinStorageSession[AsViewer])."""
        return f"{self.http}/webrtc"

    @property
    def archived_media(self) -> str:
        """The archived-media plane (GetDataEndpoint's answer for its APIs)."""
        return f"{self.http}/archived-media"

    @property
    def stream_media(self) -> str:
        """The kinesis-video-media plane (GetDataEndpoint for PUT_MEDIA and GET_MEDIA)."""
        return f"{self.http}/stream-media"


@dataclass(frozen=True)
class Channel:
    """A signaling channel as stored."""

    arn: str
    name: str
    type: str
    status: str
    created: float
    ttl: int
    version: str
    storage_status: str
    storage_stream_arn: str | None

    def to_dict(self) -> dict[str, Any]:
        """The ``ChannelInfo`` wire shape."""
        return {
            "ChannelName": self.name,
            "ChannelARN": self.arn,
            "ChannelType": self.type,
            "ChannelStatus": self.status,
            "CreationTime": self.created,
            "SingleMasterConfiguration": {"MessageTtlSeconds": self.ttl},
            "Version": self.version,
        }

    @property
    def storage_enabled(self) -> bool:
        """True when media storage is ENABLED with a mapped stream."""
        return self.storage_status == "ENABLED" and self.storage_stream_arn is not None


@dataclass(frozen=True)
class Stream:
    """A stream as stored."""

    arn: str
    name: str
    device_name: str | None
    media_type: str | None
    kms_key_id: str | None
    retention_hours: int
    status: str
    created: float
    version: str
    storage_tier: str | None = None

    def to_dict(self) -> dict[str, Any]:
        """The ``StreamInfo`` wire shape."""
        return {
            "DeviceName": self.device_name,
            "StreamName": self.name,
            "StreamARN": self.arn,
            "MediaType": self.media_type,
            "KmsKeyId": self.kms_key_id,
            "Version": self.version,
            "Status": self.status,
            "CreationTime": self.created,
            "DataRetentionInHours": self.retention_hours,
        }


@dataclass
class ControlEvents:
    """Listeners the other planes register: channel deleted, storage mapping changed, stream
    deleted (what a listener returns is ignored)."""

    channel_deleted: list[Callable[[Channel], object]] = field(default_factory=list)
    storage_changed: list[Callable[[Channel], object]] = field(default_factory=list)
    stream_deleted: list[Callable[[Stream], object]] = field(default_factory=list)


def _encode_token(created: float, name: str, prefix: str) -> str:
    """A NextToken: the last item listed (a keyset cursor, so items created or deleted
    between pages neither repeat nor get skipped) and the name prefix it was listed under."""
    return encode_token([created, name, prefix])


def _decode_token(token: str | None) -> tuple[float, str, str] | None:
    """The ``(created, name, prefix)`` a NextToken holds; ``InvalidArgumentException`` for a
    token Local KVS did not hand out."""
    if not token:
        return None
    try:
        created, name, prefix = decode_token(token)
        if (
            isinstance(created, bool)
            or not isinstance(created, int | float)
            or not isinstance(name, str)
            or not isinstance(prefix, str)
        ):
            raise ValueError(token)
        return float(created), name, prefix
    except (ValueError, TypeError) as exc:
        raise InvalidArgumentException(INVALID_TOKEN) from exc


class ControlPlane:
    """State and logic of the ``kinesisvideo`` operations (see the module docstring)."""

    def __init__(
        self,
        data_dir: Path,
        endpoints: Endpoints,
        *,
        region: str = DEFAULT_REGION,
        account: str = DEFAULT_ACCOUNT,
        max_storage_channels: int = MAX_STORAGE_CHANNELS,
    ) -> None:
        self.region = region
        self.account = account
        self.max_storage_channels = max_storage_channels
        self.endpoints = endpoints
        self.events = ControlEvents()
        data_dir.mkdir(parents=True, exist_ok=True)
        self._lock = threading.RLock()
        self._db = sqlite3.connect(
            data_dir / "control.sqlite", check_same_thread=False, isolation_level=None
        )
        self._db.row_factory = sqlite3.Row
        self._db.execute("PRAGMA journal_mode=WAL")
        self._db.execute("PRAGMA synchronous=FULL")
        self._db.executescript(_SCHEMA)

    def close(self) -> None:
        """Close the database."""
        with self._lock:
            self._db.close()

    @contextmanager
    def _tx(self) -> Iterator[sqlite3.Connection]:
        with self._lock:
            self._db.execute("BEGIN IMMEDIATE")
            try:
                yield self._db
            except BaseException:
                self._db.execute("ROLLBACK")
                raise
            self._db.execute("COMMIT")

    def _new_arn(self, kind: str, name: str) -> tuple[str, float]:
        """A new resource's ARN and creation time: the ARN ends in the creation time's epoch
        milliseconds, as AWS's do, and the time is kept to that millisecond."""
        millis = int(time.time() * 1000)
        arn = f"arn:aws:kinesisvideo:{self.region}:{self.account}:{kind}/{name}/{millis}"
        return arn, millis / 1000

    def _default_kms_key(self) -> str:
        return f"arn:aws:kms:{self.region}:{self.account}:alias/aws/kinesisvideo"

    # ------------------------------------------------------------------ lookups

    def channel(self, *, arn: str | None = None, name: str | None = None) -> Channel:
        """The channel by ARN or name, or ``ResourceNotFoundException``."""
        if arn is None and name is None:
            raise InvalidArgumentException("Either ChannelName or ChannelARN must be specified.")
        with self._lock:
            if arn is not None:
                row = self._db.execute("SELECT * FROM channels WHERE arn=?", (arn,)).fetchone()
            else:
                row = self._db.execute("SELECT * FROM channels WHERE name=?", (name,)).fetchone()
        if row is None or (arn is not None and name is not None and row["name"] != name):
            raise ResourceNotFoundException(CHANNEL_NOT_FOUND)
        return Channel(**dict(row))

    def stream(self, *, arn: str | None = None, name: str | None = None) -> Stream:
        """The stream by ARN or name, or ``ResourceNotFoundException``."""
        if arn is None and name is None:
            raise InvalidArgumentException("Either StreamName or StreamARN must be specified.")
        with self._lock:
            if arn is not None:
                row = self._db.execute("SELECT * FROM streams WHERE arn=?", (arn,)).fetchone()
            else:
                row = self._db.execute("SELECT * FROM streams WHERE name=?", (name,)).fetchone()
        if row is None or (arn is not None and name is not None and row["name"] != name):
            raise ResourceNotFoundException(STREAM_NOT_FOUND)
        return Stream(**dict(row))

    def channel_of(self, req: dict[str, Any]) -> Channel:
        """The channel a request names by ``ChannelName`` and/or ``ChannelARN``."""
        return self.channel(arn=req.get("ChannelARN"), name=req.get("ChannelName"))

    def stream_of(self, req: dict[str, Any], *, exclusive: bool = False) -> Stream:
        """The stream a request names by ``StreamName`` and/or ``StreamARN``. With
        ``exclusive`` (the archived-media and media APIs) exactly one is needed, else
        ``InvalidArgumentException``."""
        name, arn = req.get("StreamName"), req.get("StreamARN")
        if exclusive and (name is None) == (arn is None):
            raise InvalidArgumentException("Specify either StreamName or StreamARN.")
        return self.stream(arn=arn, name=name)

    def _resource_kind(self, arn: str) -> str:
        kind = arn.split(":", 5)[5].split("/", 1)[0] if arn.count(":") >= 5 else ""
        if kind == "channel":
            self.channel(arn=arn)
        elif kind == "stream":
            self.stream(arn=arn)
        else:
            raise ResourceNotFoundException(f"The resource {arn} is not found.")
        return kind

    # ------------------------------------------------------------------ channels

    def create_signaling_channel(self, req: dict[str, Any]) -> dict[str, Any]:
        """CreateSignalingChannel: a new ACTIVE channel; the name must be unused."""
        name = req["ChannelName"]
        ttl = req.get("SingleMasterConfiguration", {}).get(
            "MessageTtlSeconds", DEFAULT_MESSAGE_TTL_S
        )
        tags = {t["Key"]: t["Value"] for t in req.get("Tags", [])}
        arn, created = self._new_arn("channel", name)
        with self._tx() as db:
            if db.execute("SELECT 1 FROM channels WHERE name=?", (name,)).fetchone():
                raise ResourceInUseException(f"The signaling channel {name} already exists.")
            db.execute(
                "INSERT INTO channels (arn, name, type, status, created, ttl, version) "
                "VALUES (?, ?, ?, 'ACTIVE', ?, ?, ?)",
                (
                    arn,
                    name,
                    req.get("ChannelType", "SINGLE_MASTER"),
                    created,
                    ttl,
                    new_version(),
                ),
            )
            self._put_tags(db, arn, tags)
        return {"ChannelARN": arn}

    def describe_signaling_channel(self, req: dict[str, Any]) -> dict[str, Any]:
        """DescribeSignalingChannel by name or ARN."""
        ch = self.channel_of(req)
        return {"ChannelInfo": ch.to_dict()}

    def list_signaling_channels(self, req: dict[str, Any]) -> dict[str, Any]:
        """ListSignalingChannels, by name order, with BEGINS_WITH and NextToken paging."""
        prefix = req.get("ChannelNameCondition", {}).get("ComparisonValue", "")
        rows = self._page("channels", prefix, req)
        return {
            "ChannelInfoList": [Channel(**dict(r)).to_dict() for r in rows[0]],
            "NextToken": rows[1],
        }

    def _page(
        self, table: str, prefix: str, req: dict[str, Any]
    ) -> tuple[list[sqlite3.Row], str | None]:
        """One page of ``table`` in creation order (then name), names starting with
        ``prefix`` (case-sensitive, as BEGINS_WITH is), after the NextToken's item."""
        limit = req.get("MaxResults", LIST_PAGE_DEFAULT)
        after = _decode_token(req.get("NextToken"))
        if after is not None and after[2] != prefix:
            raise InvalidArgumentException("The NextToken does not match the request.")
        created, name = (after[0], after[1]) if after is not None else (-1.0, "")
        with self._lock:
            rows = self._db.execute(
                f"SELECT * FROM {table} WHERE substr(name, 1, ?) = ? "
                "AND (created > ? OR (created = ? AND name > ?)) "
                "ORDER BY created, name LIMIT ?",
                (len(prefix), prefix, created, created, name, limit + 1),
            ).fetchall()
        if len(rows) <= limit:
            return rows, None
        last = rows[limit - 1]
        return rows[:limit], _encode_token(last["created"], last["name"], prefix)

    def update_signaling_channel(self, req: dict[str, Any]) -> dict[str, Any]:
        """UpdateSignalingChannel: new message TTL; CurrentVersion must match."""
        with self._tx() as db:
            ch = self.channel(arn=req["ChannelARN"])
            if ch.version != req["CurrentVersion"]:
                raise VersionMismatchException(
                    "The version of the channel does not match the current version."
                )
            ttl = req.get("SingleMasterConfiguration", {}).get("MessageTtlSeconds", ch.ttl)
            db.execute(
                "UPDATE channels SET ttl=?, version=? WHERE arn=?", (ttl, new_version(), ch.arn)
            )
        return {}

    def delete_signaling_channel(self, req: dict[str, Any]) -> dict[str, Any]:
        """DeleteSignalingChannel: removes the channel, its tags and its storage mapping; its
        signaling connections are closed."""
        with self._tx() as db:
            ch = self.channel(arn=req["ChannelARN"])
            if req.get("CurrentVersion") not in (None, ch.version):
                raise VersionMismatchException(
                    "The version of the channel does not match the current version."
                )
            db.execute("DELETE FROM channels WHERE arn=?", (ch.arn,))
            db.execute("DELETE FROM tags WHERE resource_arn=?", (ch.arn,))
        for listener in self.events.channel_deleted:
            listener(ch)
        return {}

    # ------------------------------------------------------------------ streams

    def create_stream(self, req: dict[str, Any]) -> dict[str, Any]:
        """CreateStream: a new ACTIVE stream; the name must be unused."""
        name = req["StreamName"]
        arn, created = self._new_arn("stream", name)
        with self._tx() as db:
            if db.execute("SELECT 1 FROM streams WHERE name=?", (name,)).fetchone():
                raise ResourceInUseException(f"The stream {name} already exists.")
            db.execute(
                "INSERT INTO streams (arn, name, device_name, media_type, kms_key_id, "
                "retention_hours, status, created, version, storage_tier) "
                "VALUES (?, ?, ?, ?, ?, ?, 'ACTIVE', ?, ?, ?)",
                (
                    arn,
                    name,
                    req.get("DeviceName"),
                    req.get("MediaType"),
                    req.get("KmsKeyId", self._default_kms_key()),
                    req.get("DataRetentionInHours", 0),
                    created,
                    new_version(),
                    req.get("StreamStorageConfiguration", {}).get("DefaultStorageTier"),
                ),
            )
            self._put_tags(db, arn, req.get("Tags", {}))
        return {"StreamARN": arn}

    def describe_stream(self, req: dict[str, Any]) -> dict[str, Any]:
        """DescribeStream by name or ARN."""
        st = self.stream_of(req)
        return {"StreamInfo": st.to_dict()}

    def list_streams(self, req: dict[str, Any]) -> dict[str, Any]:
        """ListStreams, with BEGINS_WITH and NextToken paging."""
        prefix = req.get("StreamNameCondition", {}).get("ComparisonValue", "")
        rows, token = self._page("streams", prefix, req)
        return {"StreamInfoList": [Stream(**dict(r)).to_dict() for r in rows], "NextToken": token}

    def _stream_for_update(self, req: dict[str, Any]) -> Stream:
        st = self.stream_of(req)
        if req.get("CurrentVersion") not in (None, st.version):
            raise VersionMismatchException(
                "The version of the stream does not match the current version."
            )
        return st

    def update_stream(self, req: dict[str, Any]) -> dict[str, Any]:
        """UpdateStream: device name and media type; CurrentVersion must match."""
        with self._tx() as db:
            st = self._stream_for_update(req)
            db.execute(
                "UPDATE streams SET device_name=?, media_type=?, version=? WHERE arn=?",
                (
                    req.get("DeviceName", st.device_name),
                    req.get("MediaType", st.media_type),
                    new_version(),
                    st.arn,
                ),
            )
        return {}

    def update_data_retention(self, req: dict[str, Any]) -> dict[str, Any]:
        """UpdateDataRetention: increase or decrease by DataRetentionChangeInHours."""
        with self._tx() as db:
            st = self._stream_for_update(req)
            change = req["DataRetentionChangeInHours"]
            if req["Operation"] == "DECREASE_DATA_RETENTION":
                change = -change
            hours = st.retention_hours + change
            if hours < 0:
                raise InvalidArgumentException(
                    "The data retention cannot be decreased below 0 hours; it is "
                    f"{st.retention_hours} hours."
                )
            if hours == 0 and self._mapped_channel(st.arn) is not None:
                raise ResourceInUseException(
                    "The stream is mapped to a signaling channel for media storage and must "
                    "keep a data retention greater than 0."
                )
            db.execute(
                "UPDATE streams SET retention_hours=?, version=? WHERE arn=?",
                (hours, new_version(), st.arn),
            )
        return {}

    def delete_stream(self, req: dict[str, Any]) -> dict[str, Any]:
        """DeleteStream: refused while a channel stores media into it; its stored fragments
        are deleted by the listeners."""
        with self._tx() as db:
            st = self._stream_for_update(req)
            mapped = self._mapped_channel(st.arn)
            if mapped is not None:
                raise ResourceInUseException(
                    f"The stream is mapped to the signaling channel {mapped.arn}; disable its "
                    "media storage configuration first."
                )
            db.execute("DELETE FROM streams WHERE arn=?", (st.arn,))
            db.execute("DELETE FROM tags WHERE resource_arn=?", (st.arn,))
        for listener in self.events.stream_deleted:
            listener(st)
        return {}

    # ------------------------------------------------------------------ media storage

    def _mapped_channel(self, stream_arn: str) -> Channel | None:
        with self._lock:
            row = self._db.execute(
                "SELECT * FROM channels WHERE storage_stream_arn=?", (stream_arn,)
            ).fetchone()
        return None if row is None else Channel(**dict(row))

    def _check_storage_quota(self, db: sqlite3.Connection, ch: Channel) -> None:
        """``ClientLimitExceededException`` when enabling storage on ``ch`` would make more
        than ``max_storage_channels`` channels with storage enabled (a channel already enabled
        keeps its slot when it is remapped)."""
        if ch.storage_status == "ENABLED":
            return
        (enabled,) = db.execute(
            "SELECT COUNT(*) FROM channels WHERE storage_status='ENABLED'"
        ).fetchone()
        if enabled >= self.max_storage_channels:
            raise ClientLimitExceededException(
                f"The account has reached the limit of {self.max_storage_channels} signaling "
                "channels with media storage enabled in this region. Disable media storage "
                "on a channel first."
            )

    def update_media_storage_configuration(self, req: dict[str, Any]) -> dict[str, Any]:
        """UpdateMediaStorageConfiguration: map a channel to a stream (1:1, retention > 0) or
        disable storage. At most ``max_storage_channels`` channels have storage ENABLED at
        once (AWS: 100 per account); one more is ``ClientLimitExceededException`` and changes
        nothing, and disabling a channel frees its slot."""
        conf = req["MediaStorageConfiguration"]
        with self._tx() as db:
            ch = self.channel(arn=req["ChannelARN"])
            stream_arn = conf.get("StreamARN")
            if conf["Status"] == "ENABLED":
                if stream_arn is None:
                    raise InvalidArgumentException(
                        "StreamARN is required when the media storage status is ENABLED."
                    )
                st = self.stream(arn=stream_arn)
                if st.retention_hours <= 0:
                    raise NoDataRetentionException(
                        f"The stream {st.name} has no data retention; media storage needs a "
                        "stream with DataRetentionInHours greater than 0."
                    )
                other = self._mapped_channel(st.arn)
                if other is not None and other.arn != ch.arn:
                    raise ResourceInUseException(
                        f"The stream {st.arn} is already mapped to the signaling channel "
                        f"{other.arn}."
                    )
                self._check_storage_quota(db, ch)
            elif stream_arn is not None:
                self.stream(arn=stream_arn)
            db.execute(
                "UPDATE channels SET storage_status=?, storage_stream_arn=? WHERE arn=?",
                (conf["Status"], stream_arn if conf["Status"] == "ENABLED" else None, ch.arn),
            )
        updated = self.channel(arn=ch.arn)
        for listener in self.events.storage_changed:
            listener(updated)
        return {}

    def describe_media_storage_configuration(self, req: dict[str, Any]) -> dict[str, Any]:
        """DescribeMediaStorageConfiguration: DISABLED with no stream for a fresh channel."""
        ch = self.channel_of(req)
        return {
            "MediaStorageConfiguration": {
                "Status": ch.storage_status,
                "StreamARN": ch.storage_stream_arn,
            }
        }

    def describe_mapped_resource_configuration(self, req: dict[str, Any]) -> dict[str, Any]:
        """DescribeMappedResourceConfiguration: the channel that stores into a stream."""
        st = self.stream_of(req)
        _decode_token(req.get("NextToken"))
        ch = self._mapped_channel(st.arn)
        items = [] if ch is None else [{"Type": "SIGNALING_CHANNEL", "ARN": ch.arn}]
        return {"MappedResourceConfigurationList": items}

    # ------------------------------------------------------------------ endpoints

    def get_signaling_channel_endpoint(self, req: dict[str, Any]) -> dict[str, Any]:
        """GetSignalingChannelEndpoint: one endpoint per protocol asked (WSS and HTTPS by
        default); WEBRTC only when the channel's media storage is ENABLED."""
        ch = self.channel(arn=req["ChannelARN"])
        conf = req.get("SingleMasterChannelEndpointConfiguration", {})
        protocols = conf.get("Protocols", ["WSS", "HTTPS"])
        urls = {
            "WSS": self.endpoints.signaling_wss(conf.get("Role", "MASTER")),
            "HTTPS": self.endpoints.signaling_https,
            "WEBRTC": self.endpoints.webrtc,
        }
        bad = [p for p in protocols if p not in urls]
        if bad:
            raise InvalidArgumentException(
                f"1 validation error detected: Value '{bad}' at "
                "'singleMasterChannelEndpointConfiguration.protocols' failed to satisfy "
                "constraint: Member must satisfy enum value set: [WSS, HTTPS, WEBRTC]"
            )
        if "WEBRTC" in protocols and not ch.storage_enabled:
            raise InvalidArgumentException(WEBRTC_NEEDS_STORAGE)
        seen: list[str] = []
        for p in protocols:
            if p not in seen:
                seen.append(p)
        return {
            "ResourceEndpointList": [{"Protocol": p, "ResourceEndpoint": urls[p]} for p in seen]
        }

    def get_data_endpoint(self, req: dict[str, Any]) -> dict[str, Any]:
        """GetDataEndpoint: the kinesis-video-media endpoint for PUT_MEDIA and GET_MEDIA, the
        archived-media one for the other API names."""
        self.stream_of(req)
        if req["APIName"] in MEDIA_PLANE_APIS:
            return {"DataEndpoint": self.endpoints.stream_media}
        return {"DataEndpoint": self.endpoints.archived_media}

    # ------------------------------------------------------------------ tags

    def _put_tags(self, db: sqlite3.Connection, arn: str, tags: dict[str, str]) -> None:
        if not tags:
            return
        existing = {r[0] for r in db.execute("SELECT key FROM tags WHERE resource_arn=?", (arn,))}
        if len(existing | set(tags)) > MAX_TAGS:
            raise TagsPerResourceExceededLimitException(
                f"A resource can have at most {MAX_TAGS} tags."
            )
        db.executemany(
            "INSERT OR REPLACE INTO tags (resource_arn, key, value) VALUES (?, ?, ?)",
            [(arn, k, v) for k, v in tags.items()],
        )

    def _tags(self, arn: str, token: str | None) -> dict[str, Any]:
        _decode_token(token)
        with self._lock:
            rows = self._db.execute(
                "SELECT key, value FROM tags WHERE resource_arn=? ORDER BY key", (arn,)
            ).fetchall()
        return {"Tags": {r[0]: r[1] for r in rows}}

    def tag_resource(self, req: dict[str, Any]) -> dict[str, Any]:
        """TagResource on a channel or stream ARN."""
        self._resource_kind(req["ResourceARN"])
        with self._tx() as db:
            self._put_tags(db, req["ResourceARN"], {t["Key"]: t["Value"] for t in req["Tags"]})
        return {}

    def untag_resource(self, req: dict[str, Any]) -> dict[str, Any]:
        """UntagResource: remove the named keys (missing keys are ignored)."""
        self._resource_kind(req["ResourceARN"])
        with self._tx() as db:
            db.executemany(
                "DELETE FROM tags WHERE resource_arn=? AND key=?",
                [(req["ResourceARN"], k) for k in req["TagKeyList"]],
            )
        return {}

    def list_tags_for_resource(self, req: dict[str, Any]) -> dict[str, Any]:
        """ListTagsForResource: all tags of a channel or stream."""
        self._resource_kind(req["ResourceARN"])
        return self._tags(req["ResourceARN"], req.get("NextToken"))

    def tag_stream(self, req: dict[str, Any]) -> dict[str, Any]:
        """TagStream by stream name or ARN."""
        st = self.stream_of(req)
        with self._tx() as db:
            self._put_tags(db, st.arn, req["Tags"])
        return {}

    def untag_stream(self, req: dict[str, Any]) -> dict[str, Any]:
        """UntagStream by stream name or ARN."""
        st = self.stream_of(req)
        with self._tx() as db:
            db.executemany(
                "DELETE FROM tags WHERE resource_arn=? AND key=?",
                [(st.arn, k) for k in req["TagKeyList"]],
            )
        return {}

    def list_tags_for_stream(self, req: dict[str, Any]) -> dict[str, Any]:
        """ListTagsForStream by stream name or ARN."""
        st = self.stream_of(req)
        return self._tags(st.arn, req.get("NextToken"))
