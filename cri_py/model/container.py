"""The runtime's own types for containers: what the server edge converts CRI messages into, what
the store persists and what the spec builder reads (config, mounts, devices, security profiles,
record, exit, filter). Frozen; no protobuf here."""

from __future__ import annotations

import enum
from collections.abc import Mapping
from dataclasses import dataclass, field

from cri_py.model.resources import Resources
from cri_py.model.sandbox import IDMapping, NamespaceMode, UserNamespace


class ContainerState(enum.IntEnum):
    """CRI's ContainerState values (the numbers are the proto's)."""

    CREATED = 0
    RUNNING = 1
    EXITED = 2
    UNKNOWN = 3


class Propagation(enum.IntEnum):
    """CRI's MountPropagation values."""

    PRIVATE = 0
    HOST_TO_CONTAINER = 1
    BIDIRECTIONAL = 2


class ProfileType(enum.IntEnum):
    """CRI's SecurityProfile.ProfileType values."""

    RUNTIME_DEFAULT = 0
    UNCONFINED = 1
    LOCALHOST = 2


class SupplementalGroupsPolicy(enum.IntEnum):
    """CRI's SupplementalGroupsPolicy: Merge adds the image's /etc/group memberships of the
    user to the requested groups, Strict uses only the requested ones."""

    MERGE = 0
    STRICT = 1


@dataclass(frozen=True)
class SecurityProfile:
    """A seccomp or AppArmor profile as the CRI names it."""

    type: ProfileType = ProfileType.RUNTIME_DEFAULT
    # Localhost: an absolute path (seccomp) or a profile name (AppArmor).
    localhost_ref: str = ""


@dataclass(frozen=True)
class ContainerMetadata:
    name: str
    attempt: int = 0


@dataclass(frozen=True)
class Mount:
    container_path: str
    host_path: str = ""  # empty for an image volume
    readonly: bool = False
    propagation: Propagation = Propagation.PRIVATE
    # Read-only all the way down (mount_setattr AT_RECURSIVE); the CRI requires `readonly`
    # and PRIVATE propagation with it.
    recursive_read_only: bool = False
    # An image volume (KEP 4639): the image as the client named it instead of a host path,
    # optionally only a directory of it; always read-only.
    image: str = ""
    image_sub_path: str = ""
    # The image's ID, resolved at create (ContainerStatus reports it as the mount's image_ref).
    image_ref: str = ""
    # An idmapped mount (kubelet sends the pod's mappings for every mount of a pod with its
    # own user namespace): host IDs appear shifted into the container's range.
    uid_mappings: tuple[IDMapping, ...] = ()
    gid_mappings: tuple[IDMapping, ...] = ()


@dataclass(frozen=True)
class Device:
    """A host device node the container gets at `container_path` (CRI Device)."""

    container_path: str
    host_path: str
    # Cgroup access: some of "r", "w", "m" ("" = all).
    permissions: str = ""


@dataclass(frozen=True)
class ContainerConfig:
    metadata: ContainerMetadata
    # The image as the client named it (ImageSpec.image): a reference or an image ID.
    image: str
    # kubelet names the image by ID in `image` and as the pod spec has it here.
    user_specified_image: str = ""
    command: tuple[str, ...] = ()
    args: tuple[str, ...] = ()
    working_dir: str = ""
    # (key, value) in the client's order; later duplicates win.
    envs: tuple[tuple[str, str], ...] = ()
    mounts: tuple[Mount, ...] = ()
    devices: tuple[Device, ...] = ()
    # Fully-qualified CDI device names (`vendor.com/class=name`), as CDI_devices lists them.
    cdi_devices: tuple[str, ...] = ()
    labels: Mapping[str, str] = field(default_factory=dict)
    annotations: Mapping[str, str] = field(default_factory=dict)
    # Relative to the sandbox's log_directory.
    log_path: str = ""
    stdin: bool = False
    stdin_once: bool = False
    tty: bool = False
    run_as_user: int | None = None
    run_as_username: str = ""
    run_as_group: int | None = None
    supplemental_groups: tuple[int, ...] = ()
    pid_mode: NamespaceMode = NamespaceMode.CONTAINER
    target_id: str = ""
    # The user namespace the client asked for (None: unset, the pod's); it must be the pod's.
    user_namespace: UserNamespace | None = None
    readonly_rootfs: bool = False
    privileged: bool = False
    # Capability names as the client sent them ("NET_ADMIN", "CAP_NET_ADMIN", "ALL").
    add_capabilities: tuple[str, ...] = ()
    drop_capabilities: tuple[str, ...] = ()
    add_ambient_capabilities: tuple[str, ...] = ()
    no_new_privs: bool = False
    # None: the field was unset (Unconfined, or the deprecated seccomp_profile_path's choice).
    seccomp: SecurityProfile | None = None
    # The deprecated `seccomp_profile_path` ("runtime/default", "unconfined", "localhost/...").
    seccomp_profile_path: str = ""
    apparmor: SecurityProfile | None = None
    apparmor_profile: str = ""
    # Ignored on a host without SELinux, refused on one with it (spec/security.check_mac).
    selinux_options: tuple[str, ...] = ()
    # Empty: the runtime's defaults.
    masked_paths: tuple[str, ...] = ()
    readonly_paths: tuple[str, ...] = ()
    supplemental_groups_policy: SupplementalGroupsPolicy = SupplementalGroupsPolicy.MERGE
    # A signal name ("SIGTERM") or "" for the image's StopSignal / SIGTERM.
    stop_signal: str = ""
    # The cgroup limits; UpdateContainerResources replaces them in the stored record.
    resources: Resources = field(default_factory=Resources)
    # kubelet sends one for every container (-997 Guaranteed ... 1000 BestEffort).
    oom_score_adj: int = 0


@dataclass(frozen=True)
class ExitRecord:
    """How a container's process ended, as the shim persists it in the container's dir."""

    exit_code: int
    finished_at: int  # ns since the epoch
    reason: str
    message: str = ""


@dataclass(frozen=True)
class ContainerUser:
    """Who the container's process runs as, resolved against the image (ContainerStatus.user)."""

    uid: int
    gid: int
    supplemental_groups: tuple[int, ...] = ()


@dataclass(frozen=True)
class ContainerRecord:
    """What the store keeps of one container (one atomic JSON file); the exit comes from the
    shim's exit file next to it."""

    id: str
    sandbox_id: str
    config: ContainerConfig
    created_at: int
    image_id: str
    # The full host path of the log file ("" when the sandbox has no log directory).
    log_path: str = ""
    state: ContainerState = ContainerState.CREATED
    pid: int = 0
    started_at: int = 0
    exit: ExitRecord | None = None
    user: ContainerUser | None = None
    # The container's cgroup path, absolute from each hierarchy's root ("" = none made).
    cgroup: str = ""
    # The image as ContainerStatus names it: the user's reference, not an ID (see image_name).
    image_name: str = ""


@dataclass(frozen=True)
class ContainerFilter:
    id: str = ""
    state: ContainerState | None = None
    sandbox_id: str = ""
    labels: Mapping[str, str] = field(default_factory=dict)
