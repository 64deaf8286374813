"""The spec's `linux.namespaces`: join the pod's by their pinned paths, own mount namespace, and
the PID namespace the CRI asks for (own, the pod's, the host's or a target container's)."""

from __future__ import annotations

from collections.abc import Mapping

from cri_py.errors import InvalidArgument
from cri_py.model.sandbox import NamespaceMode

# OCI namespace type <- the sandbox service's pin names.
_POD_NAMESPACES = (("network", "net"), ("ipc", "ipc"), ("uts", "uts"))


def container_namespaces(
    pod_pins: Mapping[str, str],
    pid_mode: NamespaceMode,
    target_pid_path: str = "",
    pod_pid_mode: NamespaceMode = NamespaceMode.NODE,
) -> list[dict[str, str]]:
    """`pod_pins` maps "net"/"ipc"/"uts"/"pid"/"user" to the pod's pinned namespace files; one
    that is absent is the host's (pod with host network / IPC / PID / users), which the
    container then shares by not listing it."""
    namespaces = [
        {"type": oci_type, "path": pod_pins[pin]}
        for oci_type, pin in _POD_NAMESPACES
        if pin in pod_pins
    ]
    namespaces.append({"type": "mount"})
    if "user" in pod_pins:
        # The pod's user namespace (hostUsers: false): every container of the pod shares it.
        namespaces.append({"type": "user", "path": pod_pins["user"]})
    if pid_mode == NamespaceMode.CONTAINER:
        namespaces.append({"type": "pid"})
    elif pid_mode == NamespaceMode.POD:
        if "pid" in pod_pins:
            namespaces.append({"type": "pid", "path": pod_pins["pid"]})
        elif pod_pid_mode != NamespaceMode.NODE:
            # A pod whose containers each have their own PID namespace pins none; POD mode
            # (the CRI's zero value, so any client that leaves it unset) must not then mean
            # the host's: the container gets its own, as in CONTAINER mode.
            namespaces.append({"type": "pid"})
        # else: a host-PID pod, whose containers share the host's: nothing to join.
    elif pid_mode == NamespaceMode.TARGET:
        if not target_pid_path:
            raise InvalidArgument("PID namespace mode TARGET needs a running target container")
        namespaces.append({"type": "pid", "path": target_pid_path})
    return namespaces
