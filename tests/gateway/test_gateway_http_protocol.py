"""The gateway's HTTP/1.1 protocol (httptools): a control character in a header value still
reaches the auth check (401 JSON), a request that is not HTTP answers 400 in our JSON error
shape, and keep-alive carries several requests on one connection. Raw sockets, since an
HTTP client would refuse to send these."""

from __future__ import annotations

import asyncio
import json
from urllib.parse import urlsplit


async def _exchange(url: str, raw: bytes, answers: int = 1) -> list[tuple[int, dict, dict]]:
    """Send raw bytes, read `answers` responses (Content-Length bodies): (status, headers, JSON body)."""
    parts = urlsplit(url)
    reader, writer = await asyncio.wait_for(asyncio.open_connection(parts.hostname, parts.port), 5)
    try:
        writer.write(raw)
        await writer.drain()
        out = []
        for _ in range(answers):
            head = await asyncio.wait_for(reader.readuntil(b"\r\n\r\n"), 5)
            status_line, *lines = head.decode("latin-1").split("\r\n")
            headers = {k.strip().lower(): v.strip() for k, _, v in (line.partition(":") for line in lines if line)}
            body = await asyncio.wait_for(reader.readexactly(int(headers["content-length"])), 5)
            out.append((int(status_line.split()[1]), headers, json.loads(body)))
        return out
    finally:
        writer.close()


async def test_a_control_character_in_the_token_is_401_json(gateway):
    [(status, headers, body)] = await _exchange(
        gateway.url, b"GET /v1/models HTTP/1.1\r\nHost: x\r\nAuthorization: Bearer \x01abc\r\n\r\n")
    assert status == 401 and body["error"] == "unauthorized"
    assert headers["content-type"] == "application/json"


async def test_a_request_that_is_not_http_is_400_json(gateway):
    [(status, headers, body)] = await _exchange(gateway.url, b"G@T /v1/models HTTP/1.1\r\nHost: x\r\n\r\n")
    assert status == 400 and body["error"] == "invalid_request" and set(body) == {"error", "message"}
    assert headers["connection"] == "close"


async def test_keep_alive_serves_pipelined_requests_in_order(gateway):
    token = gateway.headers()["authorization"].encode()
    one = b"GET /v1/models HTTP/1.1\r\nHost: x\r\nAuthorization: " + token + b"\r\n\r\n"
    missing = b"GET /v1/models/mod_nothere1 HTTP/1.1\r\nHost: x\r\nAuthorization: " + token + b"\r\n\r\n"
    answers = await _exchange(gateway.url, one + missing + one, answers=3)
    assert [status for status, _, _ in answers] == [200, 404, 200]
    assert answers[1][2]["error"] == "model_not_found" and "models" in answers[0][2]


class _RecordingTransport:
    def __init__(self):
        self.sent: list[bytes] = []
        self.closed = False

    def write(self, data: bytes) -> None:
        self.sent.append(data)

    def is_closing(self) -> bool:
        return self.closed

    def close(self) -> None:
        self.closed = True

    def get_extra_info(self, name: str):
        return ("127.0.0.1", 1) if name == "peername" else None


async def test_writes_of_one_callback_go_out_in_one_send_and_close_sends_first():
    from controlplane.gateway.http_protocol import CoalescingTransport

    inner = _RecordingTransport()
    transport = CoalescingTransport(inner, asyncio.get_running_loop())
    transport.write(b"HTTP/1.1 200 OK\r\n\r\n")
    transport.write(b"{}")
    assert inner.sent == []
    await asyncio.sleep(0)
    assert inner.sent == [b"HTTP/1.1 200 OK\r\n\r\n{}"]
    transport.write(b"last")
    transport.close()
    assert inner.sent[-1] == b"last" and inner.closed
    assert transport.get_extra_info("peername") == ("127.0.0.1", 1)  # the rest is the inner transport's
    await asyncio.sleep(0)
    assert len(inner.sent) == 2  # nothing sent twice


async def test_a_control_character_in_another_header_is_refused_as_400_json(gateway):
    [(status, headers, body)] = await _exchange(
        gateway.url, b"GET /v1/models HTTP/1.1\r\nHost: x\r\nX-Note: a\x01b\r\n\r\n")
    assert status == 400 and body["error"] == "invalid_request" and headers["connection"] == "close"


def test_the_uvicorn_internals_the_shim_overrides_are_there():
    """An upgrade of uvicorn that renames or reshapes what http_protocol.py and server.py
    override fails here (they are pinned in pyproject.toml for this reason)."""
    import inspect

    import uvicorn
    from uvicorn.protocols.http import httptools_impl

    cls = httptools_impl.HttpToolsProtocol
    for name, params in (("data_received", ["self", "data"]), ("send_400_response", ["self", "msg"]),
                         ("connection_made", ["self", "transport"])):
        assert list(inspect.signature(getattr(cls, name)).parameters) == params, name
    assert httptools_impl.STATUS_LINE[401].startswith(b"HTTP/1.1 401")
    assert "capture_signals" in vars(uvicorn.Server)
    source = inspect.getsource(cls.data_received)
    assert "send_400_response" in source and "HttpParserError" in source
