"""hostPort for pods on the built-in network: the daemon listens on the host and relays to the pod.

CNI pods get hostPort from the `portmap` plugin (iptables); the built-in network has no
iptables rules of its own, so the runtime serves the mappings itself, as DESIGN.md says: one
listener per TCP mapping in the daemon's event loop, and one relay per connection with
bounded buffers. Listeners are opened synchronously (a taken port fails RunPodSandbox at once)
and closed when the pod's network goes. UDP and SCTP mappings are not served here.
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
from cri_py.runtime.model import PortMapping

log = get_logger("cri_py.hostports")

T = TypeVar("T")
TCP = 0
RELAY_CHUNK = 64 * 1024
CONNECT_TIMEOUT_SECONDS = 5.0


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


class HostPorts:
    """The listeners of every pod, keyed by sandbox ID; called from worker threads."""

    def __init__(self, loop: asyncio.AbstractEventLoop) -> None:
        self._loop = loop
        self._servers: dict[str, list[asyncio.Server]] = {}
        self._lock = threading.Lock()

    def _run(self, coroutine: Coroutine[Any, Any, T]) -> T:
        """Runs `coroutine` on the daemon's loop and waits for it (we are on a worker thread)."""
        return asyncio.run_coroutine_threadsafe(coroutine, self._loop).result()

    def open(self, sandbox_id: str, pod_ip: str, mappings: Sequence[PortMapping]) -> None:
        """Starts listening for every TCP hostPort of the pod; all or none."""
        served = tcp_mappings(mappings)
        if not served:
            return
        servers: list[asyncio.Server] = []
        try:
            for m in served:
                servers.append(self._run(self._listen(pod_ip, m)))
        except BaseException:
            for server in servers:
                self._run(self._close(server))
            raise
        with self._lock:
            self._servers.setdefault(sandbox_id, []).extend(servers)
        log.info(
            "hostPorts open",
            sandbox=sandbox_id,
            ports=",".join(f"{m.host_port}->{pod_ip}:{m.container_port}" for m in served),
        )

    def close(self, sandbox_id: str) -> None:
        with self._lock:
            servers = self._servers.pop(sandbox_id, [])
        for server in servers:
            self._run(self._close(server))

    def close_all(self) -> None:
        with self._lock:
            ids = list(self._servers)
        for sandbox_id in ids:
            self.close(sandbox_id)

    async def _listen(self, pod_ip: str, m: PortMapping) -> asyncio.Server:
        async def relay(client_r: asyncio.StreamReader, client_w: asyncio.StreamWriter) -> None:
            try:
                pod_r, pod_w = await asyncio.wait_for(
                    asyncio.open_connection(pod_ip, m.container_port), CONNECT_TIMEOUT_SECONDS
                )
            except (OSError, TimeoutError):
                client_w.close()
                return
            await asyncio.gather(_pipe(client_r, pod_w), _pipe(pod_r, client_w))
            for w in (client_w, pod_w):
                w.close()
                with contextlib.suppress(OSError):
                    await w.wait_closed()

        host = m.host_ip or "0.0.0.0"
        try:
            return await asyncio.start_server(
                relay, host, m.host_port, family=socket.AF_INET, reuse_address=True
            )
        except OSError as e:
            raise AlreadyExists(
                f"hostPort {host}:{m.host_port} cannot be opened: {e.strerror}"
            ) from None

    @staticmethod
    async def _close(server: asyncio.Server) -> None:
        server.close()
        await server.wait_closed()
