"""User namespaces (`hostUsers: false`): which CRI requests are valid, and their OCI form.

A pod either keeps the host's users (NODE) or gets one user namespace for all its containers
(POD) with one uid and one gid mapping from kubelet. The shim creates that namespace and the
launcher joins it; this module only decides, it does no I/O.
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

from cri_py.errors import InvalidArgument
from cri_py.model.container import Mount
from cri_py.model.sandbox import IDMapping, NamespaceMode, NamespaceOptions, UserNamespace

# IDs are 32-bit and (uid_t)-1 is "no ID": a mapping must end below it.
_ID_LIMIT = 2**32 - 1


def _check_mappings(kind: str, mappings: Sequence[IDMapping]) -> None:
    # kubelet allocates one range per pod; the CRI (and critest) refuse anything else.
    if len(mappings) != 1:
        raise InvalidArgument(
            f"user namespace mode POD needs exactly one {kind} mapping, got {len(mappings)}"
        )
    mapping = mappings[0]
    if mapping.container_id != 0:
        raise InvalidArgument(
            f"user namespace {kind} mapping must map container ID 0 (root), "
            f"it starts at {mapping.container_id}"
        )
    if mapping.length <= 0:
        raise InvalidArgument(f"user namespace {kind} mapping length must be positive")
    if mapping.host_id == 0:
        # The container's root would be the host's root: no isolation, only confusion.
        raise InvalidArgument(f"user namespace {kind} mapping must not map to host ID 0")
    if mapping.host_id + mapping.length > _ID_LIMIT:
        raise InvalidArgument(
            f"user namespace {kind} mapping {mapping.host_id}+{mapping.length} "
            "exceeds the 32-bit ID range"
        )


def validate_pod_user_namespace(namespaces: NamespaceOptions) -> None:
    """RunPodSandbox's rules: NODE without mappings, or POD with one mapping each that maps
    container root; CONTAINER and TARGET do not exist for users (the CRI says so). A pod with
    its own users cannot share the host's network, IPC or PID namespaces (kubelet's rule: the
    host's namespaces belong to the host's users)."""
    user = namespaces.user
    if user.mode == NamespaceMode.NODE:
        if user.uids or user.gids:
            raise InvalidArgument("user namespace mode NODE takes no ID mappings")
        return
    if user.mode != NamespaceMode.POD:
        raise InvalidArgument(f"user namespace mode must be POD or NODE, got {user.mode.name}")
    _check_mappings("uid", user.uids)
    _check_mappings("gid", user.gids)
    for kind, mode in (
        ("network", namespaces.network),
        ("IPC", namespaces.ipc),
        ("PID", namespaces.pid),
    ):
        if mode == NamespaceMode.NODE:
            raise InvalidArgument(
                f"a pod with its own user namespace cannot use the host's {kind} namespace"
            )


def validate_container_user_namespace(
    requested: UserNamespace | None, pod: UserNamespace, mounts: Sequence[Mount] = ()
) -> None:
    """A container lives in its pod's user namespace: it may repeat the pod's options (kubelet
    and critest do) but not ask for others. An idmapped mount must use the pod's mappings
    (the only user namespace the launcher holds)."""
    if requested is not None and requested != pod:
        if requested.mode in (NamespaceMode.CONTAINER, NamespaceMode.TARGET):
            raise InvalidArgument(
                f"user namespace mode {requested.mode.name} is not supported for containers"
            )
        raise InvalidArgument(
            f"container user namespace ({requested.mode.name}) differs from its pod's "
            f"({pod.mode.name}); containers share the pod's"
        )
    for mount in mounts:
        if not (mount.uid_mappings or mount.gid_mappings):
            continue
        if pod.mode != NamespaceMode.POD:
            raise InvalidArgument(
                f"mount {mount.container_path}: ID mappings need a pod with its own user namespace"
            )
        if mount.uid_mappings != pod.uids or mount.gid_mappings != pod.gids:
            raise InvalidArgument(
                f"mount {mount.container_path}: ID mappings other than the pod's are not supported"
            )


def oci_mappings(mappings: Sequence[IDMapping]) -> list[dict[str, int]]:
    """The spec's `linux.uidMappings` / `gidMappings` (and a mount's) entries."""
    return [
        {"containerID": m.container_id, "hostID": m.host_id, "size": m.length} for m in mappings
    ]


def map_file(mappings: Sequence[IDMapping]) -> str:
    """The text written to /proc/<pid>/uid_map or gid_map (one line per range)."""
    return "".join(f"{m.container_id} {m.host_id} {m.length}\n" for m in mappings)


def linux_user_section(user: UserNamespace) -> dict[str, Any]:
    """The spec's `linux.uidMappings` and `gidMappings` for a pod with its own users."""
    if user.mode != NamespaceMode.POD:
        return {}
    return {"uidMappings": oci_mappings(user.uids), "gidMappings": oci_mappings(user.gids)}
