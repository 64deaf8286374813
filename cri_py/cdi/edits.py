"""What the CDI devices a container asks for change in its OCI spec, decided and applied. Pure:
the registry (`cri_py.cdi.registry`) finds the specs and reads the host's device nodes.

Edits are gathered as the reference implementation orders them: a spec's own
`containerEdits` before its first requested device's, then each device's. Device nodes become
`spec.devices.DeviceNode`s that join the CRI's devices, so the spec builder writes their
`linux.devices` entries and cgroup rules with the same code; env, mounts and additional GIDs
are applied to the built spec by `apply_injection`. Two requested devices that disagree (a node
or a mount at the same path, an env var with two values) fail the create, as does an edit
cri-py cannot make: `intelRdt`, `netDevices`. OCI hooks are appended to the spec's, in edit
order (`cri_py.oci.hooks` runs them).
"""

from __future__ import annotations

import os
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from typing import Any

from cri_py.cdi.names import QualifiedName
from cri_py.cdi.spec import (
    NO_PERMISSIONS,
    CdiSpec,
    ContainerEdits,
    DeviceNodeEdit,
    HookEdit,
    MountEdit,
)
from cri_py.errors import FailedPrecondition
from cri_py.oci.hooks import Hook, HookError, append_hooks, hook_from_spec
from cri_py.spec.devices import DeviceNode

BIND_OPTIONS = ("bind", "rbind")


@dataclass(frozen=True)
class HostNode:
    """What the host's node at a `hostPath` is: type "c", "b" or "p", and its numbers."""

    type: str
    major: int
    minor: int


@dataclass(frozen=True)
class EditSource:
    """Edits and where they come from, for error messages: `vendor/class=name` or the kind."""

    label: str
    path: str
    edits: ContainerEdits


@dataclass(frozen=True)
class Injection:
    """The spec changes of a container's CDI devices."""

    devices: tuple[str, ...] = ()
    device_nodes: tuple[DeviceNode, ...] = ()
    # Container paths of nodes with no uid (gid) in their spec: they take the container's.
    uid_unset: frozenset[str] = frozenset()
    gid_unset: frozenset[str] = frozenset()
    env: tuple[str, ...] = ()
    mounts: tuple[Mapping[str, Any], ...] = ()
    additional_gids: tuple[int, ...] = ()
    # (OCI hook kind, hook), in edit order.
    hooks: tuple[tuple[str, Hook], ...] = ()

    def __bool__(self) -> bool:
        return bool(self.devices)


def ordered_edits(chosen: Sequence[tuple[QualifiedName, CdiSpec]]) -> list[EditSource]:
    """Each spec's own edits once, before its first device's; then the device's."""
    result: list[EditSource] = []
    seen: set[str] = set()
    for name, spec in chosen:
        if spec.path not in seen:
            seen.add(spec.path)
            if not spec.edits.is_empty():
                result.append(EditSource(f"{spec.kind} (spec-wide edits)", spec.path, spec.edits))
        result.append(EditSource(str(name), spec.path, spec.devices[name.name]))
    return result


def check_supported(sources: Sequence[EditSource]) -> None:
    """Refuses edits cri-py cannot carry out, naming the device and the file."""
    for source in sources:
        if source.edits.unsupported:
            raise FailedPrecondition(
                f"CDI device {source.label} ({source.path}) uses "
                f"{' and '.join(source.edits.unsupported)}, which cri-py does not support"
            )


def host_paths_to_read(sources: Sequence[EditSource]) -> list[str]:
    """Host nodes whose type or numbers the spec leaves to the host (the reference rule: a
    node with a type and a major number, or a FIFO, is complete)."""
    paths = []
    for source in sources:
        for node in source.edits.device_nodes:
            if not (node.type and (node.major or node.type == "p")):
                paths.append(node.host_path or node.path)
    return paths


def bind_sources(sources: Sequence[EditSource]) -> list[str]:
    """Host paths of the bind mounts (they must exist; the registry resolves them)."""
    return [
        mount.host_path for source in sources for mount in source.edits.mounts if _is_bind(mount)
    ]


def _is_bind(mount: MountEdit) -> bool:
    return mount.type == "bind" or (
        mount.type == "" and any(o in BIND_OPTIONS for o in mount.options)
    )


def _device_node(
    source: EditSource, node: DeviceNodeEdit, host: Mapping[str, HostNode]
) -> DeviceNode:
    kind, major, minor = node.type, node.major, node.minor
    if not (kind and (major or kind == "p")):
        host_path = node.host_path or node.path
        found = host.get(host_path)
        if found is None:
            raise FailedPrecondition(
                f"CDI device {source.label} ({source.path}): host device {host_path} was not read"
            )
        if kind and kind != found.type and not (kind == "u" and found.type == "c"):
            raise FailedPrecondition(
                f"CDI device {source.label} ({source.path}): {node.path} is type {kind!r} but "
                f"host node {host_path} is {found.type!r}"
            )
        kind = kind or found.type
        if kind != "p" and not major:
            major, minor = found.major, found.minor
    permissions = node.permissions or "rwm"
    return DeviceNode(
        path=node.path,
        type=kind,
        major=major,
        minor=minor,
        file_mode=0o666 if node.file_mode is None else node.file_mode,
        uid=node.uid or 0,
        gid=node.gid or 0,
        permissions="" if permissions == NO_PERMISSIONS else permissions,
        cgroup_access=kind != "p" and permissions != NO_PERMISSIONS,
    )


def _oci_mount(source: EditSource, mount: MountEdit, real: Mapping[str, str]) -> dict[str, Any]:
    if not mount.type and not _is_bind(mount):
        raise FailedPrecondition(
            f"CDI device {source.label} ({source.path}): mount at {mount.container_path} has "
            "neither a type nor a bind option"
        )
    bind = _is_bind(mount)
    return {
        "destination": os.path.normpath(mount.container_path),
        "type": "bind" if bind else mount.type,
        "source": real.get(mount.host_path, mount.host_path) if bind else mount.host_path,
        "options": list(mount.options),
    }


def plan_injection(
    sources: Sequence[EditSource],
    host: Mapping[str, HostNode],
    real_paths: Mapping[str, str],
    cri_device_paths: Sequence[str] = (),
    cri_mount_paths: Sequence[str] = (),
) -> Injection:
    """The changes `sources` make, checked against each other and against the CRI's own
    devices and mounts (a CDI edit at a path the CRI request uses is a conflict, not a silent
    override). `host` holds the nodes `host_paths_to_read` named, `real_paths` the bind
    sources with symlinks followed."""
    nodes: dict[str, tuple[DeviceNode, str]] = {}
    uid_unset: set[str] = set()
    gid_unset: set[str] = set()
    mounts: dict[str, tuple[dict[str, Any], str]] = {}
    env: dict[str, tuple[str, str]] = {}
    gids: list[int] = []
    hooks: list[tuple[str, Hook]] = []
    cri_devices = {os.path.normpath(p) for p in cri_device_paths}
    cri_mounts = {os.path.normpath(p) for p in cri_mount_paths}

    def conflict(what: str, first: str, source: EditSource) -> FailedPrecondition:
        return FailedPrecondition(
            f"CDI devices conflict: {what} is set differently by {first} and by "
            f"{source.label} ({source.path})"
        )

    for source in sources:
        for edit in source.edits.device_nodes:
            node = _device_node(source, edit, host)
            path = os.path.normpath(node.path)
            if path in cri_devices:
                raise FailedPrecondition(
                    f"CDI device {source.label} ({source.path}) and the request's devices both "
                    f"put a device at {path}"
                )
            if path in nodes and nodes[path][0] != node:
                raise conflict(f"device node {path}", nodes[path][1], source)
            nodes.setdefault(path, (node, f"{source.label} ({source.path})"))
            if edit.uid is None:
                uid_unset.add(node.path)
            if edit.gid is None:
                gid_unset.add(node.path)
        for edit_mount in source.edits.mounts:
            mount = _oci_mount(source, edit_mount, real_paths)
            destination = mount["destination"]
            if destination in cri_mounts:
                raise FailedPrecondition(
                    f"CDI device {source.label} ({source.path}) and the request's mounts both "
                    f"mount {destination}"
                )
            if destination in mounts and mounts[destination][0] != mount:
                raise conflict(f"mount {destination}", mounts[destination][1], source)
            mounts.setdefault(destination, (mount, f"{source.label} ({source.path})"))
        for entry in source.edits.env:
            key, _, value = entry.partition("=")
            if key in env and env[key][0] != value:
                raise conflict(f"env {key}", env[key][1], source)
            env.setdefault(key, (value, f"{source.label} ({source.path})"))
        gids += [g for g in source.edits.additional_gids if g and g not in gids]
        hooks += [(h.hook_name, _oci_hook(source, h)) for h in source.edits.hooks]
    devices = tuple(dict.fromkeys(s.label for s in sources if "=" in s.label))
    return Injection(
        devices=devices,
        device_nodes=tuple(node for node, _ in nodes.values()),
        uid_unset=frozenset(uid_unset),
        gid_unset=frozenset(gid_unset),
        env=tuple(f"{key}={value}" for key, (value, _) in env.items()),
        mounts=tuple(mount for mount, _ in mounts.values()),
        additional_gids=tuple(gids),
        hooks=tuple(hooks),
    )


def _oci_hook(source: EditSource, edit: HookEdit) -> Hook:
    entry: dict[str, Any] = {"path": edit.path, "args": list(edit.args), "env": list(edit.env)}
    if edit.timeout is not None:
        entry["timeout"] = edit.timeout
    try:
        return hook_from_spec(entry, edit.hook_name)
    except HookError as e:
        raise FailedPrecondition(f"CDI device {source.label} ({source.path}): hook {e}") from e


def _depth(destination: str) -> int:
    return os.path.normpath(destination).count("/")


def apply_injection(spec: dict[str, Any], injection: Injection) -> None:
    """Env, mounts, additional GIDs and device owners into a built spec, in place. The device
    nodes and their cgroup rules are already there (they were the builder's input)."""
    if not injection:
        return
    process = spec.setdefault("process", {})
    env: list[str] = list(process.get("env") or ())
    for entry in injection.env:
        key = entry.partition("=")[0]
        env = [e for e in env if e.partition("=")[0] != key]
        env.append(entry)
    process["env"] = env
    user = process.setdefault("user", {})
    if injection.additional_gids:
        current = list(user.get("additionalGids") or ())
        user["additionalGids"] = current + [
            g for g in injection.additional_gids if g not in current
        ]
    # A node with no owner in its spec belongs to the container's user (the reference rule),
    # when the spec names it by number.
    uid, gid = user.get("uid", 0), user.get("gid", 0)
    for device in (spec.get("linux") or {}).get("devices") or ():
        if uid and device.get("path") in injection.uid_unset:
            device["uid"] = uid
        if gid and device.get("path") in injection.gid_unset:
            device["gid"] = gid
    if injection.mounts:
        replaced = {m["destination"] for m in injection.mounts}
        mounts = [m for m in spec.get("mounts") or () if m.get("destination") not in replaced]
        mounts += [dict(m, options=list(m["options"])) for m in injection.mounts]
        # Parents before children, as the reference implementation sorts (stable).
        spec["mounts"] = sorted(mounts, key=lambda m: _depth(str(m.get("destination", "/"))))
    for kind, hook in injection.hooks:
        append_hooks(spec, kind, (hook,))
    annotations = spec.setdefault("annotations", {})
    annotations[INJECTED_ANNOTATION] = ",".join(injection.devices)


# Which CDI devices a container got, for people and tools reading config.json.
INJECTED_ANNOTATION = "io.cri-py.cdi.devices"
