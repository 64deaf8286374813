"""The built-in network, used when no CNI config exists: a bridge on the host (default `cri-py0`,
holding the subnet's first address), a veth pair per pod with `eth0` in the pod's network
namespace, loopback up, and a default route via the bridge. Netlink through pyroute2, in process.

IPv4 forwarding is left as the node has it: the host reaches pods on the bridge without it. Pod
traffic leaving the node (forwarding + masquerade) is not set up; hostPort is served by the
daemon itself (`cri_py.network.hostports`).

pyroute2's sync API runs its own event loop, so every call here must run on a worker thread,
never on the daemon's event loop thread; netns work runs on a throw-away thread (run_in_netns).

pyroute2 is imported by the methods that talk netlink, not with this module: it is ~12 MiB of the
daemon's memory, and a node on CNI only (`network.builtin: false`) never needs it.
"""

from __future__ import annotations

import errno
import os
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from cri_py.config import NetworkConfig
from cri_py.linux.namespaces import run_in_netns
from cri_py.log import get_logger
from cri_py.model.network import NetworkState
from cri_py.network.ipam import Allocations, gateway_of

log = get_logger("cri_py.network")

# Every link cri-py creates on the host starts with this; a leak checker can rely on it.
LINK_PREFIX = "cri-py"
POD_INTERFACE = "eth0"
IFF_UP = 0x1


def veth_name(sandbox_id: str) -> str:
    """The host end of a pod's veth pair: the prefix and 9 hex digits of the ID (15 chars, the
    kernel's IFNAMSIZ limit)."""
    return f"{LINK_PREFIX}{sandbox_id[:9]}"


@dataclass(frozen=True)
class PodNetwork:
    interface: str
    ip: str
    prefix_length: int
    gateway: str


def _link_index(ipr: Any, name: str) -> int | None:
    found = ipr.link_lookup(ifname=name)
    return int(found[0]) if found else None


class BuiltinNetwork:
    def __init__(self, config: NetworkConfig, state_dir: Path) -> None:
        self.bridge = config.bridge
        self.subnet = config.subnet
        self.gateway = gateway_of(config.subnet)
        self.allocations = Allocations(state_dir / "allocations.json", config.subnet)

    def state(self) -> NetworkState:
        """Ready when the bridge exists and is up; read from sysfs, cheap enough for Status."""
        try:
            flags = int((Path("/sys/class/net") / self.bridge / "flags").read_text(), 16)
        except (FileNotFoundError, ValueError):
            return NetworkState(
                False, "NetworkPluginNotReady", f"bridge {self.bridge} does not exist yet"
            )
        if not flags & IFF_UP:
            return NetworkState(False, "NetworkPluginNotReady", f"bridge {self.bridge} is down")
        return NetworkState(True)

    def _ensure_bridge(self, ipr: Any) -> int:
        from pyroute2.netlink.exceptions import NetlinkError

        index = _link_index(ipr, self.bridge)
        if index is None:
            try:
                ipr.link("add", ifname=self.bridge, kind="bridge")
                log.info("bridge created", bridge=self.bridge, address=str(self.gateway))
            except NetlinkError as e:
                if e.code != errno.EEXIST:
                    raise
            index = _link_index(ipr, self.bridge)
            if index is None:
                raise OSError(errno.ENODEV, f"bridge {self.bridge} vanished after creation")
        try:
            ipr.addr(
                "add",
                index=index,
                address=str(self.gateway.ip),
                prefixlen=self.gateway.network.prefixlen,
            )
        except NetlinkError as e:
            if e.code != errno.EEXIST:
                raise
        ipr.link("set", index=index, state="up")
        return index

    def ensure_bridge(self) -> NetworkState:
        """Creates (or repairs) the bridge; returns the resulting readiness."""
        from pyroute2 import IPRoute
        from pyroute2.netlink.exceptions import NetlinkError

        try:
            with IPRoute() as ipr:
                self._ensure_bridge(ipr)
        except NetlinkError as e:
            raise OSError(e.code, f"bridge {self.bridge}: {e}") from e
        return self.state()

    def setup(self, sandbox_id: str, netns: Path) -> PodNetwork:
        """Gives the pod in `netns` its address and link. On failure, partial work stays for
        `teardown` (which callers register before calling this) to undo."""
        from pyroute2 import IPRoute

        ip = self.allocations.allocate(sandbox_id)
        host_end = veth_name(sandbox_id)
        prefix = self.gateway.network.prefixlen
        gateway = str(self.gateway.ip)
        with IPRoute() as ipr:
            bridge_index = self._ensure_bridge(ipr)
            fd = os.open(netns, os.O_RDONLY | os.O_CLOEXEC)
            try:
                ipr.link(
                    "add",
                    ifname=host_end,
                    kind="veth",
                    peer={"ifname": POD_INTERFACE, "net_ns_fd": fd},
                )
            finally:
                os.close(fd)
            index = _link_index(ipr, host_end)
            if index is None:
                raise OSError(errno.ENODEV, f"veth {host_end} vanished after creation")
            ipr.link("set", index=index, master=bridge_index, state="up")

        def configure_pod_side() -> None:
            with IPRoute() as pod:
                lo = _link_index(pod, "lo")
                if lo is not None:
                    pod.link("set", index=lo, state="up")
                eth0 = _link_index(pod, POD_INTERFACE)
                if eth0 is None:
                    raise OSError(errno.ENODEV, f"{POD_INTERFACE} missing in {netns}")
                pod.addr("add", index=eth0, address=ip, prefixlen=prefix)
                pod.link("set", index=eth0, state="up")
                pod.route("add", dst="0.0.0.0/0", gateway=gateway)

        run_in_netns(netns, configure_pod_side)
        return PodNetwork(POD_INTERFACE, ip, prefix, gateway)

    def teardown(self, sandbox_id: str) -> None:
        """Deletes the pod's veth pair (both ends) and releases its address; idempotent."""
        from pyroute2 import IPRoute
        from pyroute2.netlink.exceptions import NetlinkError

        host_end = veth_name(sandbox_id)
        with IPRoute() as ipr:
            index = _link_index(ipr, host_end)
            if index is not None:
                try:
                    ipr.link("del", index=index)
                except NetlinkError as e:
                    if e.code != errno.ENODEV:
                        raise
        self.allocations.release(sandbox_id)
