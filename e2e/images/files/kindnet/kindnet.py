"""kindnet stand-in of the cri-py lab: the pod network of a kind cluster whose nodes run cri-py.

kind's own CNI, kindnetd, lives in a nested Go module (sigs.k8s.io/kind/images/kindnetd) that
the module proxy does not serve, so the lab's kind nodes run this program instead; it is ours,
not a port of kindnetd, and does only what a kind cluster needs from it. As a DaemonSet pod on
the host network of every node (kind-config/manifests/default-cni.yaml), every RESYNC seconds:

1. reads this node's spec.podCIDRs (allocated by kube-controller-manager) and writes
   /etc/cni/net.d/10-kindnet.conflist: ptp + host-local IPAM over those ranges, portmap; the
   node's runtime (cri-py) reports the network ready once the file exists;
2. routes every other node's podCIDRs via that node's InternalIP (`ip route replace ... proto
   ROUTE_PROTOCOL`), and removes routes of that protocol no node asks for any more;
3. masquerades traffic from pods that leaves the cluster's pod subnet (POD_SUBNET) and is not
   addressed to the node itself, in its own nat chain, rewritten atomically by
   iptables-restore --noflush, and jumped to from POSTROUTING.

Nodes are polled (GET /api/v1/nodes), not watched: a list every few seconds is one short
request on a cluster of a handful of nodes, and a poll loop has no reconnect or
resourceVersion logic to get wrong. The API server is CONTROL_PLANE_ENDPOINT (kind patches it
in, so the CNI does not wait for kube-proxy's service rules) or the in-cluster service, with
the pod's service account token and CA. Standard library only; the image carries python3.11,
ip and iptables.

Environment: NODE_NAME (downward API), POD_SUBNET (comma-separated, from kind's template),
CONTROL_PLANE_ENDPOINT (host:port, optional), CNI_CONF_DIR (/etc/cni/net.d), RESYNC (5).
"""

from __future__ import annotations

import ipaddress
import json
import os
import signal
import ssl
import subprocess
import sys
import tempfile
import time
import urllib.request
from collections.abc import Iterable, Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

CONF_NAME = "10-kindnet.conflist"
NETWORK_NAME = "kindnet"
# The routing protocol number our routes carry (`ip route ... proto 75`): how we tell our
# routes from every other one on the node. 75 is unassigned in /etc/iproute2/rt_protos.
ROUTE_PROTOCOL = 75
MASQ_CHAIN = "CRI-PY-KINDNET-MASQ"
MASQ_COMMENT = "cri-py kindnet: masquerade pod traffic leaving the pod subnet"
SERVICE_ACCOUNT = Path("/var/run/secrets/kubernetes.io/serviceaccount")

Network = ipaddress.IPv4Network | ipaddress.IPv6Network


@dataclass(frozen=True)
class Node:
    name: str
    pod_cidrs: tuple[Network, ...]
    internal_ips: tuple[ipaddress.IPv4Address | ipaddress.IPv6Address, ...]


@dataclass(frozen=True)
class Route:
    destination: Network
    gateway: ipaddress.IPv4Address | ipaddress.IPv6Address


def parse_node(item: Mapping[str, Any]) -> Node:
    """A Node object of the API as the fields we use; malformed values are left out."""
    spec = item.get("spec") or {}
    cidrs = list(spec.get("podCIDRs") or [])
    if not cidrs and spec.get("podCIDR"):
        cidrs = [spec["podCIDR"]]
    networks = []
    for text in cidrs:
        try:
            networks.append(ipaddress.ip_network(text, strict=True))
        except ValueError:
            continue
    addresses = []
    for address in (item.get("status") or {}).get("addresses") or []:
        if address.get("type") == "InternalIP":
            try:
                addresses.append(ipaddress.ip_address(address.get("address", "")))
            except ValueError:
                continue
    return Node(
        name=str((item.get("metadata") or {}).get("name", "")),
        pod_cidrs=tuple(networks),
        internal_ips=tuple(addresses),
    )


def parse_subnets(text: str) -> tuple[Network, ...]:
    """POD_SUBNET as kind renders it: one CIDR, or an IPv4 and an IPv6 one comma-separated."""
    subnets = tuple(ipaddress.ip_network(part.strip()) for part in text.split(",") if part.strip())
    if not subnets:
        raise ValueError("POD_SUBNET is empty")
    return subnets


def cni_config(pod_cidrs: Sequence[Network], mtu: int) -> dict[str, Any]:
    """The node's CNI network: a veth pair per pod (ptp) with an address from the node's
    podCIDRs (host-local), a default route per family through it, and portmap for hostPort."""
    if not pod_cidrs:
        raise ValueError("the node has no podCIDR yet")
    defaults = sorted({"0.0.0.0/0" if cidr.version == 4 else "::/0" for cidr in pod_cidrs})
    ptp: dict[str, Any] = {
        "type": "ptp",
        "ipMasq": False,
        "ipam": {
            "type": "host-local",
            "dataDir": "/run/cni-ipam-state",
            "routes": [{"dst": dst} for dst in defaults],
            "ranges": [[{"subnet": str(cidr)}] for cidr in pod_cidrs],
        },
    }
    if mtu > 0:
        ptp["mtu"] = mtu
    return {
        "cniVersion": "1.0.0",
        "name": NETWORK_NAME,
        "plugins": [ptp, {"type": "portmap", "capabilities": {"portMappings": True}}],
    }


def render_config(config: Mapping[str, Any]) -> str:
    return json.dumps(config, indent=2, sort_keys=True) + "\n"


def desired_routes(self_name: str, nodes: Iterable[Node]) -> set[Route]:
    """A route to each other node's podCIDRs via its InternalIP of the same family."""
    routes = set()
    for node in nodes:
        if node.name == self_name:
            continue
        for cidr in node.pod_cidrs:
            gateway = next((ip for ip in node.internal_ips if ip.version == cidr.version), None)
            if gateway is not None:
                routes.add(Route(cidr, gateway))
    return routes


def parse_ip_routes(text: str) -> set[Route]:
    """`ip -j route show proto N` output: the routes we installed earlier."""
    routes = set()
    for item in json.loads(text or "[]"):
        try:
            routes.add(
                Route(ipaddress.ip_network(item["dst"]), ipaddress.ip_address(item["gateway"]))
            )
        except (KeyError, ValueError):
            continue
    return routes


def route_plan(desired: set[Route], current: set[Route]) -> tuple[list[Route], list[Route]]:
    """What to `ip route replace` (missing or with another gateway) and what to delete (ours,
    for a destination no node has any more), both in a stable order."""
    wanted = {route.destination for route in desired}
    add = sorted(desired - current, key=_route_key)
    remove = sorted((route for route in current if route.destination not in wanted), key=_route_key)
    return add, remove


def _route_key(route: Route) -> tuple[int, str]:
    return route.destination.version, str(route.destination)


def masquerade_restore(subnets: Sequence[Network]) -> str:
    """iptables-restore input (nat table, --noflush) that rewrites our chain: traffic to the
    pod subnet is left alone, traffic from it to anywhere else is masqueraded."""
    lines = ["*nat", f":{MASQ_CHAIN} - [0:0]"]
    lines += [f"-A {MASQ_CHAIN} -d {subnet} -j RETURN" for subnet in subnets]
    lines += [f"-A {MASQ_CHAIN} -s {subnet} -j MASQUERADE" for subnet in subnets]
    lines += ["COMMIT", ""]
    return "\n".join(lines)


def masquerade_jump() -> list[str]:
    """The POSTROUTING rule (iptables arguments after -t nat -A/-C) that sends everything not
    addressed to a local address of the node through our chain."""
    return [
        "POSTROUTING",
        "-m", "comment", "--comment", MASQ_COMMENT,
        "-m", "addrtype", "!", "--dst-type", "LOCAL",
        "-j", MASQ_CHAIN,
    ]  # fmt: skip


def interface_mtu(addresses_json: str, node_ips: Iterable[Any]) -> int:
    """The MTU of the interface holding one of the node's InternalIPs (`ip -j addr show`);
    0 when none does (the plugin's default then)."""
    wanted = {str(ip) for ip in node_ips}
    for link in json.loads(addresses_json or "[]"):
        for info in link.get("addr_info") or []:
            if info.get("local") in wanted:
                return int(link.get("mtu") or 0)
    return 0


# --------------------------------------------------------------------------------------------
# Side effects: the API, files, ip and iptables.
# --------------------------------------------------------------------------------------------


def log(message: str) -> None:
    stamp = time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime())
    print(f"{stamp} kindnet: {message}", file=sys.stderr, flush=True)


class Api:
    """GETs against the API server with the pod's service account."""

    def __init__(self, endpoint: str, account: Path = SERVICE_ACCOUNT) -> None:
        self.base = f"https://{endpoint}"
        self.account = account
        self.context = ssl.create_default_context(cafile=str(account / "ca.crt"))

    def get(self, path: str) -> Any:
        # The token is re-read every time: the kubelet rotates the projected file.
        token = (self.account / "token").read_text().strip()
        request = urllib.request.Request(
            self.base + path,
            headers={"Authorization": f"Bearer {token}", "Accept": "application/json"},
        )
        with urllib.request.urlopen(request, context=self.context, timeout=15) as response:
            return json.load(response)


def api_endpoint(environ: Mapping[str, str]) -> str:
    """CONTROL_PLANE_ENDPOINT (kind's patch) if set, else the in-cluster service."""
    endpoint = environ.get("CONTROL_PLANE_ENDPOINT", "").strip()
    if endpoint:
        return endpoint
    host = environ.get("KUBERNETES_SERVICE_HOST", "")
    port = environ.get("KUBERNETES_SERVICE_PORT", "443")
    if not host:
        raise ValueError("neither CONTROL_PLANE_ENDPOINT nor KUBERNETES_SERVICE_HOST is set")
    return f"[{host}]:{port}" if ":" in host else f"{host}:{port}"


def write_if_changed(path: Path, text: str) -> bool:
    """Write path atomically (a reader sees the old file or the new one), only if it differs."""
    try:
        if path.read_text() == text:
            return False
    except FileNotFoundError:
        pass
    path.parent.mkdir(parents=True, exist_ok=True)
    with tempfile.NamedTemporaryFile("w", dir=path.parent, prefix=".kindnet-", delete=False) as f:
        f.write(text)
    os.chmod(f.name, 0o644)
    os.replace(f.name, path)
    return True


def run(argv: list[str], stdin: str | None = None) -> str:
    done = subprocess.run(argv, input=stdin, capture_output=True, text=True, timeout=60)
    if done.returncode != 0:
        raise RuntimeError(f"{' '.join(argv)}: exit {done.returncode}: {done.stderr.strip()}")
    return done.stdout


def sync_routes(desired: set[Route]) -> None:
    current: set[Route] = set()
    for family in ("-4", "-6"):
        current |= parse_ip_routes(
            run(["ip", "-j", family, "route", "show", "proto", str(ROUTE_PROTOCOL)])
        )
    add, remove = route_plan(desired, current)
    for route in add:
        run(["ip", "route", "replace", str(route.destination), "via", str(route.gateway),
             "proto", str(ROUTE_PROTOCOL)])  # fmt: skip
        log(f"route {route.destination} via {route.gateway}")
    for route in remove:
        run(["ip", "route", "del", str(route.destination), "proto", str(ROUTE_PROTOCOL)])
        log(f"removed route {route.destination} via {route.gateway}")


def sync_masquerade(subnets: Sequence[Network]) -> None:
    for version, tool in ((4, "iptables"), (6, "ip6tables")):
        family = [subnet for subnet in subnets if subnet.version == version]
        if not family:
            continue
        run([f"{tool}-restore", "-w", "--noflush"], stdin=masquerade_restore(family))
        try:
            run([tool, "-w", "-t", "nat", "-C", *masquerade_jump()])
        except RuntimeError:
            run([tool, "-w", "-t", "nat", "-A", *masquerade_jump()])
            log(f"{tool}: masquerading traffic from {', '.join(map(str, family))}")


def main(environ: Mapping[str, str] = os.environ) -> int:
    node_name = environ.get("NODE_NAME", "")
    if not node_name:
        log("NODE_NAME is not set (the DaemonSet passes spec.nodeName)")
        return 2
    subnets = parse_subnets(environ.get("POD_SUBNET", ""))
    conf = Path(environ.get("CNI_CONF_DIR", "/etc/cni/net.d")) / CONF_NAME
    resync = float(environ.get("RESYNC", "5"))
    api = Api(api_endpoint(environ))
    signal.signal(signal.SIGTERM, lambda *_: sys.exit(0))
    log(f"node {node_name}, pod subnet {', '.join(map(str, subnets))}, API {api.base}")
    while True:
        try:
            nodes = [parse_node(item) for item in api.get("/api/v1/nodes").get("items", [])]
            me = next((node for node in nodes if node.name == node_name), None)
            if me is None or not me.pod_cidrs:
                log(f"waiting for node {node_name} to get a podCIDR")
            else:
                mtu = interface_mtu(run(["ip", "-j", "addr", "show"]), me.internal_ips)
                if write_if_changed(conf, render_config(cni_config(me.pod_cidrs, mtu))):
                    log(f"wrote {conf} for {', '.join(map(str, me.pod_cidrs))} (mtu {mtu})")
                sync_routes(desired_routes(node_name, nodes))
                sync_masquerade(subnets)
        except Exception as error:  # keep serving: the next round retries
            log(f"sync failed: {error}")
        time.sleep(resync)


if __name__ == "__main__":
    sys.exit(main())
