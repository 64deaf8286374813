"""A SPDY/3.1 session over an asyncio connection: the peer's streams, their data, and writes.

Framing is `spdy.Connection`'s; this module owns the socket loop, the per-stream buffers
(bounded: when a stream's handler does not keep up, the session stops reading the socket, so
a fast peer cannot make the daemon's memory grow), how many streams may be open at once (more
are refused with RST_STREAM: a client holding one valid token cannot open streams without end)
and the idle timeout. What the streams mean (exec, port-forward) is the handlers'.
"""

from __future__ import annotations

import asyncio
import contextlib
import time
from typing import Protocol

from cri_py.log import get_logger
from cri_py.streaming import spdy

log = get_logger("cri_py.streaming")

# Chunks buffered per stream before the session stops reading the connection.
STREAM_BUFFER_CHUNKS = 16
READ_BYTES = 64 * 1024
# The largest DATA frame we send (spdystream accepts any; smaller frames interleave streams).
WRITE_CHUNK = 32 * 1024
# Streams open at once on one session (`stream.max_streams_per_session`).
DEFAULT_MAX_STREAMS = 1000


class Reader(Protocol):
    async def read(self, n: int = -1) -> bytes: ...


class Writer(Protocol):
    def write(self, data: bytes) -> None: ...

    async def drain(self) -> None: ...

    def close(self) -> None: ...

    def is_closing(self) -> bool: ...


class DataStream(Protocol):
    """What exec and attach need of a stream, SPDY's or a WebSocket channel."""

    async def read(self) -> bytes: ...

    async def write(self, data: bytes) -> None: ...

    async def close(self) -> None: ...


class Stream:
    """One stream the peer opened: its headers, the data it sends (read() -> b"" at its FIN
    or reset) and our side (write, then close for FIN)."""

    def __init__(self, session: SpdySession, stream_id: int, headers: dict[str, list[str]]):
        self.session = session
        self.id = stream_id
        self.headers = headers
        self.incoming: asyncio.Queue[bytes | None] = asyncio.Queue(STREAM_BUFFER_CHUNKS)
        self.remote_closed = False
        self.local_closed = False
        self.reset = False

    def header(self, name: str) -> str:
        values = self.headers.get(name.lower())
        return values[0] if values else ""

    @property
    def type(self) -> str:
        return self.header("streamtype")

    async def read(self) -> bytes:
        if self.reset:
            return b""
        chunk = await self.incoming.get()
        if chunk is None:
            # Later reads see EOF too.
            self.incoming.put_nowait(None)
            return b""
        return chunk

    async def write(self, data: bytes) -> None:
        for start in range(0, len(data), WRITE_CHUNK):
            if self.local_closed or self.reset:
                return
            await self.session.send_data(self.id, data[start : start + WRITE_CHUNK], False)

    async def close(self) -> None:
        if not self.local_closed and not self.reset:
            self.local_closed = True
            await self.session.send_data(self.id, b"", True)

    async def refuse(self, status: int = spdy.REFUSED_STREAM) -> None:
        """Ends the stream both ways at once (RST_STREAM): the session forgets it."""
        if not self.reset:
            await self.session.reset_stream(self.id, status)

    @property
    def finished(self) -> bool:
        """Closed both ways or reset: it no longer counts against the session's limit."""
        return self.reset or (self.remote_closed and self.local_closed)

    def _end(self) -> None:
        if not self.remote_closed:
            self.remote_closed = True
            with contextlib.suppress(asyncio.QueueFull):
                self.incoming.put_nowait(None)


class SpdySession:
    """Serves one upgraded connection; `accept()` yields the streams the peer opens."""

    def __init__(
        self,
        reader: Reader,
        writer: Writer,
        initial: bytes,
        idle_timeout: float,
        max_streams: int = DEFAULT_MAX_STREAMS,
    ) -> None:
        self._reader = reader
        self._writer = writer
        self._initial = initial
        self._idle_timeout = idle_timeout
        self._max_streams = max_streams
        self._conn = spdy.Connection()
        self._streams: dict[int, Stream] = {}
        self._last_stream_id = 0
        self.refused_streams = 0
        self._new: asyncio.Queue[Stream | None] = asyncio.Queue()
        self._last_activity = time.monotonic()
        self.closed = asyncio.Event()
        self._task: asyncio.Task[None] | None = None

    def start(self) -> None:
        self._task = asyncio.create_task(self._run())

    async def accept(self) -> Stream | None:
        """The next stream the peer opened; None once the connection is gone."""
        stream = await self._new.get()
        if stream is None:
            self._new.put_nowait(None)
        return stream

    async def _flush(self) -> None:
        data = self._conn.data_to_send()
        if data and not self._writer.is_closing():
            self._last_activity = time.monotonic()
            self._writer.write(data)
            await self._writer.drain()

    async def send_data(self, stream_id: int, data: bytes, fin: bool) -> None:
        if self.closed.is_set():
            return
        self._conn.send_data(stream_id, data, fin)
        try:
            await self._flush()
        except (ConnectionError, OSError):
            self._shut()

    async def reset_stream(self, stream_id: int, status: int) -> None:
        stream = self._streams.pop(stream_id, None)
        if stream is not None:
            stream.reset = True
            stream._end()
        if self.closed.is_set():
            return
        self._conn.send_rst_stream(stream_id, status)
        try:
            await self._flush()
        except (ConnectionError, OSError):
            self._shut()

    def _open_streams(self) -> int:
        """Streams that still count; finished ones are forgotten on the way."""
        for stream_id in [i for i, s in self._streams.items() if s.finished]:
            del self._streams[stream_id]
        return len(self._streams)

    async def _run(self) -> None:
        try:
            data = self._initial
            while True:
                if data:
                    self._last_activity = time.monotonic()
                    for frame in self._conn.receive_data(data):
                        await self._handle(frame)
                    await self._flush()
                idle = self._idle_timeout - (time.monotonic() - self._last_activity)
                if idle <= 0:
                    log.info("streaming connection idle; closing", seconds=self._idle_timeout)
                    return
                try:
                    data = await asyncio.wait_for(self._reader.read(READ_BYTES), idle)
                except TimeoutError:
                    continue
                if not data:
                    return
        except spdy.SpdyError as e:
            log.warning("streaming connection broke the SPDY protocol", error=str(e))
            self._conn.send_goaway(0, spdy.PROTOCOL_ERROR)
            with contextlib.suppress(ConnectionError, OSError):
                await self._flush()
        except (ConnectionError, OSError):
            pass
        finally:
            self._shut()

    async def _handle(self, frame: spdy.Frame) -> None:
        match frame:
            case spdy.SynStream():
                # A client's stream IDs are odd and increase (SPDY/3 2.3.2): an old one could
                # otherwise be opened again once forgotten.
                if frame.stream_id <= self._last_stream_id or frame.stream_id % 2 == 0:
                    self._conn.send_rst_stream(frame.stream_id, spdy.PROTOCOL_ERROR)
                    return
                self._last_stream_id = frame.stream_id
                if self._open_streams() >= self._max_streams:
                    if not self.refused_streams:
                        log.warning(
                            "streaming connection at its stream limit; refusing streams",
                            limit=self._max_streams,
                        )
                    self.refused_streams += 1
                    self._conn.send_rst_stream(frame.stream_id, spdy.REFUSED_STREAM)
                    return
                stream = Stream(self, frame.stream_id, frame.headers)
                self._streams[frame.stream_id] = stream
                self._conn.send_syn_reply(frame.stream_id)
                if frame.fin:
                    stream._end()
                self._new.put_nowait(stream)
            case spdy.Data():
                target = self._streams.get(frame.stream_id)
                if target is None or target.reset:
                    return
                if frame.data and not target.remote_closed:
                    # Blocks the read loop while the stream's handler is behind: backpressure.
                    await target.incoming.put(frame.data)
                if frame.fin:
                    await target.incoming.put(None)
                    target.remote_closed = True
            case spdy.RstStream():
                target = self._streams.pop(frame.stream_id, None)
                if target is not None:
                    target.reset = True
                    while not target.incoming.empty():
                        target.incoming.get_nowait()
                    target._end()
                    target.incoming.put_nowait(None)
            case spdy.Ping():
                self._conn.send_ping(frame.ping_id)
            case spdy.GoAway():
                raise ConnectionResetError("peer sent GOAWAY")
            case _:
                # SETTINGS, WINDOW_UPDATE, HEADERS: nothing Kubernetes peers rely on.
                pass

    def _shut(self) -> None:
        if self.closed.is_set():
            return
        self.closed.set()
        for stream in self._streams.values():
            stream.reset = True
            while not stream.incoming.empty():
                stream.incoming.get_nowait()
            stream._end()
            with contextlib.suppress(asyncio.QueueFull):
                stream.incoming.put_nowait(None)
        self._new.put_nowait(None)
        self._writer.close()

    async def close(self, grace: float = 5.0) -> None:
        """Ends the session: waits up to `grace` for the peer to hang up first (so no unread
        input makes our kernel reset the connection and lose output still in flight)."""
        with contextlib.suppress(TimeoutError):
            await asyncio.wait_for(self.closed.wait(), grace)
        self._shut()
        if self._task is not None:
            self._task.cancel()
            with contextlib.suppress(asyncio.CancelledError, Exception):
                await self._task
