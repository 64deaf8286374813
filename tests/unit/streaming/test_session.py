"""The SPDY session's bounds against a client that holds a valid token: streams open at once
(more are refused with RST_STREAM, finished ones stop counting) and port-forward halves waiting
for their pair. The peer is a `spdy.Connection` over in-memory pipes."""

from __future__ import annotations

import asyncio
import contextlib
from collections.abc import AsyncIterator

from cri_py.streaming import spdy
from cri_py.streaming.portforward import serve_portforward
from cri_py.streaming.requests import PortForwardRequest
from cri_py.streaming.session import SpdySession, Stream


class Pipe:
    """The session's socket: what the peer sends comes out of read(), what the session
    writes is decoded by the peer's Connection into `frames`."""

    def __init__(self) -> None:
        self.incoming: asyncio.Queue[bytes] = asyncio.Queue()
        self.peer = spdy.Connection()
        self.frames: list[spdy.Frame] = []
        self.arrived = asyncio.Event()
        self.closing = False

    async def read(self, n: int = -1) -> bytes:
        return await self.incoming.get()

    def write(self, data: bytes) -> None:
        self.frames += self.peer.receive_data(data)
        self.arrived.set()

    async def drain(self) -> None:
        pass

    def close(self) -> None:
        self.closing = True

    def is_closing(self) -> bool:
        return self.closing

    def send(self) -> None:
        self.incoming.put_nowait(self.peer.data_to_send())

    def open(self, stream_id: int, **headers: str) -> None:
        self.peer.send_syn_stream(stream_id, {k: [v] for k, v in headers.items()})
        self.send()

    async def answer_to(self, stream_id: int) -> spdy.Frame:
        """The session's SYN_REPLY or RST_STREAM for `stream_id` (waits for it)."""
        async with asyncio.timeout(5):
            while True:
                for frame in self.frames:
                    if isinstance(frame, spdy.SynReply | spdy.RstStream) and (
                        frame.stream_id == stream_id
                    ):
                        return frame
                self.arrived.clear()
                await self.arrived.wait()


@contextlib.asynccontextmanager
async def session_over(pipe: Pipe, max_streams: int) -> AsyncIterator[SpdySession]:
    session = SpdySession(pipe, pipe, b"", idle_timeout=60, max_streams=max_streams)
    session.start()
    try:
        yield session
    finally:
        pipe.incoming.put_nowait(b"")  # the peer hangs up
        await session.close(grace=1)


async def accept(session: SpdySession) -> Stream:
    async with asyncio.timeout(5):
        stream = await session.accept()
    assert stream is not None
    return stream


async def test_streams_past_the_limit_are_refused_and_never_reach_a_handler() -> None:
    pipe = Pipe()
    async with session_over(pipe, max_streams=3) as session:
        for stream_id in (1, 3, 5):
            pipe.open(stream_id, streamtype="data")
            assert isinstance(await pipe.answer_to(stream_id), spdy.SynReply)
        pipe.open(7, streamtype="data")
        refused = await pipe.answer_to(7)
        assert isinstance(refused, spdy.RstStream) and refused.status == spdy.REFUSED_STREAM
        assert [(await accept(session)).id for _ in range(3)] == [1, 3, 5]
        assert session._new.empty() and session.refused_streams == 1


async def test_finished_streams_stop_counting_so_a_long_session_keeps_working() -> None:
    pipe = Pipe()
    async with session_over(pipe, max_streams=2) as session:
        for round_ in range(5):  # 10 streams over the session's life, 2 at a time
            ids = (4 * round_ + 1, 4 * round_ + 3)
            for stream_id in ids:
                pipe.open(stream_id)
                assert isinstance(await pipe.answer_to(stream_id), spdy.SynReply)
            first, second = await accept(session), await accept(session)
            # One ends both ways (FIN each), the other is reset by the peer.
            pipe.peer.send_data(first.id, b"", fin=True)
            pipe.peer.send_rst_stream(second.id, spdy.CANCEL)
            pipe.send()
            assert await first.read() == b""
            await first.close()
            assert await second.read() == b""
        assert session.refused_streams == 0
        assert len(session._streams) <= 2  # nothing kept of the finished ones


async def test_a_stream_id_that_does_not_increase_is_a_protocol_error() -> None:
    pipe = Pipe()
    async with session_over(pipe, max_streams=10):
        pipe.open(5)
        assert isinstance(await pipe.answer_to(5), spdy.SynReply)
        pipe.open(3)
        reused = await pipe.answer_to(3)
        assert isinstance(reused, spdy.RstStream) and reused.status == spdy.PROTOCOL_ERROR


async def test_port_forward_halves_past_the_limit_are_reset_and_pairs_still_work(
    echo_port: int,
) -> None:
    pipe = Pipe()
    async with session_over(pipe, max_streams=100) as session:
        forwarding = asyncio.create_task(
            serve_portforward(session, PortForwardRequest("pod", ""), max_pending=3)
        )
        port = str(echo_port)
        # Three error streams whose data stream never comes: the limit.
        for request_id, stream_id in enumerate((1, 3, 5)):
            pipe.open(stream_id, streamtype="error", port=port, requestid=str(request_id))
        pipe.open(7, streamtype="error", port=port, requestid="9")
        for stream_id in (1, 3, 5):
            assert isinstance(await pipe.answer_to(stream_id), spdy.SynReply)
        async with asyncio.timeout(5):
            while not any(isinstance(f, spdy.RstStream) and f.stream_id == 7 for f in pipe.frames):
                pipe.arrived.clear()
                await pipe.arrived.wait()
        (reset,) = [f for f in pipe.frames if isinstance(f, spdy.RstStream)]
        assert reset.status == spdy.REFUSED_STREAM
        # The pending halves are intact: the data stream of request 0 pairs and forwards.
        pipe.open(9, streamtype="data", port=port, requestid="0")
        pipe.peer.send_data(9, b"ping")
        pipe.send()
        async with asyncio.timeout(5):
            while b"ping" not in b"".join(
                f.data for f in pipe.frames if isinstance(f, spdy.Data) and f.stream_id == 9
            ):
                pipe.arrived.clear()
                await pipe.arrived.wait()
        # Waiting now: requests 1 and 2; request 10 fills the third place.
        pipe.open(11, streamtype="error", port=port, requestid="10")
        # A half the peer gives up on frees its place: request 1's error stream is reset, so
        # request 11 is taken and request 12 is the one refused.
        pipe.peer.send_rst_stream(3, spdy.CANCEL)
        pipe.open(13, streamtype="error", port=port, requestid="11")
        pipe.open(15, streamtype="error", port=port, requestid="12")
        async with asyncio.timeout(5):
            while not any(isinstance(f, spdy.RstStream) and f.stream_id == 15 for f in pipe.frames):
                pipe.arrived.clear()
                await pipe.arrived.wait()
        # Streams are handled in order: 11 and 13 were taken before 15 was refused.
        assert [f.stream_id for f in pipe.frames if isinstance(f, spdy.RstStream)] == [7, 15]
        pipe.incoming.put_nowait(b"")
        async with asyncio.timeout(5):
            await forwarding
