"""A hostPort relay's connection bound, over loopback: connections past the limit are closed
as they arrive, the ones relayed keep working, a finished one frees its place, and closing the
relay ends every connection it holds."""

from __future__ import annotations

import asyncio
from collections.abc import Callable

import pytest

from cri_py.model.sandbox import PortMapping
from cri_py.network.hostports import Relay

Connection = tuple[asyncio.StreamReader, asyncio.StreamWriter]


async def until(condition: Callable[[], bool], what: str) -> None:
    async with asyncio.timeout(5):
        while not condition():
            await asyncio.sleep(0.01)
    assert condition(), what


async def round_trip(connection: Connection, data: bytes) -> bytes:
    reader, writer = connection
    writer.write(data)
    await writer.drain()
    async with asyncio.timeout(5):
        return await reader.readexactly(len(data))


async def eof(connection: Connection) -> bool:
    async with asyncio.timeout(5):
        return await connection[0].read(1024) == b""


async def test_connections_past_the_limit_are_closed_and_the_rest_keep_relaying(
    echo_port: int,
) -> None:
    relay = Relay("127.0.0.1", PortMapping(0, echo_port, 0, "127.0.0.1"), max_connections=2)
    await relay.listen()
    assert relay.server is not None
    port = relay.server.sockets[0].getsockname()[1]
    opened: list[asyncio.StreamWriter] = []

    async def connect() -> Connection:
        connection = await asyncio.open_connection("127.0.0.1", port)
        opened.append(connection[1])
        return connection

    try:
        first, second = await connect(), await connect()
        assert await round_trip(first, b"one") == b"one"
        assert await round_trip(second, b"two") == b"two"
        third = await connect()
        assert await eof(third)  # closed at once, never relayed
        assert relay.active == 2 and relay.refused == 1
        # A finished connection frees its place, and nothing of it is kept.
        first[1].close()
        await until(lambda: relay.active == 1, "the closed connection is forgotten")
        fourth = await connect()
        assert await round_trip(fourth, b"four") == b"four"
        assert relay.refused == 1 and len(relay.connections) == 4  # 2 relays, 2 ends each
    finally:
        await relay.close()
    # Closing the relay ends what it holds.
    assert await eof(second) and await eof(fourth)
    await until(lambda: relay.active == 0 and not relay.connections, "connections ended")
    with pytest.raises(OSError):
        await connect()
    for writer in opened:
        writer.close()
        await writer.wait_closed()
