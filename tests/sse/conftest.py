"""Fixtures of the stream tests: a real loopback connection with its served transport."""

from __future__ import annotations

import asyncio
import socket
from collections.abc import AsyncIterator

import pytest

HOST = "127.0.0.1"
SMALL_RECEIVE_BUFFER = 4 * 1024


class Sink(asyncio.Protocol):
    """The server end of a loopback connection: keeps its transport, reads nothing."""

    def __init__(self, made: asyncio.Future[asyncio.Transport]) -> None:
        self.made = made

    def connection_made(self, transport: asyncio.BaseTransport) -> None:
        assert isinstance(transport, asyncio.Transport)
        self.made.set_result(transport)


@pytest.fixture
async def loopback() -> AsyncIterator[tuple[asyncio.Transport, socket.socket]]:
    """A served transport and the client socket at the other end (4 KB receive buffer)."""
    loop = asyncio.get_running_loop()
    made: asyncio.Future[asyncio.Transport] = loop.create_future()
    server = await loop.create_server(lambda: Sink(made), HOST, 0)
    port = server.sockets[0].getsockname()[1]
    client = socket.socket()
    client.setsockopt(socket.SOL_SOCKET, socket.SO_RCVBUF, SMALL_RECEIVE_BUFFER)
    client.setblocking(False)
    await loop.sock_connect(client, (HOST, port))
    transport = await asyncio.wait_for(made, 5)
    try:
        yield transport, client
    finally:
        transport.abort()
        client.close()
        server.close()
        await server.wait_closed()
