"""WebSocket transport for streaming sessions, framing by wsproto (sans-IO): the handshake's
answer, a message loop with bounded buffering, the Kubernetes channel protocols for exec and
attach (v5/v4.channel.k8s.io and the base64 variants: one leading channel byte per message; v5
adds the client's CLOSE signal), and a byte-stream view of the messages that carries SPDY
tunnelled in WebSocket for port-forward (`SPDY/3.1+portforward.k8s.io`).
"""

from __future__ import annotations

import asyncio
import base64
import binascii
import contextlib
import time

from wsproto.connection import Connection, ConnectionState, ConnectionType
from wsproto.events import BytesMessage, CloseConnection, Ping, TextMessage
from wsproto.utilities import LocalProtocolError, RemoteProtocolError, generate_accept_token

from cri_py.log import get_logger
from cri_py.streaming.session import Reader, Writer

log = get_logger("cri_py.streaming")

V5 = "v5.channel.k8s.io"
V4 = "v4.channel.k8s.io"
V4_BASE64 = "v4.base64.channel.k8s.io"
BASE64 = "base64.channel.k8s.io"
V1 = "channel.k8s.io"
# Our preference among what clients offer (kubelet's).
CHANNEL_PROTOCOLS = (V5, V4, V4_BASE64, BASE64, V1)
TUNNEL_PROTOCOL = "SPDY/3.1+portforward.k8s.io"

STDIN, STDOUT, STDERR, ERROR, RESIZE = range(5)
CLOSE_SIGNAL = 255
CHANNELS = {"stdin": STDIN, "stdout": STDOUT, "stderr": STDERR, "error": ERROR, "resize": RESIZE}

# Messages buffered before the loop stops reading the connection (backpressure), and the
# largest message accepted (kubelet's client sends at most 32 KiB per message).
BUFFERED_MESSAGES = 16
MAX_MESSAGE_BYTES = 1024 * 1024
READ_BYTES = 64 * 1024


def accept_headers(key: bytes, protocol: str) -> list[tuple[str, str]]:
    headers = [
        ("Upgrade", "websocket"),
        ("Connection", "Upgrade"),
        ("Sec-WebSocket-Accept", generate_accept_token(key).decode()),
    ]
    if protocol:
        headers.append(("Sec-WebSocket-Protocol", protocol))
    return headers


class WebSocket:
    """Whole messages over an upgraded connection: `receive()` (None at the end) and sends."""

    def __init__(
        self, reader: Reader, writer: Writer, initial: bytes, idle_timeout: float = 4 * 3600
    ) -> None:
        self._reader = reader
        self._idle_timeout = idle_timeout
        self._last_activity = time.monotonic()
        self._writer = writer
        self._initial = initial
        self._conn = Connection(ConnectionType.SERVER)
        self._messages: asyncio.Queue[bytes | str | None] = asyncio.Queue(BUFFERED_MESSAGES)
        self.closed = asyncio.Event()
        self._task: asyncio.Task[None] | None = None

    def start(self) -> None:
        self._task = asyncio.create_task(self._run())

    async def receive(self) -> bytes | str | None:
        """The next whole message; None once the connection ended and all were received."""
        if self.closed.is_set() and self._messages.empty():
            return None
        message = await self._messages.get()
        if message is None:
            self._messages.put_nowait(None)
        return message

    async def _send(self, data: bytes) -> None:
        if data and not self._writer.is_closing():
            self._last_activity = time.monotonic()
            self._writer.write(data)
            await self._writer.drain()

    async def send(self, message: bytes | str) -> None:
        if self.closed.is_set() or self._conn.state != ConnectionState.OPEN:
            return
        event = BytesMessage(message) if isinstance(message, bytes) else TextMessage(message)
        try:
            await self._send(self._conn.send(event))
        except (ConnectionError, OSError, LocalProtocolError):
            self._shut()

    async def _run(self) -> None:
        parts: list[bytes | str] = []
        size = 0
        try:
            data = self._initial
            while True:
                if data:
                    self._conn.receive_data(data)
                    for event in self._conn.events():
                        if isinstance(event, BytesMessage | TextMessage):
                            chunk = event.data
                            parts.append(chunk if isinstance(chunk, str) else bytes(chunk))
                            size += len(event.data)
                            if size > MAX_MESSAGE_BYTES:
                                raise RemoteProtocolError("message too large", event_hint=None)
                            if event.message_finished:
                                joined = (
                                    "".join(p for p in parts if isinstance(p, str))
                                    if isinstance(event, TextMessage)
                                    else b"".join(p for p in parts if isinstance(p, bytes))
                                )
                                parts, size = [], 0
                                await self._messages.put(joined)
                        elif isinstance(event, Ping):
                            await self._send(self._conn.send(event.response()))
                        elif isinstance(event, CloseConnection):
                            if self._conn.state == ConnectionState.REMOTE_CLOSING:
                                await self._send(self._conn.send(event.response()))
                            return
                idle = self._idle_timeout - (time.monotonic() - self._last_activity)
                if idle <= 0:
                    log.info("streaming connection idle; closing", seconds=self._idle_timeout)
                    return
                try:
                    data = await asyncio.wait_for(self._reader.read(READ_BYTES), idle)
                except TimeoutError:
                    data = b""
                    continue
                if not data:
                    return
                self._last_activity = time.monotonic()
        except RemoteProtocolError as e:
            log.warning("streaming connection broke the WebSocket protocol", error=str(e))
        except (ConnectionError, OSError, LocalProtocolError):
            pass
        finally:
            self._shut()

    def abort(self) -> None:
        """Ends the session at once: buffered messages are dropped (the socket is closed by
        `close`)."""
        while not self._messages.empty():
            self._messages.get_nowait()
        self._shut()

    def _shut(self) -> None:
        # Messages already buffered are still received; then receive() answers None.
        if self.closed.is_set():
            return
        self.closed.set()
        with contextlib.suppress(asyncio.QueueFull):
            self._messages.put_nowait(None)

    async def close(self, grace: float = 5.0) -> None:
        """Sends a normal close, waits up to `grace` for the peer's answer, then hangs up."""
        if self._conn.state == ConnectionState.OPEN:
            with contextlib.suppress(ConnectionError, OSError, LocalProtocolError):
                await self._send(self._conn.send(CloseConnection(code=1000)))
        with contextlib.suppress(TimeoutError):
            await asyncio.wait_for(self.closed.wait(), grace)
        self._shut()
        self._writer.close()
        if self._task is not None:
            self._task.cancel()
            with contextlib.suppress(asyncio.CancelledError, Exception):
                await self._task


class Channel:
    """One channel of a channel-protocol session, with the interface of a SPDY stream."""

    def __init__(self, mux: ChannelMux, index: int) -> None:
        self._mux = mux
        self.index = index
        self.incoming: asyncio.Queue[bytes | None] = asyncio.Queue(BUFFERED_MESSAGES)
        self.eof = False

    async def read(self) -> bytes:
        if self.eof and self.incoming.empty():
            return b""
        chunk = await self.incoming.get()
        if chunk is None:
            self.eof = True
            return b""
        return chunk

    async def write(self, data: bytes) -> None:
        if data:
            await self._mux.send(self.index, data)

    async def close(self) -> None:
        # The end of an output is the end of the connection in these protocols.
        pass

    def end(self) -> None:
        self.eof = True
        with contextlib.suppress(asyncio.QueueFull):
            self.incoming.put_nowait(None)


class ChannelMux:
    """Demultiplexes a channel protocol's messages into `Channel`s (by index)."""

    def __init__(self, ws: WebSocket, protocol: str, indexes: list[int]) -> None:
        self._ws = ws
        self._base64 = "base64" in protocol
        self._v5 = protocol == V5
        self.channels = {i: Channel(self, i) for i in indexes}
        self._task: asyncio.Task[None] | None = None

    def start(self) -> None:
        self._task = asyncio.create_task(self._run())

    async def send(self, index: int, data: bytes) -> None:
        if self._base64:
            await self._ws.send(str(index) + base64.b64encode(data).decode())
        else:
            await self._ws.send(bytes([index]) + data)

    def _decode(self, message: bytes | str) -> tuple[int, bytes] | None:
        if isinstance(message, str):
            if not self._base64 or not message or not message[0].isdigit():
                return None
            try:
                return int(message[0]), base64.b64decode(message[1:], validate=True)
            except (binascii.Error, ValueError):
                return None
        if not message:
            return None
        return message[0], message[1:]

    async def _run(self) -> None:
        try:
            while (message := await self._ws.receive()) is not None:
                decoded = self._decode(message)
                if decoded is None:
                    continue
                index, data = decoded
                if self._v5 and index == CLOSE_SIGNAL and data:
                    closed = self.channels.get(data[0])
                    if closed is not None and not closed.eof:
                        await closed.incoming.put(None)
                    continue
                channel = self.channels.get(index)
                if channel is not None and data and not channel.eof:
                    # Waits while the channel's reader is behind: backpressure.
                    await channel.incoming.put(data)
        finally:
            for channel in self.channels.values():
                channel.end()

    async def stop(self) -> None:
        if self._task is not None:
            self._task.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await self._task


class TunnelReader:
    """The bytes of a WebSocket's binary messages as one stream (SPDY tunnelled in it)."""

    def __init__(self, ws: WebSocket) -> None:
        self._ws = ws

    async def read(self, n: int = -1) -> bytes:
        while True:
            message = await self._ws.receive()
            if message is None:
                return b""
            if isinstance(message, bytes) and message:
                return message


class TunnelWriter:
    """Each write one binary message; drain waits for the socket."""

    def __init__(self, ws: WebSocket) -> None:
        self._ws = ws
        self._pending: list[bytes] = []

    def write(self, data: bytes) -> None:
        self._pending.append(data)

    async def drain(self) -> None:
        while self._pending:
            await self._ws.send(self._pending.pop(0))

    def close(self) -> None:
        self._ws.abort()

    def is_closing(self) -> bool:
        return self._ws.closed.is_set()
