"""Containers: create, start, stop, remove, status, list, exec and log reopening.

A container is a record in the store, a bundle dir (its OCI spec, overlay upper/work dirs and
the exit file) and, once created, a process its pod's shim forked. Queries are answered from
memory; commands block (the shim's socket, the disk) and run on worker threads. Exits arrive as
shim events; the shim's exit file is the authority on how a container ended.
"""

from __future__ import annotations

import asyncio
import base64
import builtins
import contextlib
import dataclasses
import errno
import json
import os
import secrets
import signal
import stat
import threading
import time
from collections.abc import Iterator, Mapping, Sequence
from pathlib import Path
from typing import Any

from cri_py.config import Config
from cri_py.errors import (
    AlreadyExists,
    DeadlineExceeded,
    FailedPrecondition,
    Internal,
    InvalidArgument,
    NotFound,
)
from cri_py.images.service import ImageRootfs, ImageService
from cri_py.linux import features
from cri_py.linux.cgroupfs import CgroupMode
from cri_py.linux.device_filter import attach_device_filter
from cri_py.linux.terminal import open_pty
from cri_py.log import get_logger
from cri_py.model.container import (
    ContainerConfig,
    ContainerFilter,
    ContainerRecord,
    ContainerState,
    ContainerUser,
    ExitRecord,
    ProfileType,
)
from cri_py.model.resources import Resources
from cri_py.model.sandbox import NamespaceMode, SandboxFilter, SandboxState, SandboxView
from cri_py.oci.cgroups import to_oci
from cri_py.oci.devices import v1_device_writes
from cri_py.runtime import oom
from cri_py.runtime.cgroups import CgroupManager, container_cgroup, device_rules_problem
from cri_py.runtime.events import ContainerEvent, EventHub, EventType
from cri_py.runtime.sandboxes import SandboxService
from cri_py.runtime.stats import (
    CgroupUsage,
    CpuUsage,
    FilesystemUsage,
    MemoryUsage,
    NetworkUsage,
    UsageReader,
    sum_usage,
)
from cri_py.shim import protocol
from cri_py.shim.client import ShimClient, ShimError, call_passing_fds
from cri_py.shim.events import ShimEvents
from cri_py.shim.spec import SOCKET_FILE
from cri_py.spec.build import SpecInputs, build_spec
from cri_py.spec.devices import DeviceNode, devices_unconfined
from cri_py.spec.mounts import PodFiles, check_image_sub_path
from cri_py.spec.rootfs import overlay_mount
from cri_py.spec.security import seccomp_profile
from cri_py.store.atomic import write_json_atomic
from cri_py.store.containers import ContainerStore

log = get_logger("cri_py.containers")

# containerd's exit code for a container whose end nobody saw (its shim died first).
UNKNOWN_EXIT_CODE = 255
START_ERROR_EXIT_CODE = 128
# How long to wait for an exit after SIGKILL before giving up (a D-state process).
KILL_WAIT_SECONDS = 10.0
SANDBOX_STOP_WAIT_SECONDS = 2.0
EXEC_FRAME_BYTES = 64 * 1024 * 1024
NameKey = tuple[str, str, int]


@dataclasses.dataclass(frozen=True)
class ContainerUsage:
    record: ContainerRecord
    cgroup: CgroupUsage | None  # None: no cgroup (or it is gone)
    writable_layer: FilesystemUsage | None


@dataclasses.dataclass(frozen=True)
class SandboxUsage:
    view: SandboxView
    cpu: CpuUsage
    memory: MemoryUsage
    network: NetworkUsage | None
    process_count: int
    containers: tuple[ContainerUsage, ...]


def merge_resources(current: Resources, update: Resources) -> Resources:
    """What the cgroup holds after an update: set fields replace, unset (0, "") ones stay."""
    changes = {
        f.name: getattr(update, f.name)
        for f in dataclasses.fields(update)
        if getattr(update, f.name)
    }
    merged = dataclasses.replace(current, **changes)
    if update.hugepage_limits:
        merged = dataclasses.replace(
            merged, hugepage_limits={**current.hugepage_limits, **update.hugepage_limits}
        )
    if update.unified:
        merged = dataclasses.replace(merged, unified={**current.unified, **update.unified})
    return merged


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


def resolve_devices(config: ContainerConfig, host_dev: str = "/dev") -> tuple[DeviceNode, ...]:
    """The CRI's devices as nodes like the host's; a privileged container gets every host
    device too (the CRI: "all devices from the host's /dev are available")."""
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
    if config.privileged:
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


def container_user(view: Mapping[str, Any]) -> ContainerUser | None:
    user = view.get("user")
    if not isinstance(user, dict):
        return None
    return ContainerUser(
        int(user["uid"]), int(user["gid"]), tuple(int(g) for g in user.get("groups", ()))
    )


class ContainerService:
    def __init__(
        self,
        config: Config,
        sandboxes: SandboxService,
        images: ImageService,
        loop: asyncio.AbstractEventLoop,
        cgroups: CgroupManager | None = None,
    ) -> None:
        self._config = config
        self._cgroups = cgroups
        self._usage = UsageReader(cgroups.fs) if cgroups is not None else None
        self._store = ContainerStore(Path(config.root_dir) / "containers")
        self._sandboxes = sandboxes
        self._images = images
        self._loop = loop
        self._lock = threading.Lock()
        self._records: dict[str, ContainerRecord] = {}
        self._names: dict[NameKey, str] = {}
        self._exited: dict[str, threading.Event] = {}
        self._op_locks: dict[str, threading.Lock] = {}
        self._events = ShimEvents(self._on_event, self._on_shim_lost)
        # GetContainerEvents' source: every container (and, through the sandbox service's
        # hook, every sandbox) change is published here.
        self.events = EventHub()

    # --- queries: memory only -------------------------------------------------------------

    def _resolve(self, container_id: str) -> str | None:
        if not container_id:
            raise InvalidArgument("container ID must not be empty")
        with self._lock:
            if container_id in self._records:
                return container_id
            found = [i for i in self._records if i.startswith(container_id)]
        if len(found) > 1:
            raise InvalidArgument(f"container ID prefix {container_id!r} is ambiguous")
        return found[0] if found else None

    def status(self, container_id: str) -> ContainerRecord:
        full = self._resolve(container_id)
        with self._lock:
            record = self._records.get(full or "")
        if record is None:
            raise NotFound(f"container {container_id} not found")
        return record

    def list(self, selector: ContainerFilter) -> list[ContainerRecord]:
        with self._lock:
            records = list(self._records.values())
        return [r for r in records if matches(r, selector)]

    def spec_of(self, container_id: str) -> dict[str, Any]:
        try:
            spec: dict[str, Any] = json.loads(
                (self._store.dir_of(container_id) / "config.json").read_text()
            )
        except (OSError, ValueError):
            return {}
        return spec

    # --- helpers --------------------------------------------------------------------------

    def _set(self, record: ContainerRecord) -> None:
        with self._lock:
            if record.id in self._records:
                self._records[record.id] = record

    @contextlib.contextmanager
    def _operation(self, container_id: str) -> Iterator[ContainerRecord | None]:
        with self._lock:
            lock = self._op_locks.setdefault(container_id, threading.Lock())
        with lock:
            with self._lock:
                record = self._records.get(container_id)
            yield record

    def _shim(self, sandbox_id: str) -> ShimClient:
        return ShimClient(self._sandboxes.shim_bundle(sandbox_id))

    def _pod_records(self, sandbox_id: str) -> tuple[ContainerRecord, ...]:
        with self._lock:
            return tuple(r for r in self._records.values() if r.sandbox_id == sandbox_id)

    def _publish(self, kind: EventType, container_id: str, sandbox_id: str) -> None:
        """A container event with its pod as it is now (the sandbox may be gone)."""
        if not self.events.subscribers:
            return
        try:
            sandbox: SandboxView | None = self._sandboxes.status(sandbox_id)
        except NotFound:
            sandbox = None
        self.events.publish(
            ContainerEvent(
                kind, container_id, time.time_ns(), sandbox, self._pod_records(sandbox_id)
            )
        )

    def sandbox_event(self, kind: EventType, view: SandboxView) -> None:
        """The sandbox service's hook: a sandbox's own event (its ID as the container's, as
        kubelet expects: a DELETED one for the sandbox drops the pod from its cache)."""
        if self.events.subscribers:
            self.events.publish(
                ContainerEvent(
                    kind, view.record.id, time.time_ns(), view, self._pod_records(view.record.id)
                )
            )

    def _mark_exited(self, container_id: str, exit: ExitRecord) -> None:
        with self._lock:
            record = self._records.get(container_id)
            if record is None or record.exit is not None:
                return
            self._records[container_id] = dataclasses.replace(
                record, state=ContainerState.EXITED, exit=exit
            )
            event = self._exited.setdefault(container_id, threading.Event())
        event.set()
        log.info(
            "container exited", container=container_id, code=exit.exit_code, reason=exit.reason
        )
        self._publish(EventType.STOPPED, container_id, record.sandbox_id)

    def _on_event(self, sandbox_id: str, event: protocol.Event) -> None:
        if event.name != "exited":
            return
        data = event.data
        self._mark_exited(
            str(data["id"]),
            ExitRecord(
                exit_code=int(data["exit_code"]),
                finished_at=int(data["finished_at"]),
                reason=str(data["reason"]),
                message=str(data.get("message", "")),
            ),
        )

    def _on_shim_lost(self, sandbox_id: str) -> None:
        """The shim is gone: its containers ended, as its exit files say (or unseen)."""
        with self._lock:
            pending = [
                r.id for r in self._records.values() if r.sandbox_id == sandbox_id and not r.exit
            ]
        for container_id in pending:
            exit = self._store.read_exit(container_id) or ExitRecord(
                UNKNOWN_EXIT_CODE, time.time_ns(), "Unknown", "the pod's shim exited"
            )
            self._mark_exited(container_id, exit)

    def _ensure_subscribed(self, sandbox_id: str) -> None:
        if not self._events.subscribed(sandbox_id):
            self._events.subscribe(sandbox_id, self._sandboxes.shim_bundle(sandbox_id))

    def _wait_exit(self, container_id: str, timeout: float) -> bool:
        with self._lock:
            record = self._records.get(container_id)
            if record is None or record.exit is not None:
                return True
            event = self._exited.setdefault(container_id, threading.Event())
        return event.wait(timeout)

    # --- create ---------------------------------------------------------------------------

    async def create(self, sandbox_id: str, config: ContainerConfig) -> str:
        validate_config(config)
        sandbox = self._sandboxes.status(sandbox_id)
        if sandbox.state != SandboxState.READY:
            raise FailedPrecondition(f"pod sandbox {sandbox_id} is not ready")
        sandbox_id = sandbox.record.id
        key = (sandbox_id, config.metadata.name, config.metadata.attempt)
        container_id = secrets.token_hex(32)
        with self._lock:
            existing = self._names.get(key)
            if existing is not None:
                raise AlreadyExists(
                    f"container name {config.metadata.name} (attempt "
                    f"{config.metadata.attempt}) is already used by {existing} in sandbox "
                    f"{sandbox_id}; remove it first"
                )
            self._names[key] = container_id
        try:
            rootfs = await self._images.lease_layers(container_id, config.image)
            try:
                volumes = await self._lease_image_volumes(container_id, config)
                await asyncio.to_thread(
                    self._create, container_id, sandbox_id, config, rootfs, volumes
                )
            except BaseException:
                await self._images.release_layers(container_id)
                raise
        except BaseException:
            with self._lock:
                self._names.pop(key, None)
            raise
        return container_id

    async def _lease_image_volumes(
        self, container_id: str, config: ContainerConfig
    ) -> dict[str, ImageRootfs]:
        """The layers of each image volume's image, leased under `<container ID>/...` (which
        `release_layers(container ID)` releases too). The image must have been pulled."""
        volumes = {}
        for index, mount in enumerate(config.mounts):
            if not mount.image:
                continue
            try:
                volumes[mount.container_path] = await self._images.lease_layers(
                    f"{container_id}/image-volume/{index}", mount.image
                )
            except NotFound as e:
                raise NotFound(f"image volume at {mount.container_path}: {e}") from None
        return volumes

    def _create(
        self,
        container_id: str,
        sandbox_id: str,
        config: ContainerConfig,
        rootfs: ImageRootfs,
        volumes: Mapping[str, ImageRootfs],
    ) -> None:
        sandbox = self._sandboxes.status(sandbox_id).record
        if volumes:
            check_image_sub_paths(config, volumes)
            config = dataclasses.replace(
                config,
                mounts=tuple(
                    dataclasses.replace(m, image_ref=volumes[m.container_path].image_id)
                    if m.image
                    else m
                    for m in config.mounts
                ),
            )
        directory = self._store.dir_of(container_id)
        files = self._sandboxes.files_dir(sandbox_id)
        host_network = sandbox.config.namespaces.network == NamespaceMode.NODE
        target_pid_path = ""
        if config.pid_mode == NamespaceMode.TARGET:
            target = self.status(config.target_id)
            if target.state != ContainerState.RUNNING or not target.pid:
                raise FailedPrecondition(f"target container {config.target_id} is not running")
            target_pid_path = f"/proc/{target.pid}/ns/pid"
        cgroup = ""
        if self._cgroups is not None:
            # Under the pod cgroup cri-py made, else under kubelet's parent (or our default).
            cgroup = container_cgroup(
                sandbox.cgroup or sandbox.config.cgroup_parent,
                container_id,
                self._config.cgroups.default_parent,
            )
        inputs = SpecInputs(
            container_id=container_id,
            sandbox_id=sandbox_id,
            config=config,
            sandbox=sandbox.config,
            image=rootfs.config,
            image_name=config.image,
            rootfs=str(directory / "rootfs"),
            hostname="" if host_network else sandbox.hostname,
            pod_namespaces=dict(sandbox.namespaces),
            files=PodFiles(
                hosts=str(files / "hosts"),
                hostname=str(files / "hostname"),
                resolv_conf=str(files / "resolv.conf"),
                shm=sandbox.shm_path,
            ),
            resolved_mounts=resolve_host_paths(config),
            target_pid_path=target_pid_path,
            seccomp_localhost=read_seccomp_localhost(config),
            cgroups_path=cgroup,
            image_volumes={
                path: tuple(str(p) for p in volume.layers) for path, volume in volumes.items()
            },
            empty_dir=str(directory / "empty"),
            devices=resolve_devices(config),
            device_rules_problem=device_rules_problem(self._cgroups),
            selinux_enabled=features.selinux_enabled(),
        )
        spec = build_spec(inputs)
        nodev = devices_unconfined(config.privileged, inputs.device_rules_problem)
        if nodev:
            log.warning(
                "device rules not enforced: container without CAP_MKNOD, rootfs nodev",
                container=container_id,
                reason=inputs.device_rules_problem,
            )
        log_path = ""
        if sandbox.config.log_directory and config.log_path:
            log_path = os.path.join(sandbox.config.log_directory, config.log_path)
        stop_signal = config.stop_signal or rootfs.config.stop_signal
        stop_signal_number(stop_signal)  # refused now, not at stop time
        record = ContainerRecord(
            id=container_id,
            sandbox_id=sandbox_id,
            config=dataclasses.replace(config, stop_signal=stop_signal),
            created_at=time.time_ns(),
            image_id=rootfs.image_id,
            log_path=log_path,
            cgroup=cgroup,
            image_name=image_name(config, rootfs.image_id, rootfs.repo_tags),
        )
        with contextlib.ExitStack() as undo:
            undo.callback(self._store.delete, container_id)
            self._store.save(record)
            for name in ("upper", "work", "rootfs", "empty"):
                (directory / name).mkdir()
                # The overlay's root takes the upper dir's mode: it must not be the daemon's
                # umask (0700 would lock every non-root user out of the container's "/").
                (directory / name).chmod(0o755)
            write_json_atomic(directory / "config.json", spec)
            mount = overlay_mount(
                [str(p) for p in rootfs.layers],
                str(directory / "upper"),
                str(directory / "work"),
                str(directory / "empty"),
                nodev=nodev,
            )
            cgroup_params: dict[str, Any] = {}
            if self._cgroups is not None:
                self._create_cgroup(cgroup, config.resources)
                undo.callback(self._remove_cgroup, container_id, cgroup)
                self._allow_devices(cgroup, spec)
                cgroup_params = {
                    "cgroup_procs": self._cgroups.procs_files(cgroup),
                    "oom_file": self._cgroups.oom_file(cgroup),
                    "cgroup_mounts": self._cgroups.mount_sources(cgroup),
                }
            self._ensure_subscribed(sandbox_id)
            shim = self._shim(sandbox_id)
            try:
                result = shim.call(
                    "create",
                    {
                        "id": container_id,
                        "bundle": str(directory),
                        "rootfs": [mount],
                        "log_path": log_path,
                        "stdin": config.stdin,
                        "stdin_once": config.stdin_once,
                        "oom_score_adj": config.oom_score_adj,
                        **cgroup_params,
                    },
                    timeout=30.0,
                )
            except ShimError as e:
                if e.kind in ("invalid", "failed"):
                    raise InvalidArgument(f"container {config.metadata.name}: {e}") from e
                raise Internal(f"container {config.metadata.name}: {e}") from e
            undo.callback(self._forget_in_shim, sandbox_id, container_id)
            if "oom_score_adj" in result:
                oom.clamps.note(config.oom_score_adj, int(result["oom_score_adj"]))
            record = dataclasses.replace(
                record, pid=int(result["pid"]), user=container_user(result)
            )
            self._store.save(record)
            with self._lock:
                self._records[container_id] = record
            undo.pop_all()
        self._publish(EventType.CREATED, container_id, sandbox_id)
        log.info(
            "container created",
            container=container_id,
            sandbox=sandbox_id,
            name=config.metadata.name,
            pid=record.pid,
        )

    def _create_cgroup(self, cgroup: str, resources: Resources) -> None:
        assert self._cgroups is not None
        try:
            self._cgroups.create(cgroup, resources)
        except OSError as e:
            if e.errno in (errno.EINVAL, errno.ERANGE):
                raise InvalidArgument(f"cgroup {cgroup}: {e.strerror}") from None
            raise Internal(f"creating cgroup {cgroup}: {e}") from None

    def _allow_devices(self, cgroup: str, spec: Mapping[str, Any]) -> None:
        """The spec's device rules in the v1 devices cgroup, or on v2 as a BPF device
        program attached to the container's cgroup (`cri_py.oci.device_filter`)."""
        assert self._cgroups is not None
        rules = spec.get("linux", {}).get("resources", {}).get("devices", ())
        if self._cgroups.mode == CgroupMode.V2:
            try:
                directories = self._cgroups.fs.dirs(cgroup)
                if not directories:  # never silently unfiltered
                    raise ValueError("no cgroup v2 directory for it")
                for directory in directories:
                    attach_device_filter(directory, rules)
            except (OSError, ValueError) as e:
                raise Internal(f"cgroup {cgroup}: attaching the device filter: {e}") from None
            return
        if "devices" not in self._cgroups.fs.controllers():
            # Not silent: the spec was built knowing (device_rules_problem), so the container
            # has no CAP_MKNOD and a nodev rootfs, or was refused.
            return
        try:
            self._cgroups.fs.write(cgroup, v1_device_writes(rules))
        except (OSError, ValueError) as e:
            raise Internal(f"cgroup {cgroup}: setting the device rules: {e}") from None

    def _remove_cgroup(self, container_id: str, cgroup: str) -> None:
        if self._usage is not None:
            self._usage.forget(container_id)
        if self._cgroups is None or not cgroup:
            return
        try:
            self._cgroups.remove(cgroup)
        except OSError as e:
            log.error("cannot remove a container's cgroup", cgroup=cgroup, error=str(e))

    def _forget_in_shim(self, sandbox_id: str, container_id: str) -> None:
        """Undo of a shim create: its init waits on the sync socket; kill and forget it."""
        with contextlib.suppress(ShimError):
            shim = self._shim(sandbox_id)
            shim.call("kill", {"id": container_id, "signal": int(signal.SIGKILL)})
            self._wait_exit(container_id, KILL_WAIT_SECONDS)
            shim.call("remove", {"id": container_id})

    # --- start / stop / remove --------------------------------------------------------------

    def start(self, container_id: str) -> None:
        full = self._resolve(container_id)
        if full is None:
            raise NotFound(f"container {container_id} not found")
        with self._operation(full) as record:
            if record is None:
                raise NotFound(f"container {container_id} not found")
            if record.state != ContainerState.CREATED:
                raise FailedPrecondition(
                    f"container {full} is {record.state.name}, only CREATED can be started"
                )
            try:
                result = self._shim(record.sandbox_id).call("start", {"id": full})
            except ShimError as e:
                if e.kind == "start_failed":
                    message = str(e).removeprefix("shim start: ")
                    exit = self._store.read_exit(full) or ExitRecord(
                        START_ERROR_EXIT_CODE, time.time_ns(), "StartError", message
                    )
                    self._set(dataclasses.replace(record, started_at=exit.finished_at))
                    self._mark_exited(full, exit)
                    raise FailedPrecondition(f"container {full} failed to start: {message}") from e
                raise Internal(f"starting container {full}: {e}") from e
            record = dataclasses.replace(
                record, state=ContainerState.RUNNING, started_at=int(result["started_at"])
            )
            self._store.save(record)
            with self._lock:
                current = self._records.get(full)
                # An exit event may have raced ahead of this answer: keep it.
                if current is not None and current.exit is not None:
                    record = dataclasses.replace(
                        record, state=ContainerState.EXITED, exit=current.exit
                    )
                self._records[full] = record
            self._publish(EventType.STARTED, full, record.sandbox_id)
            if record.exit is not None:
                # Its exit was published before this start: say it again, in order.
                self._publish(EventType.STOPPED, full, record.sandbox_id)
            log.info("container started", container=full)

    def stop(self, container_id: str, timeout: int) -> None:
        """Stop signal, then SIGKILL after `timeout` seconds (0: at once). Idempotent."""
        full = self._resolve(container_id)
        if full is None:
            return
        with self._operation(full) as record:
            if record is None or record.state != ContainerState.RUNNING:
                return
            # A CRI timeout is an int64: beyond what a thread can wait (OverflowError).
            self._stop(record, min(timeout, threading.TIMEOUT_MAX))

    def _stop(self, record: ContainerRecord, timeout: float) -> None:
        shim = self._shim(record.sandbox_id)
        try:
            if timeout > 0:
                signum = stop_signal_number(record.config.stop_signal)
                shim.call("kill", {"id": record.id, "signal": signum})
                if self._wait_exit(record.id, timeout):
                    return
            shim.call("kill", {"id": record.id, "signal": int(signal.SIGKILL)})
        except ShimError as e:
            if not self._events.subscribed(record.sandbox_id):
                self._on_shim_lost(record.sandbox_id)
                return
            raise Internal(f"stopping container {record.id}: {e}") from e
        if not self._wait_exit(record.id, KILL_WAIT_SECONDS):
            raise DeadlineExceeded(f"container {record.id} did not exit after SIGKILL")

    async def remove(self, container_id: str) -> None:
        full = self._resolve(container_id)
        if full is None:
            return
        await asyncio.to_thread(self._remove, full)
        await self._images.release_layers(full)

    def _remove(self, container_id: str) -> None:
        """Kills a running container, forgets it in the shim, deletes its dir. The log stays."""
        with self._operation(container_id) as record:
            if record is None:
                return
            if record.state == ContainerState.RUNNING:
                self._stop(record, 0)
            with contextlib.suppress(ShimError):
                shim = self._shim(record.sandbox_id)
                if record.state == ContainerState.CREATED:
                    # Never started: its init waits on the sync socket; kill it first.
                    shim.call("kill", {"id": container_id, "signal": int(signal.SIGKILL)})
                    self._wait_exit(container_id, KILL_WAIT_SECONDS)
                shim.call("remove", {"id": container_id})
            self._remove_cgroup(container_id, record.cgroup)
            self._store.delete(container_id)
            with self._lock:
                self._records.pop(container_id, None)
                self._exited.pop(container_id, None)
                self._op_locks.pop(container_id, None)
                key = (
                    record.sandbox_id,
                    record.config.metadata.name,
                    record.config.metadata.attempt,
                )
                self._names.pop(key, None)
            self._publish(EventType.DELETED, container_id, record.sandbox_id)
            log.info("container removed", container=container_id)

    # --- exec and logs --------------------------------------------------------------------

    def _running(self, container_id: str) -> ContainerRecord:
        record = self.status(container_id)
        if record.state != ContainerState.RUNNING:
            raise FailedPrecondition(f"container {record.id} is not running")
        return record

    def exec_sync(
        self, container_id: str, command: tuple[str, ...], timeout: int
    ) -> tuple[bytes, bytes, int]:
        record = self._running(container_id)
        if not command:
            raise InvalidArgument("ExecSync needs a command")
        # The shim enforces `timeout`; ours only guards against a shim that never answers.
        # An int64 beyond a year is "no timeout" (sockets cannot wait that long: OverflowError).
        year = 365 * 24 * 3600
        timeout = timeout if 0 < timeout < year else 0
        call_timeout = timeout + 30.0 if timeout > 0 else float(year)
        try:
            result = self._shim(record.sandbox_id).call(
                "exec",
                {"id": record.id, "args": list(command), "timeout": timeout},
                timeout=call_timeout,
                max_frame=EXEC_FRAME_BYTES,
            )
        except ShimError as e:
            if e.kind == "timeout":
                raise DeadlineExceeded(
                    f"command {list(command)} timed out after {timeout}s in container "
                    f"{record.id} (killed)"
                ) from e
            raise Internal(f"exec in container {record.id}: {e}") from e
        return (
            base64.b64decode(result["stdout"]),
            base64.b64decode(result["stderr"]),
            int(result["exit_code"]),
        )

    def running(self, container_id: str) -> ContainerRecord:
        """The container's record; FailedPrecondition unless it is running."""
        return self._running(container_id)

    async def exec_stream(
        self, container_id: str, command: tuple[str, ...], tty: bool, stdio: builtins.list[int]
    ) -> int:
        """Runs `command` in the container with `stdio` (stdin, stdout, stderr; a terminal's
        slave thrice with `tty`) handed to the pod's shim, and returns its exit code. The fds
        are sent before the first await that can take long: the caller may close its copies
        as soon as the command started, which this does not wait for."""
        record = self._running(container_id)
        if not command:
            raise InvalidArgument("Exec needs a command")
        bundle = self._sandboxes.shim_bundle(record.sandbox_id)
        try:
            result, _ = await call_passing_fds(
                bundle / SOCKET_FILE,
                "exec-stream",
                {"id": record.id, "args": list(command), "tty": tty},
                stdio,
            )
        except ShimError as e:
            raise Internal(f"exec in container {record.id}: {e}") from e
        return int(result["exit_code"])

    def open_terminal(self, container_id: str) -> tuple[int, int]:
        """(master, slave) of a new terminal in the container's own devpts; one of the
        daemon's when the container has none (the command then sees no name for it)."""
        record = self._running(container_id)
        try:
            return open_pty(f"/proc/{record.pid}/root/dev/pts/ptmx")
        except OSError as e:
            log.warning("no terminal in the container's devpts", container=record.id, error=str(e))
            return os.openpty()

    async def attach_stream(self, container_id: str, outputs: dict[str, int], stdin: bool) -> int:
        """Has the pod's shim copy the container's output streams into `outputs` (stream name
        -> pipe write end; the caller closes its copies) until the container exits or the
        pipe's reader goes. Returns a dup of the container's stdin when `stdin` (else -1)."""
        record = self._running(container_id)
        bundle = self._sandboxes.shim_bundle(record.sandbox_id)
        names = sorted(outputs)
        try:
            result, passed = await call_passing_fds(
                bundle / SOCKET_FILE,
                "attach",
                {"id": record.id, "streams": names, "stdin": stdin},
                [outputs[n] for n in names],
            )
        except ShimError as e:
            raise Internal(f"attach to container {record.id}: {e}") from e
        if result.get("stdin") and passed:
            for fd in passed[1:]:
                os.close(fd)
            return passed[0]
        for fd in passed:
            os.close(fd)
        return -1

    async def close_stdin_once(self, container_id: str) -> None:
        """After an attached client's stdin ended: with stdin_once (and no tty, kubelet's rule)
        the container's stdin is closed, so it sees EOF."""
        record = self.status(container_id)
        if not (record.config.stdin_once and not record.config.tty):
            return
        try:
            await asyncio.to_thread(
                self._shim(record.sandbox_id).call, "close-stdin", {"id": record.id}
            )
        except ShimError as e:
            log.warning("closing stdin failed", container=record.id, error=str(e))

    def reopen_log(self, container_id: str) -> None:
        record = self._running(container_id)
        try:
            self._shim(record.sandbox_id).call("reopen-log", {"id": record.id})
        except ShimError as e:
            raise Internal(f"reopening the log of container {record.id}: {e}") from e

    # --- resources and usage ----------------------------------------------------------------

    def update_resources(self, container_id: str, resources: Resources) -> None:
        """UpdateContainerResources: the live cgroup first (all or nothing), then the record
        and the spec, so ContainerStatus and a restarted daemon report the new values. Fields
        left 0 keep their current value, as the cgroup does."""
        full = self._resolve(container_id)
        if full is None:
            raise NotFound(f"container {container_id} not found")
        with self._operation(full) as record:
            if record is None:
                raise NotFound(f"container {container_id} not found")
            if record.state not in (ContainerState.CREATED, ContainerState.RUNNING):
                raise FailedPrecondition(
                    f"container {full} is {record.state.name}; only a created or running "
                    "container's resources can change"
                )
            if self._cgroups is None or not record.cgroup:
                raise FailedPrecondition(f"container {full} has no cgroup to update")
            try:
                self._cgroups.update(record.cgroup, resources)
            except FileNotFoundError as e:
                raise FailedPrecondition(f"container {full}: its cgroup is gone ({e})") from None
            merged = merge_resources(record.config.resources, resources)
            record = dataclasses.replace(
                record, config=dataclasses.replace(record.config, resources=merged)
            )
            self._store.save(record)
            spec = self.spec_of(full)
            if spec:
                linux = spec.setdefault("linux", {})
                devices = linux.get("resources", {}).get("devices")
                linux["resources"] = to_oci(merged)
                if devices is not None:
                    linux["resources"]["devices"] = devices
                write_json_atomic(self._store.dir_of(full) / "config.json", spec)
            with self._lock:
                current = self._records.get(full)
                if current is not None:
                    self._records[full] = dataclasses.replace(current, config=record.config)
        log.info("container resources updated", container=full)

    def usage(self, record: ContainerRecord, detailed: bool = False) -> ContainerUsage:
        """One container's numbers (blocking: reads cgroup files, walks the writable layer
        at most every few seconds); `detailed` adds the metrics' `CgroupDetail`."""
        cgroup_usage = None
        if self._usage is not None and record.cgroup:
            cgroup_usage = self._usage.cgroup(record.id, record.cgroup, detailed)
        layer = None
        if self._usage is not None:
            layer = self._usage.writable_layer(
                record.id,
                str(self._store.dir_of(record.id) / "upper"),
                self._config.root_dir,
            )
        return ContainerUsage(record, cgroup_usage, layer)

    def list_usage(
        self, selector: ContainerFilter, detailed: bool = False
    ) -> builtins.list[ContainerUsage]:
        """ListContainerStats: containers that are not exited (kubelet's own rule)."""
        return [
            self.usage(r, detailed)
            for r in self.list(selector)
            if r.state in (ContainerState.CREATED, ContainerState.RUNNING)
        ]

    def sandbox_usage(
        self, selector: SandboxFilter, detailed: bool = False
    ) -> builtins.list[SandboxUsage]:
        """ListPodSandboxStats (and, `detailed`, ListPodSandboxMetrics): ready pods, their
        containers' sums, their network."""
        result = []
        for view in self._sandboxes.list(selector):
            if view.state != SandboxState.READY:
                continue
            containers = self.list_usage(ContainerFilter(sandbox_id=view.record.id), detailed)
            containers = [c for c in containers if c.record.sandbox_id == view.record.id]
            result.append(self._sandbox_usage(view, containers))
        return result

    def _sandbox_usage(
        self, view: SandboxView, containers: builtins.list[ContainerUsage]
    ) -> SandboxUsage:
        now = time.time_ns()
        cpu_ns, memory, processes = sum_usage(
            now, [c.cgroup for c in containers if c.cgroup is not None]
        )
        rate = None
        network = None
        if self._usage is not None:
            rate = self._usage.rate(f"sandbox:{view.record.id}", now, cpu_ns)
            shim = view.record.shim
            if shim is not None and view.record.config.namespaces.network != NamespaceMode.NODE:
                network = self._usage.network(shim.pid)
        return SandboxUsage(
            view=view,
            cpu=CpuUsage(now, cpu_ns, rate),
            memory=memory,
            network=network,
            process_count=processes,
            containers=tuple(containers),
        )

    # --- the sandbox's hooks ----------------------------------------------------------------

    def stop_sandbox_containers(self, sandbox_id: str) -> None:
        """Before a pod's shim goes: every running container gets SIGKILL at once (kubelet
        has stopped them gracefully already) and we wait, bounded, for their exits. Those not
        seen by then are recorded by the shim as it shuts down, and read back from their exit
        files when its event connection closes."""
        running = [
            r
            for r in self.list(ContainerFilter(sandbox_id=sandbox_id))
            if r.sandbox_id == sandbox_id and r.state == ContainerState.RUNNING
        ]
        shim = self._shim(sandbox_id)
        for record in running:
            try:
                shim.call("kill", {"id": record.id, "signal": int(signal.SIGKILL)})
            except ShimError as e:
                log.warning("cannot kill a container", container=record.id, error=str(e))
        deadline = time.monotonic() + SANDBOX_STOP_WAIT_SECONDS
        for record in running:
            self._wait_exit(record.id, max(0.0, deadline - time.monotonic()))

    def sandbox_stopped(self, sandbox_id: str) -> None:
        """After a pod's shim is gone: its containers' ends, from the exit files it left."""
        self._events.unsubscribe(sandbox_id)
        self._on_shim_lost(sandbox_id)

    def remove_sandbox_containers(self, sandbox_id: str) -> None:
        """Called from a worker thread by RemovePodSandbox."""
        for record in self.list(ContainerFilter(sandbox_id=sandbox_id)):
            if record.sandbox_id != sandbox_id:
                continue
            self._remove(record.id)
            asyncio.run_coroutine_threadsafe(
                self._images.release_layers(record.id), self._loop
            ).result(timeout=60)

    # --- life of the service --------------------------------------------------------------

    def recover(self) -> None:
        """Rebuilds the index from the store, the exit files and the live shims."""
        for record in self._store.load_all():
            exit = self._store.read_exit(record.id)
            if exit is not None:
                record = dataclasses.replace(record, state=ContainerState.EXITED, exit=exit)
            self._records[record.id] = record
            key = (record.sandbox_id, record.config.metadata.name, record.config.metadata.attempt)
            self._names[key] = record.id
        sandboxes = {r.sandbox_id for r in self._records.values() if r.exit is None}
        for sandbox_id in sandboxes:
            known: dict[str, Mapping[str, Any]] = {}
            try:
                if self._sandboxes.status(sandbox_id).state == SandboxState.READY:
                    answer = self._events.subscribe(
                        sandbox_id, self._sandboxes.shim_bundle(sandbox_id)
                    )
                    known = {str(c["id"]): c for c in answer.get("containers", ())}
            except Exception as e:
                log.warning("cannot reach a sandbox's shim", sandbox=sandbox_id, error=str(e))
            for record in list(self._records.values()):
                if record.sandbox_id != sandbox_id or record.exit is not None:
                    continue
                view = known.get(record.id)
                if view is not None:
                    self._complete_recovered(record, view)
                elif record.pid == 0:
                    self._roll_back_create(record)
                else:
                    self._on_shim_lost_one(record)
        # Leases of containers with no record: the daemon died between leasing the layers and
        # saving the record, or between deleting the record and releasing them.
        for owner in self._images.lease_owners() - set(self._records):
            log.warning("releasing layers leased to a container that does not exist", owner=owner)
            self._release_layers_now(owner)
        log.info("containers recovered", count=len(self._records))

    def _complete_recovered(self, record: ContainerRecord, view: Mapping[str, Any]) -> None:
        """A container the shim knows whose record lags behind it (the daemon died between
        the shim's answer and saving it): the record takes the shim's PID and start."""
        changed = record
        if not record.pid and view.get("pid"):
            changed = dataclasses.replace(changed, pid=int(view["pid"]), user=container_user(view))
        if record.state == ContainerState.CREATED and view.get("started_at"):
            changed = dataclasses.replace(
                changed, state=ContainerState.RUNNING, started_at=int(view["started_at"])
            )
        if changed != record:
            log.warning("completing a container's record from its shim", container=record.id)
            self._store.save(changed)
            self._records[record.id] = changed

    def _roll_back_create(self, record: ContainerRecord) -> None:
        """A create the daemon died in before the shim made the process: nothing runs, so
        it is undone (the client's retry then creates it afresh under the same name)."""
        log.warning("rolling back a container left half-created", container=record.id)
        self._remove_cgroup(record.id, record.cgroup)
        self._store.delete(record.id)
        self._records.pop(record.id, None)
        key = (record.sandbox_id, record.config.metadata.name, record.config.metadata.attempt)
        if self._names.get(key) == record.id:
            del self._names[key]
        self._release_layers_now(record.id)

    def _release_layers_now(self, owner: str) -> None:
        """release_layers from a worker thread (recovery runs on one)."""
        try:
            release = self._images.release_layers(owner)
            asyncio.run_coroutine_threadsafe(release, self._loop).result(timeout=60)
        except Exception as e:
            log.error("leased layers not released", owner=owner, error=str(e))

    def _on_shim_lost_one(self, record: ContainerRecord) -> None:
        exit = self._store.read_exit(record.id) or ExitRecord(
            UNKNOWN_EXIT_CODE, time.time_ns(), "Unknown", "the pod's shim no longer knows it"
        )
        self._mark_exited(record.id, exit)

    def close(self) -> None:
        self._events.close()
