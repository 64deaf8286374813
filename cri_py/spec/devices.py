"""The spec's `linux.devices` (nodes the launcher creates in the container's /dev) and
`linux.resources.devices` (the device cgroup's allow list), from the CRI's devices.

Which host node a CRI device names (its type and numbers) is I/O: the container service stats
it and passes `DeviceNode`s in. A privileged container gets every host device and a cgroup that
allows all.
"""

from __future__ import annotations

from collections.abc import Collection, Mapping, Sequence
from dataclasses import dataclass
from typing import Any

from cri_py.errors import FailedPrecondition, InvalidArgument


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
    # False: no cgroup rule at all (a FIFO, or a CDI node granted "none").
    cgroup_access: bool = True


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
        if not node.cgroup_access:
            continue
        access = check_permissions(node.permissions, node.path)
        rules.append(
            {
                "allow": True,
                # "u" (an unbuffered char device, from a CDI spec) is a char device to cgroups.
                "type": "c" if node.type == "u" else node.type,
                "major": node.major,
                "minor": node.minor,
                "access": access,
            }
        )
    return rules


# Without device rules (no devices controller, no cgroups at all) nothing stops a container
# from opening any device node it can make or reach. Failing closed, as issue 17 asks: the
# container may not make nodes (no CAP_MKNOD) nor use one on its rootfs (mounted nodev); the
# launcher's own /dev (null, zero, ... and the CRI's devices) stays usable. What would undo
# that is refused instead: CAP_SYS_ADMIN mounts a devtmpfs (every host device) or remounts the
# rootfs with `dev`; an explicitly asked CAP_MKNOD would be a silent lie; a CRI device granted
# read-only (or write-only) could be opened for both.
UNCONFINED_DEVICES_REFUSED_CAPABILITIES = ("CAP_SYS_ADMIN", "CAP_MKNOD")


def devices_unconfined(privileged: bool, problem: str) -> bool:
    """True when an unprivileged container's device rules cannot be enforced (`problem`
    says why): its rootfs is then mounted nodev and it loses CAP_MKNOD. A privileged
    container may use every device anyway, so nothing changes for it."""
    return bool(problem) and not privileged


def without_device_rules(
    name: str,
    capabilities: Mapping[str, Sequence[str]],
    requested: Collection[str],
    nodes: Sequence[DeviceNode],
    problem: str,
) -> dict[str, list[str]]:
    """The container's capability sets when its device rules cannot be enforced: CAP_MKNOD
    taken out of every set. `requested` is what the CRI asked to add (full names, ambient
    included). Refuses (FailedPrecondition, naming `problem`) what cannot be confined."""
    bounding = capabilities.get("bounding", ())
    for capability in UNCONFINED_DEVICES_REFUSED_CAPABILITIES:
        # CAP_MKNOD of the default set is taken away below; one the CRI asked for is refused.
        if capability in bounding and (capability == "CAP_SYS_ADMIN" or capability in requested):
            raise FailedPrecondition(
                f"container {name}: device rules cannot be enforced here: {problem}; "
                f"{capability} would give it every host device (drop it, run the container "
                "privileged, or mount the devices controller)"
            )
    for node in nodes:
        access = check_permissions(node.permissions, node.path) if node.cgroup_access else ""
        if node.type != "p" and ("r" not in access or "w" not in access):
            raise FailedPrecondition(
                f"container {name}: device rules cannot be enforced here: {problem}; device "
                f"{node.path} granted {access!r} would be open for reading and writing (grant "
                "'rw', or mount the devices controller)"
            )
    return {key: [c for c in values if c != "CAP_MKNOD"] for key, values in capabilities.items()}
