"""The wire protocol of the KVS REST planes, driven by the botocore service models.

One protocol truth (docs/design.md, principle 1): every request is parsed and validated against the
operation's input shape (required members, types, min/max, patterns, enums) and every
response is checked and rendered against its output shape, generically, from
``botocore.session.get_session().get_service_model(NAME)``. Nothing here is specific to one
operation.

Validation errors read as Coral's do::

    1 validation error detected: Value 'a b' at 'channelName' failed to satisfy constraint:
    Member must satisfy regular expression pattern: ^[a-zA-Z0-9_.-]+$

and are sent as ``InvalidArgumentException`` (the error every KVS operation's model names for
bad parameters). A body that is not JSON, or a member of the wrong JSON type, is a
``SerializationException`` as Coral answers.
"""

from __future__ import annotations

import base64
import datetime as dt
import json
import logging
import math
import re
import uuid
from collections.abc import Iterable, Mapping
from dataclasses import dataclass
from functools import cache
from typing import Any

import botocore.session
from botocore.model import OperationModel, ServiceModel, Shape, StructureShape

from kvsnb.local.core.errors import AwsError, InvalidArgumentException, SerializationException

logger = logging.getLogger(__name__)

# The five modelled KVS services, by botocore name, and the plane each one is.
SERVICES: dict[str, str] = {
    "kinesisvideo": "control",
    "kinesis-video-signaling": "signaling",
    "kinesis-video-webrtc-storage": "webrtc",
    "kinesis-video-archived-media": "archived-media",
    "kinesis-video-media": "stream-media",
}
CORAL_NAMESPACE = "http://internal.amazon.com/coral/com.amazonaws.kinesisvideo.v20170930/"
MAX_VALIDATION_MESSAGES = 10
# Java's \p{Z} (Unicode separators), for the tag patterns; \p{L} and \p{N} become \w.
JAVA_P_Z = " \u00a0\u1680\u2000-\u200a\u2028\u2029\u202f\u205f\u3000"


@cache
def service_model(name: str) -> ServiceModel:
    """The botocore service model of one of the KVS services."""
    return botocore.session.get_session().get_service_model(name)


@dataclass(frozen=True)
class Route:
    """One modelled operation: its plane, service model and operation model."""

    plane: str
    service: ServiceModel
    operation: OperationModel

    @property
    def name(self) -> str:
        """The operation's name, e.g. ``CreateSignalingChannel``."""
        return str(self.operation.name)


@cache
def routes() -> dict[tuple[str, str], Route]:
    """Every modelled operation keyed by ``(plane, requestUri)``."""
    table: dict[tuple[str, str], Route] = {}
    for name, plane in SERVICES.items():
        model = service_model(name)
        for op_name in model.operation_names:
            op = model.operation_model(op_name)
            table[(plane, op.http["requestUri"])] = Route(plane, model, op)
    return table


def _wire_name(name: str) -> str:
    """Coral names members in error messages in lower camel case."""
    return name[:1].lower() + name[1:]


def _render_value(value: Any) -> str:
    """A value as Coral's (Java's) ``toString`` shows it: ``[a, b]`` and ``{k=v}``."""
    if value is None:
        return "null"
    if isinstance(value, bool):
        return "true" if value else "false"
    if isinstance(value, list):
        return "[" + ", ".join(_render_value(v) for v in value) + "]"
    if isinstance(value, dict):
        return "{" + ", ".join(f"{k}={_render_value(v)}" for k, v in value.items()) + "}"
    return str(value)


_CONTAINERS = ("structure", "list", "map")


class _Validator:
    """Walks a JSON value against a shape, converting and collecting constraint errors."""

    def __init__(self) -> None:
        self.failures: list[tuple[Any, str, str]] = []

    @property
    def errors(self) -> list[str]:
        """The constraint failures, in Coral's words."""
        return [
            f"Value {_quote(value)} at '{path}' failed to satisfy constraint: {constraint}"
            for value, path, constraint in self.failures
        ]

    def fail(self, value: Any, path: str, constraint: str) -> None:
        self.failures.append((value, path, constraint))

    def nested(self, value: Any, path: str, label: str, inner: _Validator) -> None:
        """Report the members' failures as Coral does for lists and maps of scalars:
        ``Member must satisfy constraint: [Member must ...]`` on the whole container."""
        constraints = list(dict.fromkeys(c for _, _, c in inner.failures))
        if constraints:
            self.fail(value, path, f"{label}: [{', '.join(constraints)}]")

    def check(self, shape: Shape, value: Any, path: str) -> Any:
        kind = shape.type_name
        if kind == "structure":
            return self.structure(shape, value, path)  # type: ignore[arg-type]
        if kind == "list":
            if not isinstance(value, list):
                raise _type_error(value, "a list", path)
            self.length(shape, value, path)
            member = shape.member  # type: ignore[attr-defined]
            if member.type_name in _CONTAINERS:
                return [
                    self.check(member, v, f"{path}.{i + 1}.member") for i, v in enumerate(value)
                ]
            inner = _Validator()
            items = [inner.check(member, v, path) for v in value]
            self.nested(value, path, "Member must satisfy constraint", inner)
            return items
        if kind == "map":
            if not isinstance(value, dict):
                raise _type_error(value, "a map", path)
            self.length(shape, value, path)
            key_shape, value_shape = shape.key, shape.value  # type: ignore[attr-defined]
            keys, values = _Validator(), _Validator()
            out: dict[Any, Any] = {}
            for k, v in value.items():
                if value_shape.type_name in _CONTAINERS:
                    out[keys.check(key_shape, k, path)] = self.check(
                        value_shape, v, f"{path}.{k}.member"
                    )
                else:
                    out[keys.check(key_shape, k, path)] = values.check(value_shape, v, path)
            self.nested(value, path, "Map keys must satisfy constraint", keys)
            self.nested(value, path, "Map value must satisfy constraint", values)
            return out
        if kind == "string":
            if not isinstance(value, str):
                raise _type_error(value, "a string", path)
            self.length(shape, value, path)
            enum: list[str] = getattr(shape, "enum", [])
            if enum and value not in enum:
                self.fail(value, path, f"Member must satisfy enum value set: [{', '.join(enum)}]")
            pattern = shape.metadata.get("pattern")
            if pattern and not _pattern(pattern).search(value):
                self.fail(value, path, f"Member must satisfy regular expression pattern: {pattern}")
            return value
        if kind in ("integer", "long"):
            if isinstance(value, bool) or not isinstance(value, int):
                if isinstance(value, float) and value.is_integer():
                    value = int(value)
                else:
                    raise _type_error(value, "an integer", path)
            self.range(shape, value, path)
            return value
        if kind in ("float", "double"):
            if isinstance(value, bool) or not isinstance(value, int | float):
                raise _type_error(value, "a number", path)
            self.range(shape, value, path)
            return float(value)
        if kind == "boolean":
            if not isinstance(value, bool):
                raise _type_error(value, "a boolean", path)
            return value
        if kind == "timestamp":
            return _parse_timestamp(value, path)
        if kind == "blob":
            if not isinstance(value, str):
                raise _type_error(value, "a base64 string", path)
            try:
                return base64.b64decode(value, validate=True)
            except ValueError as exc:
                raise SerializationException(f"Invalid base64 value at '{path}'") from exc
        raise SerializationException(f"Unsupported shape type {kind} at '{path}'")

    def structure(self, shape: StructureShape, value: Any, path: str) -> dict[str, Any]:
        if not isinstance(value, dict):
            raise _type_error(value, "a structure", path)
        out: dict[str, Any] = {}
        prefix = f"{path}." if path else ""
        for name in shape.required_members:
            if value.get(name) is None:
                self.fail(None, prefix + _wire_name(name), "Member must not be null")
        for name, member in shape.members.items():
            if name in value and value[name] is not None:
                out[name] = self.check(member, value[name], prefix + _wire_name(name))
        return out

    def length(self, shape: Shape, value: Any, path: str) -> None:
        lo, hi = shape.metadata.get("min"), shape.metadata.get("max")
        if lo is not None and len(value) < lo:
            self.fail(value, path, f"Member must have length greater than or equal to {lo}")
        if hi is not None and len(value) > hi:
            self.fail(value, path, f"Member must have length less than or equal to {hi}")

    def range(self, shape: Shape, value: float, path: str) -> None:
        lo, hi = shape.metadata.get("min"), shape.metadata.get("max")
        if lo is not None and value < lo:
            self.fail(value, path, f"Member must have value greater than or equal to {lo}")
        if hi is not None and value > hi:
            self.fail(value, path, f"Member must have value less than or equal to {hi}")


def _quote(value: Any) -> str:
    return "null" if value is None else f"'{_render_value(value)}'"


@cache
def _pattern(pattern: str) -> re.Pattern[str]:
    # The models' patterns are Java regexes; those in the KVS models are also valid Python
    # ones. Coral matches the whole value.
    pattern = pattern.replace("\\p{L}", "\\w").replace("\\p{N}", "\\w").replace("\\p{Z}", JAVA_P_Z)
    anchored = pattern if pattern.startswith("^") else "^(?:" + pattern + ")"
    anchored = anchored if anchored.endswith("$") else anchored + "$"
    return re.compile(anchored, re.DOTALL)


def _type_error(value: Any, expected: str, path: str) -> SerializationException:
    kind = type(value).__name__
    return SerializationException(
        f"Expected {expected} at '{path or 'body'}' but found a JSON {kind} value"
    )


def _parse_timestamp(value: Any, path: str) -> dt.datetime:
    if isinstance(value, bool):
        raise _type_error(value, "a timestamp", path)
    if isinstance(value, int | float):
        if not math.isfinite(value):
            raise _type_error(value, "a timestamp", path)
        try:
            return dt.datetime.fromtimestamp(float(value), tz=dt.UTC)
        except (OverflowError, OSError, ValueError) as exc:
            raise SerializationException(f"Timestamp out of range at '{path}'") from exc
    if isinstance(value, str):
        try:
            parsed = dt.datetime.fromisoformat(value.replace("Z", "+00:00"))
        except ValueError as exc:
            raise SerializationException(f"Invalid timestamp '{value}' at '{path}'") from exc
        return parsed if parsed.tzinfo else parsed.replace(tzinfo=dt.UTC)
    raise _type_error(value, "a timestamp", path)


def parse_input(route: Route, body: bytes) -> dict[str, Any]:
    """Parse and validate a request body against the operation's input shape.

    Returns the members with timestamps as aware ``datetime`` and blobs as ``bytes``; raises
    ``SerializationException`` for a body that is not a JSON object and
    ``InvalidArgumentException`` listing the constraint failures, in Coral's words.
    """
    try:
        data = json.loads(body) if body.strip() else {}
    except (ValueError, UnicodeDecodeError) as exc:
        raise SerializationException(f"Request body is not valid JSON: {exc}") from exc
    except RecursionError as exc:  # nested deeper than the JSON reader goes
        raise SerializationException("Request body is nested too deeply to be read") from exc
    shape = route.operation.input_shape
    if shape is None:
        return {}
    if not isinstance(data, dict):
        raise _type_error(data, "a JSON object", "")
    validator = _Validator()
    parsed = validator.structure(shape, data, "")
    if validator.errors:
        n = len(validator.errors)
        shown = "; ".join(validator.errors[:MAX_VALIDATION_MESSAGES])
        plural = "error" if n == 1 else "errors"
        raise InvalidArgumentException(f"{n} validation {plural} detected: {shown}")
    return parsed


def serialize_output(shape: Shape | None, value: Mapping[str, Any]) -> dict[str, Any]:
    """Render a response as JSON-ready data, checked against the output shape.

    Timestamps (``datetime`` or epoch seconds) become epoch seconds, ``None`` members are
    dropped, and a member the shape does not have is a bug in Local KVS (``ValueError``).
    """
    if shape is None:
        return {}
    rendered: dict[str, Any] = _render(shape, value, shape.name)
    return rendered


def _render(shape: Shape, value: Any, path: str) -> Any:
    kind = shape.type_name
    if kind == "structure":
        members = shape.members  # type: ignore[attr-defined]
        out: dict[str, Any] = {}
        for key, item in value.items():
            if item is None:
                continue
            if key not in members:
                raise ValueError(f"{path}: {key} is not a member of {shape.name}")
            out[key] = _render(members[key], item, f"{path}.{key}")
        return out
    if kind == "list":
        return [_render(shape.member, v, path) for v in value]  # type: ignore[attr-defined]
    if kind == "map":
        return {k: _render(shape.value, v, path) for k, v in value.items()}  # type: ignore[attr-defined]
    if kind == "timestamp":
        if isinstance(value, dt.datetime):
            return round(value.timestamp(), 3)
        return round(float(value), 3)
    if kind == "blob":
        return base64.b64encode(value).decode()
    return value


def error_body(service: ServiceModel, err: AwsError) -> tuple[int, dict[str, str], bytes]:
    """Status, headers and body of an AWS error response for one service.

    The status comes from the service's error shape (``err.status`` overrides it for errors
    the models do not name); the message goes in the member that shape names.
    """
    status = err.status
    message_member = "Message"
    try:
        shape = service.shape_for(err.code)
    except Exception:  # botocore raises NoShapeFoundError for an unmodelled error
        shape = None
    if shape is not None:
        status = status or shape.metadata.get("error", {}).get("httpStatusCode")
        members: Iterable[str] = getattr(shape, "members", {}).keys()
        message_member = next((m for m in members if m.lower() == "message"), "Message")
    headers = {
        "x-amzn-ErrorType": f"{err.code}:{CORAL_NAMESPACE}",
        "x-amzn-RequestId": str(uuid.uuid4()),
        "Content-Type": "application/json",
    }
    body = json.dumps({message_member: err.message}).encode()
    return int(status or 400), headers, body
