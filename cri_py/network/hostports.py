"""hostPort for pods on the built-in network: the daemon listens on the host and relays to the pod.

CNI pods get hostPort from the `portmap` plugin (iptables); the built-in network has no
iptables rules of its own, so the runtime serves the mappings itself: one
listener per TCP mapping in the daemon's event loop, and one relay per connection with
bounded buffers and a bounded number of connections per listener (`network.
hostport_max_connections`: anyone who reaches the port could otherwise make the daemon hold
sockets without end; one past the bound is closed as it arrives). Listeners are opened
synchronously (a taken port fails RunPodSandbox at once) and closed, with their connections,
when the pod's network goes. UDP and SCTP mappings are not served here.
"""

from __future__ import annotations

import asyncio
import contextlib
import socket
import threading
from collections.abc import Coroutine, Sequence
from typing import Any, TypeVar

from cri_py.errors import AlreadyExists, InvalidArgument
from cri_py.log import get_logger
from cri_py.model.sandbox import PortMapping

log = get_logger("cri_py.hostports")

T = TypeVar("T")
TCP = 0
RELAY_CHUNK = 64 * 1024
CONNECT_TIMEOUT_SECONDS = 5.0
DEFAULT_MAX_CONNECTIONS = 1024


def tcp_mappings(mappings: Sequence[PortMapping]) -> list[PortMapping]:
    """The mappings this relay serves; bad ones are InvalidArgument before anything opens."""
    served = []
    for m in mappings:
        if m.host_port == 0:
            continue  # containerPort only: documentation, nothing to publish
        if not (0 < m.host_port < 65536 and 0 < m.container_port < 65536):
            raise InvalidArgument(f"port mapping {m.host_port}->{m.container_port} out of range")
        if m.protocol != TCP:
            log.warning(
                "hostPort not served on the built-in network",
                host_port=m.host_port,
                protocol=m.protocol,
            )
            continue
        served.append(m)
    return served


async def _pipe(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
    try:
        while data := await reader.read(RELAY_CHUNK):
            writer.write(data)
            await writer.drain()  # a slow peer stops our reads: memory stays bounded
        if writer.can_write_eof():
            writer.write_eof()
    except (ConnectionError, OSError):
        pass


class Relay:
    """One hostPort's listener and the connections it relays (at most `max_connections`)."""

    def __init__(self, pod_ip: str, mapping: PortMapping, max_connections: int) -> None:
        self.pod_ip = pod_ip
        self.mapping = mapping
        self.max_connections = max_connections
        self.server: asyncio.Server | None = None
        # Writers of the relayed connections (client's and pod's), to close them with us.
        self.connections: set[asyncio.StreamWriter] = set()
        self.active = 0
        self.refused = 0

    async def listen(self) -> None:
        m = self.mapping
        host = m.host_ip or "0.0.0.0"
        try:
            self.server = await asyncio.start_server(
                self.relay, host, m.host_port, family=socket.AF_INET, reuse_address=True
            )
        except OSError as e:
            raise AlreadyExists(
                f"hostPort {host}:{m.host_port} cannot be opened: {e.strerror}"
            ) from None

    async def relay(self, client_r: asyncio.StreamReader, client_w: asyncio.StreamWriter) -> None:
        if self.active >= self.max_connections:
            if not self.refused:
                log.warning(
                    "hostPort at its connection limit; closing new connections",
                    host_port=self.mapping.host_port,
                    limit=self.max_connections,
                )
            self.refused += 1
            client_w.close()
            return
        self.active += 1
        self.connections.add(client_w)
        try:
            try:
                pod_r, pod_w = await asyncio.wait_for(
                    asyncio.open_connection(self.pod_ip, self.mapping.container_port),
                    CONNECT_TIMEOUT_SECONDS,
                )
            except (OSError, TimeoutError):
                return
            self.connections.add(pod_w)
            try:
                await asyncio.gather(_pipe(client_r, pod_w), _pipe(pod_r, client_w))
            finally:
                self.connections.discard(pod_w)
                pod_w.close()
                with contextlib.suppress(OSError):
                    await pod_w.wait_closed()
        finally:
            self.active -= 1
            self.connections.discard(client_w)
            client_w.close()
            with contextlib.suppress(OSError):
                await client_w.wait_closed()

    async def close(self) -> None:
        """Stops listening and ends every relayed connection (the pod is going away)."""
        if self.server is not None:
            self.server.close()
        for writer in list(self.connections):
            writer.close()
        if self.server is not None:
            await self.server.wait_closed()


class HostPorts:
    """The listeners of every pod, keyed by sandbox ID; called from worker threads."""

    def __init__(
        self, loop: asyncio.AbstractEventLoop, max_connections: int = DEFAULT_MAX_CONNECTIONS
    ) -> None:
        self._loop = loop
        self._max_connections = max_connections
        self._relays: dict[str, list[Relay]] = {}
        self._lock = threading.Lock()

    def _run(self, coroutine: Coroutine[Any, Any, T]) -> T:
        """Runs `coroutine` on the daemon's loop and waits for it (we are on a worker thread)."""
        return asyncio.run_coroutine_threadsafe(coroutine, self._loop).result()

    def open(self, sandbox_id: str, pod_ip: str, mappings: Sequence[PortMapping]) -> None:
        """Starts listening for every TCP hostPort of the pod; all or none."""
        served = tcp_mappings(mappings)
        if not served:
            return
        relays: list[Relay] = []
        try:
            for m in served:
                relay = Relay(pod_ip, m, self._max_connections)
                self._run(relay.listen())
                relays.append(relay)
        except BaseException:
            for opened in relays:
                self._run(opened.close())
            raise
        with self._lock:
            self._relays.setdefault(sandbox_id, []).extend(relays)
        log.info(
            "hostPorts open",
            sandbox=sandbox_id,
            ports=",".join(f"{m.host_port}->{pod_ip}:{m.container_port}" for m in served),
        )

    def close(self, sandbox_id: str) -> None:
        with self._lock:
            relays = self._relays.pop(sandbox_id, [])
        for relay in relays:
            self._run(relay.close())

    def close_all(self) -> None:
        with self._lock:
            ids = list(self._relays)
        for sandbox_id in ids:
            self.close(sandbox_id)
