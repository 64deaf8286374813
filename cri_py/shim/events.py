"""The daemon's event feed from its shims: one subscribed connection per shim, all read by one
thread. A shim pushes an `exited` event (`messages.Exited`) when a container's process ends; a
connection that closes means the shim is gone (the caller then reads the exit files the shim
left). Subscribing also learns the shim's containers and its protocol version."""

from __future__ import annotations

import contextlib
import os
import selectors
import socket
import threading
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

from cri_py.log import get_logger
from cri_py.shim import messages, protocol
from cri_py.shim.client import CALL_TIMEOUT_SECONDS, ShimError, connect_unix
from cri_py.shim.spec import SOCKET_FILE

log = get_logger("cri_py.shim")

EventHandler = Callable[[str, messages.Exited], None]
LostHandler = Callable[[str], None]


class ShimEvents:
    def __init__(self, on_event: EventHandler, on_lost: LostHandler) -> None:
        self._on_event = on_event
        self._on_lost = on_lost
        self._selector = selectors.DefaultSelector()
        self._lock = threading.Lock()
        self._connections: dict[str, tuple[socket.socket, protocol.Decoder]] = {}
        self._wake_read, self._wake_write = os.pipe2(os.O_NONBLOCK | os.O_CLOEXEC)
        self._selector.register(self._wake_read, selectors.EVENT_READ, "")
        self._closed = False
        self._thread = threading.Thread(target=self._run, name="shim-events", daemon=True)
        self._thread.start()

    def subscribed(self, sandbox_id: str) -> bool:
        with self._lock:
            return sandbox_id in self._connections

    def subscribe(self, sandbox_id: str, bundle: Path) -> messages.Subscribed:
        """Subscribes to the shim in `bundle` (once per sandbox); returns its answer, which
        lists the containers it holds. ShimError for a shim of a protocol version this daemon
        no longer speaks."""
        conn = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM | socket.SOCK_CLOEXEC)
        decoder = protocol.Decoder()
        try:
            conn.settimeout(CALL_TIMEOUT_SECONDS)
            connect_unix(conn, bundle / SOCKET_FILE)
            conn.sendall(protocol.encode(protocol.Request(1, "subscribe", {})))
            deadline = time.monotonic() + CALL_TIMEOUT_SECONDS
            result: messages.Subscribed | None = None
            early: list[protocol.Event] = []
            while result is None:
                conn.settimeout(max(0.001, deadline - time.monotonic()))
                data = conn.recv(65536)
                if not data:
                    raise ShimError(f"shim of sandbox {sandbox_id} closed the connection")
                for message in decoder.feed(data):
                    if isinstance(message, protocol.Response) and message.id == 1:
                        if message.error is not None:
                            raise ShimError(f"subscribe: {message.error.message}")
                        result = messages.Subscribed.from_wire(message.result or {})
                    elif isinstance(message, protocol.Event):
                        early.append(message)
        except (OSError, protocol.ProtocolError) as e:
            conn.close()
            raise ShimError(f"subscribing to the shim of sandbox {sandbox_id}: {e}") from e
        except BaseException:
            conn.close()
            raise
        if result.protocol < protocol.OLDEST_SUPPORTED_VERSION:
            conn.close()
            raise ShimError(
                f"the shim of sandbox {sandbox_id} speaks protocol version {result.protocol}, "
                f"older than the oldest this daemon speaks "
                f"({protocol.OLDEST_SUPPORTED_VERSION}); recreate the pod"
            )
        if result.protocol != protocol.PROTOCOL_VERSION:
            log.info(
                "shim of another release",
                sandbox=sandbox_id,
                protocol=result.protocol,
                ours=protocol.PROTOCOL_VERSION,
            )
        conn.setblocking(False)
        with self._lock:
            old = self._connections.pop(sandbox_id, None)
            if old is not None:
                self._selector.unregister(old[0])
                old[0].close()
            self._connections[sandbox_id] = (conn, decoder)
            self._selector.register(conn, selectors.EVENT_READ, sandbox_id)
        os.write(self._wake_write, b"x")
        for event in early:
            self._deliver(sandbox_id, event)
        return result

    def unsubscribe(self, sandbox_id: str) -> None:
        with self._lock:
            entry = self._connections.pop(sandbox_id, None)
            if entry is not None:
                self._selector.unregister(entry[0])
                entry[0].close()

    def close(self) -> None:
        self._closed = True
        os.write(self._wake_write, b"x")
        self._thread.join(timeout=5)
        for sandbox_id in list(self._connections):
            self.unsubscribe(sandbox_id)

    def _run(self) -> None:
        while not self._closed:
            for key, _ in self._selector.select():
                sandbox_id = key.data
                if not sandbox_id:
                    with contextlib.suppress(BlockingIOError):
                        while os.read(self._wake_read, 512):
                            pass
                    continue
                self._read(sandbox_id)

    def _read(self, sandbox_id: str) -> None:
        with self._lock:
            entry = self._connections.get(sandbox_id)
        if entry is None:
            return
        conn, decoder = entry
        try:
            data = conn.recv(65536)
            received = decoder.feed(data) if data else None
        except BlockingIOError:
            return
        except (OSError, protocol.ProtocolError):
            received = None
        if received is None:
            self.unsubscribe(sandbox_id)
            self._call(self._on_lost, sandbox_id)
            return
        for message in received:
            if isinstance(message, protocol.Event):
                self._deliver(sandbox_id, message)

    def _deliver(self, sandbox_id: str, event: protocol.Event) -> None:
        """Events this daemon knows go to the handler, typed; others (a newer shim's) are
        skipped, and a malformed one is logged."""
        if event.name != messages.Exited.NAME:
            return
        try:
            exited = messages.Exited.from_wire(event.data)
        except protocol.ProtocolError as e:
            log.error("malformed event from a shim", sandbox=sandbox_id, error=str(e))
            return
        self._call(self._on_event, sandbox_id, exited)

    @staticmethod
    def _call(handler: Callable[..., None], *args: Any) -> None:
        try:
            handler(*args)
        except Exception:
            log.error("shim event handler failed", exc_info=True)
