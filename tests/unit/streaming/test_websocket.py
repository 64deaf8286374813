"""The WebSocket transport over an in-memory connection: handshake answer (RFC 6455 example),
channel protocols (binary, base64, v5 CLOSE), pings, the SPDY tunnel view, and fuzzed input."""

from __future__ import annotations

import asyncio
import base64

from hypothesis import given, settings
from hypothesis import strategies as st
from wsproto.connection import Connection, ConnectionType
from wsproto.events import BytesMessage, CloseConnection, Ping, Pong, TextMessage

from cri_py.streaming import websocket


class FakeWriter:
    def __init__(self) -> None:
        self.data = bytearray()
        self.closed = False

    def write(self, data: bytes) -> None:
        self.data += data

    async def drain(self) -> None:
        pass

    def close(self) -> None:
        self.closed = True

    def is_closing(self) -> bool:
        return self.closed


def client_bytes(*events: object) -> bytes:
    client = Connection(ConnectionType.CLIENT)
    return b"".join(client.send(e) for e in events)  # type: ignore[arg-type]


def server_events(data: bytes) -> list[object]:
    client = Connection(ConnectionType.CLIENT)
    client.receive_data(bytes(data))
    return list(client.events())


def test_accept_headers_follow_rfc_6455() -> None:
    headers = dict(websocket.accept_headers(b"dGhlIHNhbXBsZSBub25jZQ==", websocket.V5))
    assert headers["Sec-WebSocket-Accept"] == "s3pPLMBiTxaQ9kYGzzhZRbK+xOo="
    assert headers["Sec-WebSocket-Protocol"] == "v5.channel.k8s.io"


async def run_mux(
    protocol: str, wire: bytes, expected: dict[int, bytes]
) -> tuple[dict[int, bytes], FakeWriter]:
    """Feeds `wire`, reads what `expected` says from each channel, writes b"out" on stdout,
    then ends the connection."""
    reader = asyncio.StreamReader()
    reader.feed_data(wire)
    writer = FakeWriter()
    ws = websocket.WebSocket(reader, writer, b"")
    ws.start()
    mux = websocket.ChannelMux(ws, protocol, [0, 1, 3, 4])
    mux.start()
    received = {}
    for index, wanted in expected.items():
        chunks = b""
        while len(chunks) < len(wanted):
            chunks += await asyncio.wait_for(mux.channels[index].read(), 5)
        received[index] = chunks
    await mux.channels[1].write(b"out")
    reader.feed_eof()
    await mux.stop()
    await ws.close(grace=1)
    return received, writer


async def test_binary_channels_demultiplex_and_v5_close_ends_one_channel() -> None:
    wire = client_bytes(
        BytesMessage(b"\x00hel"),
        BytesMessage(b"\x00lo"),
        BytesMessage(b"\xff\x00"),  # v5: the client closed stdin
        BytesMessage(b"\x00ignored after close"),
        BytesMessage(b'\x04{"Width":80,"Height":24}'),
        Ping(b"x"),
    )
    expected = {0: b"hello", 4: b'{"Width":80,"Height":24}'}
    received, writer = await run_mux(websocket.V5, wire, expected)
    assert received == expected
    events = server_events(writer.data)
    assert Pong(b"x") in events
    assert [e.data for e in events if isinstance(e, BytesMessage)] == [b"\x01out"]
    assert isinstance(events[-1], CloseConnection) and events[-1].code == 1000


async def test_base64_channels_use_text_messages() -> None:
    wire = client_bytes(TextMessage("0" + base64.b64encode(b"abc").decode()), TextMessage("0!!"))
    received, writer = await run_mux(websocket.V4_BASE64, wire, {0: b"abc"})
    assert received[0] == b"abc"
    texts = [e.data for e in server_events(writer.data) if isinstance(e, TextMessage)]
    assert texts == ["1" + base64.b64encode(b"out").decode()]


async def test_the_tunnel_reads_binary_messages_as_a_byte_stream() -> None:
    reader = asyncio.StreamReader()
    reader.feed_data(client_bytes(BytesMessage(b"ab"), TextMessage("x"), BytesMessage(b"cd")))
    reader.feed_eof()
    writer = FakeWriter()
    ws = websocket.WebSocket(reader, writer, b"")
    ws.start()
    tunnel_in, tunnel_out = websocket.TunnelReader(ws), websocket.TunnelWriter(ws)
    assert await tunnel_in.read() == b"ab"
    assert await tunnel_in.read() == b"cd"
    assert await tunnel_in.read() == b""
    tunnel_out.write(b"spdy")
    await tunnel_out.drain()
    await ws.close(grace=0)


@settings(max_examples=200, deadline=None)
@given(st.binary(max_size=512))
def test_random_input_ends_the_connection_without_raising(data: bytes) -> None:
    async def feed() -> None:
        reader = asyncio.StreamReader()
        reader.feed_data(data)
        reader.feed_eof()
        ws = websocket.WebSocket(reader, FakeWriter(), b"")
        ws.start()
        mux = websocket.ChannelMux(ws, websocket.V5, [0, 1, 2, 3, 4])
        mux.start()
        for channel in mux.channels.values():
            while await asyncio.wait_for(channel.read(), 5):
                pass
        await mux.stop()
        await ws.close(grace=0)

    asyncio.run(feed())
