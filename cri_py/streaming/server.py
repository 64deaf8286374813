"""The streaming server: HTTP/1.1 (h11) on the configured address, one-time tokens from the
Exec/Attach/PortForward RPCs, the upgrade to SPDY/3.1 with the Kubernetes subprotocol
negotiation, then the session handed to the exec or port-forward handler.

Or the upgrade to WebSocket: the Kubernetes channel protocols for exec and attach, SPDY
tunnelled in WebSocket for port-forward.
"""

from __future__ import annotations

import asyncio
import contextlib
import ipaddress
import time
from collections.abc import Awaitable, Callable

import h11

from cri_py.config import StreamConfig
from cri_py.log import get_logger
from cri_py.streaming import portforward, remotecommand, websocket
from cri_py.streaming.requests import (
    AttachRequest,
    ExecRequest,
    PortForwardRequest,
    Runtime,
    StreamRequest,
)
from cri_py.streaming.session import SpdySession
from cri_py.streaming.tokens import TokenStore

log = get_logger("cri_py.streaming")

REQUEST_TIMEOUT_SECONDS = 30.0
MAX_REQUEST_HEAD_BYTES = 16 * 1024


def negotiate(offered: list[str], supported: tuple[str, ...]) -> str | None:
    """The first protocol the client offers that we support (kubelet's httpstream rule)."""
    for protocol in offered:
        if protocol in supported:
            return protocol
    return None


def header_values(request: h11.Request, name: bytes) -> list[str]:
    values = []
    for key, value in request.headers:
        if key.lower() == name:
            values += [v.strip() for v in value.decode("latin-1").split(",") if v.strip()]
    return values


class StreamServer:
    def __init__(self, config: StreamConfig, runtime: Runtime) -> None:
        self._config = config
        self._runtime = runtime
        self._tokens: TokenStore[StreamRequest] = TokenStore(time.monotonic)
        self._server: asyncio.Server | None = None
        self._connections: set[asyncio.Task[None]] = set()
        self.port = 0

    async def start(self) -> None:
        self._server = await asyncio.start_server(
            self._serve_connection, self._config.address, self._config.port
        )
        self.port = self._server.sockets[0].getsockname()[1]
        log.info("streaming server listening", address=self._config.address, port=self.port)

    async def close(self) -> None:
        if self._server is not None:
            self._server.close()
        for task in list(self._connections):
            task.cancel()
        for task in list(self._connections):
            with contextlib.suppress(asyncio.CancelledError, Exception):
                await task

    def url(self, request: StreamRequest, kind: str) -> str:
        """A one-time URL for `request` (`kind` is exec, attach or portforward)."""
        address = self._config.address
        host = f"[{address}]" if ipaddress.ip_address(address).version == 6 else address
        return f"http://{host}:{self.port}/{kind}/{self._tokens.issue(request)}"

    async def _serve_connection(
        self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter
    ) -> None:
        task = asyncio.current_task()
        assert task is not None
        self._connections.add(task)
        try:
            await self._serve(reader, writer)
        except (ConnectionError, OSError, TimeoutError, h11.ProtocolError) as e:
            log.info("streaming connection ended", error=str(e) or type(e).__name__)
        except Exception:
            log.error("streaming connection failed", exc_info=True)
        finally:
            self._connections.discard(task)
            writer.close()

    async def _read_request(
        self, conn: h11.Connection, reader: asyncio.StreamReader
    ) -> h11.Request | None:
        request = None
        while True:
            event = conn.next_event()
            if event is h11.NEED_DATA:
                conn.receive_data(await reader.read(8192))
                continue
            if isinstance(event, h11.Request):
                request = event
            elif isinstance(event, h11.EndOfMessage) or event is h11.PAUSED:
                return request
            elif isinstance(event, h11.ConnectionClosed):
                return None

    async def _serve(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        conn = h11.Connection(h11.SERVER, max_incomplete_event_size=MAX_REQUEST_HEAD_BYTES)
        request = await asyncio.wait_for(self._read_request(conn, reader), REQUEST_TIMEOUT_SECONDS)
        if request is None:
            return

        async def refuse(status: int, message: str) -> None:
            body = (message + "\n").encode()
            headers = [("Content-Type", "text/plain"), ("Content-Length", str(len(body)))]
            writer.write(conn.send(h11.Response(status_code=status, headers=headers)) or b"")
            writer.write(conn.send(h11.Data(data=body)) or b"")
            writer.write(conn.send(h11.EndOfMessage()) or b"")
            await writer.drain()

        path = request.target.decode("latin-1").split("?", 1)[0]
        parts = path.strip("/").split("/")
        if len(parts) != 2 or parts[0] not in ("exec", "attach", "portforward"):
            await refuse(404, f"no such streaming endpoint: {path}")
            return
        kind, token = parts
        stream_request = self._tokens.take(token)
        expected = {
            "exec": ExecRequest,
            "attach": AttachRequest,
            "portforward": PortForwardRequest,
        }[kind]
        if stream_request is None or not isinstance(stream_request, expected):
            await refuse(404, "unknown or expired streaming token")
            return
        upgrade = [u.lower() for u in header_values(request, b"upgrade")]
        if "websocket" in upgrade:
            await self._serve_websocket(conn, request, reader, writer, stream_request, refuse)
            return
        if "spdy/3.1" not in upgrade:
            await refuse(
                400, f"unsupported upgrade {upgrade or 'none'}: SPDY/3.1 or websocket expected"
            )
            return
        offered = header_values(request, b"x-stream-protocol-version")
        if isinstance(stream_request, PortForwardRequest):
            supported: tuple[str, ...] = (portforward.PROTOCOL,)
        else:
            supported = remotecommand.PROTOCOLS
        protocol = negotiate(offered, supported)
        if protocol is None:
            await refuse(
                403, f"no protocol in common: offered {offered}, supported {list(supported)}"
            )
            return
        switch = h11.InformationalResponse(
            status_code=101,
            headers=[
                ("Connection", "Upgrade"),
                ("Upgrade", "SPDY/3.1"),
                ("X-Stream-Protocol-Version", protocol),
            ],
        )
        writer.write(conn.send(switch) or b"")
        await writer.drain()
        log.info(
            "streaming session",
            kind=type(stream_request).__name__,
            protocol=protocol,
            transport="spdy",
        )
        initial, _ = conn.trailing_data
        session = SpdySession(
            reader,
            writer,
            bytes(initial),
            self._config.idle_timeout_seconds,
            self._config.max_streams_per_session,
        )
        session.start()
        try:
            if isinstance(stream_request, PortForwardRequest):
                await portforward.serve_portforward(
                    session, stream_request, self._config.max_pending_port_forward_streams
                )
            elif isinstance(stream_request, AttachRequest):
                await remotecommand.serve_attach(session, stream_request, protocol, self._runtime)
            elif isinstance(stream_request, ExecRequest):
                await remotecommand.serve_exec(session, stream_request, protocol, self._runtime)
        finally:
            await session.close()

    async def _serve_websocket(
        self,
        conn: h11.Connection,
        request: h11.Request,
        reader: asyncio.StreamReader,
        writer: asyncio.StreamWriter,
        stream_request: StreamRequest,
        refuse: Callable[[int, str], Awaitable[None]],
    ) -> None:
        keys = [v for k, v in request.headers if k.lower() == b"sec-websocket-key"]
        if len(keys) != 1:
            await refuse(400, "a WebSocket upgrade needs one Sec-WebSocket-Key")
            return
        offered = header_values(request, b"sec-websocket-protocol")
        forward = isinstance(stream_request, PortForwardRequest)
        supported = (websocket.TUNNEL_PROTOCOL,) if forward else websocket.CHANNEL_PROTOCOLS
        protocol = negotiate(offered, supported)
        if protocol is None and (offered or forward):
            await refuse(
                403, f"no protocol in common: offered {offered}, supported {list(supported)}"
            )
            return
        switch = h11.InformationalResponse(
            status_code=101, headers=websocket.accept_headers(keys[0], protocol or "")
        )
        writer.write(conn.send(switch) or b"")
        await writer.drain()
        log.info(
            "streaming session",
            kind=type(stream_request).__name__,
            protocol=protocol or "-",
            transport="websocket",
        )
        initial, _ = conn.trailing_data
        ws = websocket.WebSocket(reader, writer, bytes(initial), self._config.idle_timeout_seconds)
        ws.start()
        try:
            if isinstance(stream_request, PortForwardRequest):
                session = SpdySession(
                    websocket.TunnelReader(ws),
                    websocket.TunnelWriter(ws),
                    b"",
                    self._config.idle_timeout_seconds,
                    self._config.max_streams_per_session,
                )
                session.start()
                try:
                    await portforward.serve_portforward(
                        session, stream_request, self._config.max_pending_port_forward_streams
                    )
                finally:
                    await session.close(grace=0)
                return
            await self._serve_channels(ws, stream_request, protocol or websocket.V1)
        finally:
            await ws.close()

    async def _serve_channels(
        self, ws: websocket.WebSocket, request: ExecRequest | AttachRequest, protocol: str
    ) -> None:
        names = ["error"]
        names += [n for n, on in (("stdin", request.stdin), ("stdout", request.stdout)) if on]
        if request.stderr and not request.tty:
            names.append("stderr")
        if request.tty:
            names.append("resize")
        mux = websocket.ChannelMux(ws, protocol, [websocket.CHANNELS[n] for n in names])
        mux.start()
        streams = {n: mux.channels[websocket.CHANNELS[n]] for n in names}
        try:
            if isinstance(request, AttachRequest):
                await remotecommand.attach(streams, request, protocol, self._runtime)
            else:
                await remotecommand.execute(streams, request, protocol, self._runtime, ws.closed)
        finally:
            await mux.stop()
