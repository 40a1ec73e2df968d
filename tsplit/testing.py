"""Fault injection for tests of tsplit and of code built on it (loopback only)."""

from __future__ import annotations

import asyncio

from tsplit.settings import parse_host_port


class CuttableLink:
    """A loopback TCP relay to one etcd member: cut() drops every connection and refuses new
    ones until restore(), so one router loses etcd while etcd keeps serving the rest."""

    def __init__(self, target: str, connect_delay_s: float = 0.0):
        host, port = parse_host_port(target)
        self.connect_delay_s = connect_delay_s  # each connection waits this long before it is relayed
        self.refused_senders: set[str] = set()
        self._target = (host, port)
        self._open: set[asyncio.StreamWriter] = set()
        self._cut = False
        self._server: asyncio.AbstractServer | None = None
        self.address = ""

    async def start(self) -> "CuttableLink":
        self._server = await asyncio.start_server(self._accept, "127.0.0.1", 0)
        self.address = f"127.0.0.1:{self._server.sockets[0].getsockname()[1]}"
        return self

    def cut(self) -> None:
        self._cut = True
        for writer in list(self._open):
            writer.transport.abort()

    def restore(self) -> None:
        self._cut = False
        self.refused_senders.clear()

    def refuse_sender(self, member_id: str) -> None:
        """Drop every connection and refuse new ones whose first request says it comes from
        etcd member member_id (etcd's peer requests carry X-Server-From: <id in hex>)."""
        self.refused_senders.add(member_id.lower())
        for writer in list(self._open):
            writer.transport.abort()

    async def close(self) -> None:
        self.cut()
        self._server.close()
        await self._server.wait_closed()

    async def _accept(self, reader, writer) -> None:
        if self._cut:
            writer.transport.abort()
            return
        if self.connect_delay_s:
            await asyncio.sleep(self.connect_delay_s)  # a server slow to come up: its handshake waits
        first = b""
        if self.refused_senders:  # read the request's head to see who sends it (bounded)
            try:
                first = await asyncio.wait_for(reader.readuntil(b"\r\n\r\n"), 5)
            except (asyncio.TimeoutError, asyncio.IncompleteReadError, asyncio.LimitOverrunError, OSError):
                writer.transport.abort()
                return
            head = first.decode("latin-1").lower()
            if any(f"x-server-from: {member}\r\n" in head for member in self.refused_senders):
                writer.transport.abort()
                return
        try:
            up_reader, up_writer = await asyncio.open_connection(*self._target)
        except OSError:
            writer.transport.abort()
            return
        self._open.update((writer, up_writer))
        up_writer.write(first)
        try:
            await asyncio.gather(self._relay(reader, up_writer), self._relay(up_reader, writer))
        finally:
            self._open.difference_update((writer, up_writer))
            writer.transport.abort()
            up_writer.transport.abort()

    @staticmethod
    async def _relay(reader, writer) -> None:
        try:
            while data := await reader.read(65536):
                writer.write(data)
                await writer.drain()
        except (ConnectionError, OSError):
            pass
        finally:
            writer.transport.abort()
