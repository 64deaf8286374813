"""Pod IP addresses: choosing a free one (pure) and the persisted allocation table.

The table is one JSON file written atomically on every change, so a restart (or a crash at any
instant) never hands out an address twice. Addresses are handed out round-robin after the last
one given, like CNI's host-local, so a just-released address is not reused at once.
"""

from __future__ import annotations

import ipaddress
import threading
from collections.abc import Iterable, Mapping
from pathlib import Path

from cri_py.errors import ResourceExhausted
from cri_py.store.atomic import read_json, write_json_atomic


def gateway_of(subnet: str) -> ipaddress.IPv4Interface | ipaddress.IPv6Interface:
    """The bridge's address: the subnet's first host address, with the subnet's prefix."""
    network = ipaddress.ip_network(subnet)
    return ipaddress.ip_interface(f"{network.network_address + 1}/{network.prefixlen}")


def choose_address(subnet: str, used: Iterable[str], last: str = "") -> str:
    """The first free host address after `last` (wrapping), skipping the gateway.

    Raises ResourceExhausted when every address is taken.
    """
    network = ipaddress.ip_network(subnet)
    first = int(network.network_address) + 2  # +1 is the gateway
    end = int(network.broadcast_address)  # exclusive: the broadcast address is not a host
    if network.prefixlen >= network.max_prefixlen - 1 or first >= end:
        raise ResourceExhausted(f"subnet {subnet} has no room for pods")
    taken = {int(ipaddress.ip_address(ip)) for ip in used}
    start = first
    if last:
        after = int(ipaddress.ip_address(last)) + 1
        if first <= after < end:
            start = after
    size = end - first
    for step in range(size):
        candidate = first + (start - first + step) % size
        if candidate not in taken:
            return str(ipaddress.ip_address(candidate))
    raise ResourceExhausted(f"no free address left in {subnet} ({size} in use)")


class Allocations:
    """The address table (address -> sandbox ID), persisted at `path`. Thread-safe."""

    def __init__(self, path: Path, subnet: str) -> None:
        self._path = path
        self._subnet = subnet
        self._lock = threading.Lock()
        stored = read_json(path) or {}
        self._by_ip: dict[str, str] = dict(stored.get("allocations", {}))
        self._last: str = stored.get("last", "")

    def _save(self) -> None:
        self._path.parent.mkdir(mode=0o700, parents=True, exist_ok=True)
        write_json_atomic(self._path, {"allocations": self._by_ip, "last": self._last})

    def allocate(self, sandbox_id: str) -> str:
        """The sandbox's address; a second call for the same sandbox returns the same one."""
        with self._lock:
            for ip, owner in self._by_ip.items():
                if owner == sandbox_id:
                    return ip
            ip = choose_address(self._subnet, self._by_ip, self._last)
            self._by_ip[ip] = sandbox_id
            self._last = ip
            self._save()
            return ip

    def release(self, sandbox_id: str) -> None:
        with self._lock:
            mine = [ip for ip, owner in self._by_ip.items() if owner == sandbox_id]
            if not mine:
                return
            for ip in mine:
                del self._by_ip[ip]
            self._save()

    def owned(self) -> Mapping[str, str]:
        with self._lock:
            return dict(self._by_ip)

    def address_of(self, sandbox_id: str) -> str:
        with self._lock:
            return next((ip for ip, owner in self._by_ip.items() if owner == sandbox_id), "")
