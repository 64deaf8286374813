"""The container service's rules and the host reads a create needs before any state exists:
config validation, the unique name a container holds in its pod, ListContainers' filter,
stop signals, the image name reported, and resolving host paths, devices and a Localhost
seccomp profile. No records, no shim: the services call these.
"""

from __future__ import annotations

import contextlib
import json
import os
import signal
import stat
from collections.abc import Mapping, Sequence
from typing import Any

from cri_py.errors import InvalidArgument
from cri_py.images.service import ImageRootfs
from cri_py.model.container import (
    ContainerConfig,
    ContainerFilter,
    ContainerRecord,
    ContainerUser,
    ProfileType,
)
from cri_py.model.sandbox import NamespaceMode
from cri_py.shim import messages
from cri_py.spec.devices import DeviceNode
from cri_py.spec.mounts import check_image_sub_path
from cri_py.spec.security import seccomp_profile

# A container's name in its pod: (sandbox ID, name, attempt); unique among live records.
NameKey = tuple[str, str, int]


def name_key(record: ContainerRecord) -> NameKey:
    return (record.sandbox_id, record.config.metadata.name, record.config.metadata.attempt)


def name_conflict(key: NameKey, holder: str) -> str:
    sandbox_id, name, attempt = key
    return (
        f"container name {name} (attempt {attempt}) is already used by {holder} in sandbox "
        f"{sandbox_id}; remove it first"
    )


def image_name(config: ContainerConfig, image_id: str, repo_tags: Sequence[str]) -> str:
    """The image ContainerStatus reports (kubectl's `image:`): what the user wrote. kubelet
    creates containers by image ID and sends the pod spec's name as `user_specified_image`;
    without it, an ID is shown as the image's first tag, as containerd does."""
    if config.user_specified_image:
        return config.user_specified_image
    if config.image in (image_id, image_id.removeprefix("sha256:")) and repo_tags:
        return repo_tags[0]
    return config.image


def matches(record: ContainerRecord, selector: ContainerFilter) -> bool:
    """ListContainers' filter: every given field must match (IDs by prefix, as crictl uses)."""
    if selector.id and not record.id.startswith(selector.id):
        return False
    if selector.sandbox_id and not record.sandbox_id.startswith(selector.sandbox_id):
        return False
    if selector.state is not None and record.state != selector.state:
        return False
    labels = record.config.labels
    return all(labels.get(k) == v for k, v in selector.labels.items())


def stop_signal_number(name: str) -> int:
    """A signal by name (`SIGTERM`, `TERM`, `15`); SIGTERM for an empty one."""
    if not name:
        return int(signal.SIGTERM)
    if name.isdigit():
        return int(name)
    upper = name.upper()
    try:
        return int(signal.Signals[upper if upper.startswith("SIG") else f"SIG{upper}"])
    except KeyError:
        raise InvalidArgument(f"unknown stop signal {name!r}") from None


def validate_config(config: ContainerConfig) -> None:
    if not config.metadata.name:
        raise InvalidArgument("container metadata needs a name")
    if not config.image:
        raise InvalidArgument("container config needs an image")
    if config.pid_mode == NamespaceMode.TARGET and not config.target_id:
        raise InvalidArgument("PID namespace mode TARGET needs a target_id")
    # The shim creates the log file (and its directory): it must stay inside the pod's log
    # directory, or a CRI client could create or append to any file on the host.
    parts = config.log_path.split("/")
    if config.log_path.startswith("/") or ".." in parts or "\x00" in config.log_path:
        raise InvalidArgument(
            f"container log path {config.log_path!r} must be relative to the pod's log "
            "directory, without '..'"
        )


def resolve_host_paths(config: ContainerConfig) -> dict[str, str]:
    """Each CRI mount's host path with symlinks followed; a missing one is the client's error."""
    resolved = {}
    for mount in config.mounts:
        if mount.image:
            continue  # an image volume: no host path
        if not os.path.isabs(mount.host_path) or "\x00" in mount.host_path:
            raise InvalidArgument(f"mount host path {mount.host_path!r} must be absolute")
        real = os.path.realpath(mount.host_path)
        if not os.path.exists(real):
            raise InvalidArgument(f"mount host path {mount.host_path} does not exist")
        resolved[mount.host_path] = real
    return resolved


def check_image_sub_paths(config: ContainerConfig, volumes: Mapping[str, ImageRootfs]) -> None:
    """An image volume's sub path must exist in its image (the CRI: else fail the create).
    Looked up in the unpacked layers; the launcher resolves it for real in the overlay."""
    for mount in config.mounts:
        sub_path = mount.image_sub_path.strip("/")
        if not mount.image or not sub_path:
            continue
        check_image_sub_path(mount.image_sub_path, mount.container_path)
        layers = volumes[mount.container_path].layers
        if not any(os.path.lexists(layer / sub_path) for layer in layers):
            raise InvalidArgument(
                f"image volume at {mount.container_path}: sub path {sub_path!r} does not "
                f"exist in image {mount.image}"
            )


# Host /dev entries a privileged container does not get as nodes (they are mounts of its own,
# or the host's console), as containerd's host-device walk skips them.
# /dev/ptmx too: the container's is the link into its own devpts instance.
_HOST_DEV_SKIPPED = (
    "pts", "shm", "fd", "mqueue", "console", "ptmx", ".lxc", ".lxd-mounts", ".udev",
)  # fmt: skip


def _device_node(host_path: str, container_path: str, permissions: str) -> DeviceNode | None:
    """The node `host_path` names (symlinks followed); None when it is not a device."""
    info = os.stat(host_path)
    if stat.S_ISCHR(info.st_mode):
        kind = "c"
    elif stat.S_ISBLK(info.st_mode):
        kind = "b"
    else:
        return None
    return DeviceNode(
        path=container_path,
        type=kind,
        major=os.major(info.st_rdev),
        minor=os.minor(info.st_rdev),
        file_mode=stat.S_IMODE(info.st_mode),
        uid=info.st_uid,
        gid=info.st_gid,
        permissions=permissions,
    )


def resolve_devices(
    config: ContainerConfig, host_dev: str = "/dev", host_devices: bool = True
) -> tuple[DeviceNode, ...]:
    """The CRI's devices as nodes like the host's; a privileged container gets every host
    device too (the CRI: "all devices from the host's /dev are available"), unless its
    runtime handler says `privileged_without_host_devices` (`host_devices` false)."""
    nodes = []
    for device in config.devices:
        paths = device.host_path + device.container_path
        if (
            not device.host_path.startswith("/")
            or not device.container_path.startswith("/")
            or ("\x00" in paths)
        ):
            raise InvalidArgument(
                f"device {device.host_path} -> {device.container_path}: paths must be absolute"
            )
        try:
            node = _device_node(device.host_path, device.container_path, device.permissions)
        except OSError as e:
            raise InvalidArgument(f"device {device.host_path}: {e.strerror}") from None
        if node is None:
            raise InvalidArgument(f"device {device.host_path} is not a device node")
        nodes.append(node)
    if config.privileged and host_devices:
        for directory, dirs, files in os.walk(host_dev):
            if directory == host_dev:
                dirs[:] = [d for d in dirs if d not in _HOST_DEV_SKIPPED]
            for name in sorted(files):
                if directory == host_dev and name in _HOST_DEV_SKIPPED:
                    continue
                path = os.path.join(directory, name)
                with contextlib.suppress(OSError):
                    node = _device_node(path, path, "rwm")
                    if node is not None:
                        nodes.append(node)
    return tuple(nodes)


def read_seccomp_localhost(config: ContainerConfig) -> dict[str, Any] | None:
    """The parsed file of a Localhost seccomp profile (None for other profiles, and for
    privileged containers, which get no filter)."""
    profile = seccomp_profile(config)
    if config.privileged or profile.type != ProfileType.LOCALHOST:
        return None
    path = profile.localhost_ref
    try:
        # O_NONBLOCK: a FIFO must not hang the create; only a regular file is a profile.
        with open(os.open(path, os.O_RDONLY | os.O_NONBLOCK | os.O_CLOEXEC), "rb") as f:
            if not stat.S_ISREG(os.fstat(f.fileno()).st_mode):
                raise InvalidArgument(f"seccomp profile {path} is not a regular file")
            data = json.loads(f.read(4 * 1024 * 1024))
    except FileNotFoundError:
        raise InvalidArgument(f"seccomp profile {path} does not exist") from None
    except (OSError, ValueError) as e:
        raise InvalidArgument(f"seccomp profile {path} cannot be read: {e}") from None
    if not isinstance(data, dict):
        raise InvalidArgument(f"seccomp profile {path} is not a JSON object")
    return data


def container_user(view: messages.ContainerView) -> ContainerUser | None:
    """The user the shim says a container's init runs as."""
    user = view.user
    return None if user is None else ContainerUser(user.uid, user.gid, user.groups)
