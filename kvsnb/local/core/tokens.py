"""The NextToken codec of every paginated Local KVS API: an opaque base64 of JSON holding
what the next page needs (a keyset cursor or an offset, and the request it belongs to).
Tokens match the models' NextToken pattern; one that Local KVS did not hand out gets
``InvalidArgumentException``."""

from __future__ import annotations

import base64
import binascii
import json
from typing import Any

from kvsnb.local.core.errors import InvalidArgumentException

INVALID_TOKEN = "The NextToken is not valid."


def encode_token(state: Any) -> str:
    """An opaque NextToken holding ``state`` (anything JSON can hold)."""
    return base64.b64encode(json.dumps(state, sort_keys=True).encode()).decode()


def decode_token(token: str) -> Any:
    """The state a NextToken holds; ``InvalidArgumentException`` when it is not one."""
    try:
        return json.loads(base64.b64decode(token, validate=True))
    except (ValueError, binascii.Error, UnicodeDecodeError, RecursionError) as exc:
        raise InvalidArgumentException(INVALID_TOKEN) from exc
