"""The gateway's HTTP/1.1 protocol: uvicorn's httptools one (llhttp, in C, strict: a header
value with a control character is refused, as a proxy in front would expect; lenient
parsing is a request-smuggling risk), with a small shim:

- A request llhttp refuses answers our JSON error shape, not uvicorn's plain text: 401
  unauthorized when its Authorization header holds a control character (a malformed
  token, SPEC section 4), else 400 invalid_request; the connection then closes.
- What one loop iteration writes to a connection goes out in one send: uvicorn writes an
  answer's head and body separately, two syscalls and two TCP segments on the hot path.

The shim overrides uvicorn internals (HttpToolsProtocol.connection_made, data_received,
send_400_response; STATUS_LINE; server_state.default_headers): uvicorn and httptools are
pinned in pyproject.toml, and tests/gateway/test_gateway_http_protocol.py checks each of
those names and the behaviour, so an upgrade that moves them fails there first.
httptools instead of h11 (pure Python) cut the gateway's CPU per PATCH by ~100 us.
"""

from __future__ import annotations

import asyncio
import json

from uvicorn.protocols.http.httptools_impl import STATUS_LINE, HttpToolsProtocol


class CoalescingTransport:
    """A transport whose writes are joined and sent once the current callback is done;
    close() sends what is pending first. Everything else is the wrapped transport's."""

    def __init__(self, transport: asyncio.Transport, loop: asyncio.AbstractEventLoop):
        self._transport, self._loop = transport, loop
        self._pending: list[bytes] = []

    def write(self, data: bytes) -> None:
        if not self._pending:
            self._loop.call_soon(self._flush)
        self._pending.append(data)

    def _flush(self) -> None:
        if not self._pending:
            return
        data = b"".join(self._pending)
        self._pending.clear()
        if not self._transport.is_closing():
            self._transport.write(data)

    def close(self) -> None:
        self._flush()
        self._transport.close()

    def __getattr__(self, name: str):
        return getattr(self._transport, name)


def _malformed_authorization(data: bytes) -> bool:
    """The request head in data has an Authorization header with a control character."""
    head = data.split(b"\r\n\r\n", 1)[0]
    for line in head.split(b"\r\n")[1:]:
        name, sep, value = line.partition(b":")
        if sep and name.strip().lower() == b"authorization":
            return any(b < 0x20 and b != 0x09 or b == 0x7F for b in value)
    return False


class GatewayHttpProtocol(HttpToolsProtocol):
    _last_data = b""  # the chunk being parsed: what a refused request looked like

    def data_received(self, data: bytes) -> None:
        self._last_data = data
        super().data_received(data)

    def connection_made(self, transport: asyncio.Transport) -> None:  # type: ignore[override]
        super().connection_made(CoalescingTransport(transport, asyncio.get_running_loop()))  # type: ignore[arg-type]

    def send_400_response(self, msg: str) -> None:
        if _malformed_authorization(self._last_data):
            status, error = 401, {"error": "unauthorized", "message": "the Authorization header is malformed"}
        else:
            status, error = 400, {"error": "invalid_request", "message": "the request is not valid HTTP/1.1"}
        body = json.dumps(error).encode()
        head = [STATUS_LINE[status]]
        for name, value in self.server_state.default_headers:
            head += [name, b": ", value, b"\r\n"]
        head += [b"content-type: application/json\r\n", b"content-length: %d\r\n" % len(body),
                 b"connection: close\r\n\r\n"]
        self.transport.write(b"".join(head) + body)
        self.transport.close()
