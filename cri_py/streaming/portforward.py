"""Port-forward over a streaming session (portforward.k8s.io): for each pair of streams the
peer opens (an error and a data stream with the same requestID and port), a TCP connection to
that port on the pod's loopback, opened inside the pod's network namespace, with bytes copied
both ways; failures are reported as text on the error stream. Streams waiting for their
pair are bounded (`stream.max_pending_port_forward_streams`): one past the bound is reset.
"""

from __future__ import annotations

import asyncio
import contextlib
import socket
from pathlib import Path

from cri_py.linux.namespaces import run_in_netns
from cri_py.log import get_logger
from cri_py.streaming.requests import PortForwardRequest
from cri_py.streaming.session import SpdySession, Stream

log = get_logger("cri_py.streaming")

PROTOCOL = "portforward.k8s.io"
CONNECT_TIMEOUT_SECONDS = 10.0
READ_BYTES = 32 * 1024
DEFAULT_MAX_PENDING = 100


def connect_loopback(port: int) -> socket.socket:
    """A connected, non-blocking TCP socket to `port` on this namespace's loopback (IPv4
    first, then IPv6, as kubelet dials "localhost")."""
    failure: OSError | None = None
    for family, address in ((socket.AF_INET, "127.0.0.1"), (socket.AF_INET6, "::1")):
        sock = socket.socket(family, socket.SOCK_STREAM | socket.SOCK_CLOEXEC)
        try:
            sock.settimeout(CONNECT_TIMEOUT_SECONDS)
            sock.connect((address, port))
        except OSError as e:
            sock.close()
            failure = failure or e
            continue
        sock.setblocking(False)
        return sock
    assert failure is not None
    raise failure


def parse_port(text: str) -> int:
    port = int(text)
    if not 0 < port < 65536:
        raise ValueError(f"port {port} out of range")
    return port


async def _copy_in(stream: Stream, writer: asyncio.StreamWriter) -> None:
    """The peer's bytes into the connection; its FIN half-closes the connection."""
    while data := await stream.read():
        writer.write(data)
        await writer.drain()
    if stream.reset:
        # The peer gave up on this stream (or hung up): drop the pod's connection too, which
        # also ends the copy the other way.
        writer.close()
    elif writer.can_write_eof():
        with contextlib.suppress(OSError):
            writer.write_eof()


async def _copy_out(reader: asyncio.StreamReader, stream: Stream) -> None:
    while data := await reader.read(READ_BYTES):
        await stream.write(data)
    await stream.close()


async def forward(request: PortForwardRequest, port_text: str, data: Stream, error: Stream) -> None:
    try:
        port = parse_port(port_text)
        if request.netns:
            netns = Path(request.netns)
            sock = await asyncio.to_thread(run_in_netns, netns, lambda: connect_loopback(port))
        else:
            sock = await asyncio.to_thread(connect_loopback, port)
    except (OSError, ValueError) as e:
        message = f"error forwarding port {port_text} to pod {request.sandbox_id}, uid : {e}"
        log.info("port-forward failed", sandbox=request.sandbox_id, port=port_text, error=str(e))
        await error.write(message.encode())
        await error.close()
        await data.close()
        return
    reader, writer = await asyncio.open_connection(sock=sock)
    try:
        inbound = asyncio.create_task(_copy_in(data, writer))
        outbound = asyncio.create_task(_copy_out(reader, data))
        try:
            await outbound
            # The pod closed its side; the peer's remaining bytes have nowhere to go.
            await asyncio.wait([inbound], timeout=1.0)
        except (ConnectionError, OSError) as e:
            await error.write(f"error copying port {port}: {e}".encode())
        finally:
            inbound.cancel()
            with contextlib.suppress(asyncio.CancelledError, ConnectionError, OSError):
                await inbound
        await error.close()
    finally:
        writer.close()
        with contextlib.suppress(ConnectionError, OSError):
            await writer.wait_closed()


async def serve_portforward(
    session: SpdySession, request: PortForwardRequest, max_pending: int = DEFAULT_MAX_PENDING
) -> None:
    """Pairs streams by requestID until the peer hangs up; each pair forwards on its own.
    At most `max_pending` streams wait for the other of their pair: a stream that would start
    one more pair is reset (a client opening only halves cannot make the daemon hold them)."""
    pending: dict[str, dict[str, Stream]] = {}
    refused = 0
    tasks: set[asyncio.Task[None]] = set()
    try:
        while (stream := await session.accept()) is not None:
            kind = stream.type
            if kind not in ("data", "error"):
                log.info("port-forward: unknown stream type", type=kind)
                await stream.close()
                continue
            # Old clients send no requestID: they open the error stream, then the data one.
            key = stream.header("requestid") or f"port:{stream.header('port')}"
            # Halves the peer gave up on (reset, or hung up) wait for nothing any more.
            for stale in [k for k, p in pending.items() if all(s.finished for s in p.values())]:
                del pending[stale]
            if key not in pending and len(pending) >= max_pending:
                if not refused:  # once per session: a client cannot flood the log either
                    log.warning(
                        "port-forward: too many streams waiting for their pair; resetting",
                        sandbox=request.sandbox_id,
                        limit=max_pending,
                    )
                refused += 1
                await stream.refuse()
                continue
            if kind in pending.get(key, {}):
                # A second data (or error) stream for one requestID: not a pair, refused.
                await stream.refuse()
                continue
            pair = pending.setdefault(key, {})
            pair[kind] = stream
            if len(pair) == 2:
                del pending[key]
                task = asyncio.create_task(
                    forward(request, pair["data"].header("port"), pair["data"], pair["error"])
                )
                tasks.add(task)
                task.add_done_callback(tasks.discard)
    finally:
        for task in list(tasks):
            task.cancel()
        for task in list(tasks):
            with contextlib.suppress(asyncio.CancelledError, Exception):
                await task
