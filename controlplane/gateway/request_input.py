"""What the gateway reads from an HTTP request besides the token: the JSON body and the
If-Match and Idempotency-Key headers. Every failure is an ApiError naming what is wrong."""

from __future__ import annotations

import json
import re
import uuid
from typing import Any, AsyncIterator

from starlette.datastructures import Headers

from tsplit.errors import ApiError

MAX_JSON_DEPTH = 32
_MAX_INT64 = 2**63 - 1
_IF_MATCH = re.compile(r'^(?:"(\d{1,19})"|(\d{1,19}))$')
# Visible ASCII only: the key is stored in an etcd key and sent as gRPC metadata.
_IDEMPOTENCY_KEY = re.compile(r"^[\x21-\x7e]{1,128}$")


def check_media_type(headers: Headers) -> None:
    """415 unless Content-Type is application/json (a utf-8 charset parameter is allowed)."""
    raw = headers.get("content-type", "")
    media_type, *params = [part.strip() for part in raw.split(";")]
    charset_ok = all(
        p.lower().replace(" ", "") in ("charset=utf-8", 'charset="utf-8"') for p in params if p)
    if media_type.lower() != "application/json" or not charset_ok:
        shown = raw or "none"
        raise ApiError("unsupported_media_type", f"Content-Type must be application/json (got {shown})")


async def read_limited(chunks: AsyncIterator[bytes], declared_length: str | None, max_bytes: int) -> bytes:
    """The body, or 413 as soon as it is known to exceed max_bytes (stops reading there)."""
    too_large = ApiError("payload_too_large", f"the body is larger than the limit of {max_bytes} bytes")
    if declared_length is not None and declared_length.strip().isdigit() and int(declared_length) > max_bytes:
        raise too_large
    body = bytearray()
    async for chunk in chunks:
        body += chunk
        if len(body) > max_bytes:
            raise too_large
    return bytes(body)


def _depth(value: Any) -> int:
    """Nesting depth of a parsed JSON value, without recursion."""
    deepest, stack = 0, [(value, 1)]
    while stack:
        item, depth = stack.pop()
        deepest = max(deepest, depth)
        if isinstance(item, dict):
            stack.extend((v, depth + 1) for v in item.values())
        elif isinstance(item, list):
            stack.extend((v, depth + 1) for v in item)
    return deepest


def parse_json_object(body: bytes) -> dict[str, Any]:
    """The body as a JSON object. NaN and Infinity literals pass through: whether a number
    is acceptable is the control plane's decision (a NaN traffic_pct is a 422 there)."""
    try:
        value = json.loads(body.decode("utf-8"))
    except UnicodeDecodeError:
        raise ApiError("invalid_json", "the body is not valid UTF-8") from None
    except (ValueError, RecursionError) as err:
        where = f" (line {err.lineno}, column {err.colno})" if isinstance(err, json.JSONDecodeError) else ""
        raise ApiError("invalid_json", f"the body is not valid JSON{where}") from None
    if not isinstance(value, dict):
        raise ApiError("invalid_json", f"the body must be a JSON object, not {_json_type(value)}")
    if _depth(value) > MAX_JSON_DEPTH:
        raise ApiError("invalid_json", f"the body is nested deeper than {MAX_JSON_DEPTH} levels")
    return value


def _json_type(value: Any) -> str:
    if isinstance(value, list):
        return "an array"
    if isinstance(value, str):
        return "a string"
    if isinstance(value, bool):
        return "a boolean"
    if value is None:
        return "null"
    return "a number"


def expected_version(headers: Headers) -> int | None:
    """If-Match: the cache_version the caller expects, as ``4`` or the ETag form ``"4"``.
    ``*`` (any version) and no header mean no precondition."""
    raw = headers.get("if-match")
    if raw is None or raw.strip() == "*":
        return None
    match = _IF_MATCH.match(raw.strip())
    version = int(match.group(1) or match.group(2)) if match else None
    if version is None or version > _MAX_INT64:
        raise ApiError("invalid_request", f"If-Match must be a cache_version such as 4 or \"4\" (got {raw!r})")
    return version


def idempotency_key(headers: Headers) -> str:
    """The caller's Idempotency-Key, or a new one: the gateway makes it up (rather than the
    control plane) so it can hand it back for a retry after commit_unknown."""
    raw = headers.get("idempotency-key")
    if raw is None:
        return uuid.uuid4().hex
    if not _IDEMPOTENCY_KEY.match(raw):
        raise ApiError("invalid_request", "Idempotency-Key must be 1 to 128 visible ASCII characters")
    return raw
