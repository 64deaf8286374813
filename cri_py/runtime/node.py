"""Node-wide runtime state: what kubelet told us (pod CIDR) and the readiness we report.

The readiness conditions are computed from facts passed in, so the rules stay testable; the
service only gathers the facts.
"""

from __future__ import annotations

import ipaddress
from dataclasses import dataclass
from pathlib import Path

from cri_py.errors import InvalidArgument
from cri_py.model.network import NetworkState
from cri_py.store.atomic import read_json, write_json_atomic

RUNTIME_READY = "RuntimeReady"
NETWORK_READY = "NetworkReady"


@dataclass(frozen=True)
class Condition:
    type: str
    status: bool
    reason: str = ""
    message: str = ""


def conditions(runtime_ready: bool, network: NetworkState) -> list[Condition]:
    """The two conditions kubelet requires, in the order kubelet documents them."""
    runtime = (
        Condition(RUNTIME_READY, True)
        if runtime_ready
        else Condition(
            RUNTIME_READY, False, "RuntimeNotReady", "cri-py is not ready to run containers"
        )
    )
    return [runtime, Condition(NETWORK_READY, network.ready, network.reason, network.message)]


def validate_pod_cidr(cidr: str) -> str:
    """kubelet sends a comma-separated list (dual stack); empty means "not set"."""
    if not cidr:
        return ""
    parts = [p.strip() for p in cidr.split(",")]
    for part in parts:
        try:
            ipaddress.ip_network(part, strict=False)
        except ValueError:
            raise InvalidArgument(f"pod CIDR {part!r} is not a valid network") from None
    return ",".join(parts)


class NodeState:
    """The pod CIDR kubelet last sent, persisted so it survives a daemon restart."""

    def __init__(self, root_dir: Path) -> None:
        self._path = root_dir / "node.json"
        stored = read_json(self._path) or {}
        self.pod_cidr: str = stored.get("pod_cidr", "")

    def set_pod_cidr(self, cidr: str) -> None:
        cidr = validate_pod_cidr(cidr)
        if cidr == self.pod_cidr:
            return
        write_json_atomic(self._path, {"pod_cidr": cidr})
        self.pod_cidr = cidr
