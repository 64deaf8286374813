"""Whether a volume's host path can carry the mount propagation the CRI asks for.

A container's bind of a host path joins the propagation of the mount that path lives on. When
that mount is private, a Bidirectional volume propagates nothing: what the container mounts
there never reaches the host or the pod's other containers, and a later container (kubelet's
"unmount" init containers, a CSI node plugin) finds nothing. HostToContainer likewise never
sees what the host mounts later. Both are refused at CreateContainer with the mount named,
instead of a container that silently behaves as Private (containerd and CRI-O refuse the same).
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from pathlib import Path

from cri_py.errors import FailedPrecondition
from cri_py.linux.mountinfo import MountEntry, mount_of, parse
from cri_py.model.container import Mount, Propagation


def check_propagation(
    mounts: Sequence[Mount], host_paths: Mapping[str, str], entries: Sequence[MountEntry]
) -> None:
    """`host_paths` maps each mount's host path to its resolved path; `entries` is the
    daemon's mountinfo (the shims share its mount namespace)."""
    for mount in mounts:
        if mount.image or mount.propagation == Propagation.PRIVATE:
            continue
        real = host_paths.get(mount.host_path, mount.host_path)
        on = mount_of(entries, real)
        if mount.propagation == Propagation.BIDIRECTIONAL and not on.shared:
            raise FailedPrecondition(
                f"mount {mount.container_path}: Bidirectional propagation needs {real} on a "
                f"shared mount, and {on.mount_point} is not shared "
                f"(mount --make-rshared {on.mount_point})"
            )
        if mount.propagation == Propagation.HOST_TO_CONTAINER and not (on.shared or on.slave):
            raise FailedPrecondition(
                f"mount {mount.container_path}: HostToContainer propagation needs {real} on a "
                f"shared or slave mount, and {on.mount_point} is private "
                f"(mount --make-rshared {on.mount_point})"
            )


def check_host_propagation(mounts: Sequence[Mount], host_paths: Mapping[str, str]) -> None:
    """check_propagation against this process's mount table, read only when a mount asks for
    more than Private."""
    if any(not m.image and m.propagation != Propagation.PRIVATE for m in mounts):
        check_propagation(mounts, host_paths, parse(Path("/proc/self/mountinfo").read_text()))
