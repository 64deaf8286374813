"""The spec's `linux.devices` (nodes the launcher creates in the container's /dev) and
`linux.resources.devices` (the device cgroup's allow list), from the CRI's devices.

Which host node a CRI device names (its type and numbers) is I/O: the container service stats
it and passes `DeviceNode`s in. A privileged container gets every host device and a cgroup that
allows all.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any

from cri_py.errors import InvalidArgument


@dataclass(frozen=True)
class DeviceNode:
    """A device node to create at `path` in the container, as the host's is."""

    path: str
    type: str  # "c" or "b"
    major: int
    minor: int
    file_mode: int = 0o666
    uid: int = 0
    gid: int = 0
    # The cgroup access the CRI asks for: some of "r", "w", "m".
    permissions: str = "rwm"


# What every container may use whatever it asks (runc's and containerd's defaults): the nodes
# the launcher creates in each /dev, the pty master and slaves, /dev/tty, and mknod of any
# node (using one is still checked).
DEFAULT_RULES: tuple[dict[str, Any], ...] = (
    {"allow": False, "access": "rwm"},
    {"allow": True, "type": "c", "access": "m"},
    {"allow": True, "type": "b", "access": "m"},
    {"allow": True, "type": "c", "major": 1, "minor": 3, "access": "rwm"},  # null
    {"allow": True, "type": "c", "major": 1, "minor": 5, "access": "rwm"},  # zero
    {"allow": True, "type": "c", "major": 1, "minor": 7, "access": "rwm"},  # full
    {"allow": True, "type": "c", "major": 1, "minor": 8, "access": "rwm"},  # random
    {"allow": True, "type": "c", "major": 1, "minor": 9, "access": "rwm"},  # urandom
    {"allow": True, "type": "c", "major": 5, "minor": 0, "access": "rwm"},  # tty
    {"allow": True, "type": "c", "major": 5, "minor": 1, "access": "rwm"},  # console
    {"allow": True, "type": "c", "major": 5, "minor": 2, "access": "rwm"},  # ptmx
    {"allow": True, "type": "c", "major": 136, "access": "rwm"},  # pts/*
)


def check_permissions(permissions: str, path: str) -> str:
    """The CRI's permissions ("" means all, as containerd reads it)."""
    if not permissions:
        return "rwm"
    if set(permissions) - set("rwm"):
        raise InvalidArgument(f"device {path}: permissions {permissions!r} not some of 'rwm'")
    return "".join(c for c in "rwm" if c in permissions)


def device_nodes(nodes: Sequence[DeviceNode]) -> list[dict[str, Any]]:
    result = []
    seen: set[str] = set()
    for node in nodes:
        if not node.path.startswith("/") or ".." in node.path.split("/"):
            raise InvalidArgument(f"device path {node.path!r} must be absolute, without '..'")
        if node.path in seen:
            continue  # the first wins (a privileged container's host list may repeat one)
        seen.add(node.path)
        result.append(
            {
                "path": node.path,
                "type": node.type,
                "major": node.major,
                "minor": node.minor,
                "fileMode": node.file_mode,
                "uid": node.uid,
                "gid": node.gid,
            }
        )
    return result


def device_rules(nodes: Sequence[DeviceNode], privileged: bool) -> list[dict[str, Any]]:
    if privileged:
        return [{"allow": True, "access": "rwm"}]
    rules = [dict(r) for r in DEFAULT_RULES]
    for node in nodes:
        access = check_permissions(node.permissions, node.path)
        rules.append(
            {
                "allow": True,
                "type": node.type,
                "major": node.major,
                "minor": node.minor,
                "access": access,
            }
        )
    return rules
