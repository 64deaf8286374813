"""The runtime's own types for containers: what the server edge converts CRI messages into, what
the store persists and what the spec builder reads. Frozen; no protobuf here."""

from __future__ import annotations

import enum
from collections.abc import Mapping
from dataclasses import dataclass, field

from cri_py.runtime.model import NamespaceMode


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


@dataclass(frozen=True)
class ContainerMetadata:
    name: str
    attempt: int = 0


@dataclass(frozen=True)
class Mount:
    container_path: str
    host_path: str
    readonly: bool = False
    propagation: Propagation = Propagation.PRIVATE


@dataclass(frozen=True)
class ContainerConfig:
    metadata: ContainerMetadata
    # The image as the client named it (ImageSpec.image): a reference or an image ID.
    image: str
    command: tuple[str, ...] = ()
    args: tuple[str, ...] = ()
    working_dir: str = ""
    # (key, value) in the client's order; later duplicates win.
    envs: tuple[tuple[str, str], ...] = ()
    mounts: tuple[Mount, ...] = ()
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
    readonly_rootfs: bool = False
    privileged: bool = False
    # A signal name ("SIGTERM") or "" for the image's StopSignal / SIGTERM.
    stop_signal: str = ""


@dataclass(frozen=True)
class ExitRecord:
    """How a container's process ended, as the shim persists it in the container's dir."""

    exit_code: int
    finished_at: int  # ns since the epoch
    reason: str
    message: str = ""


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


@dataclass(frozen=True)
class ContainerFilter:
    id: str = ""
    state: ContainerState | None = None
    sandbox_id: str = ""
    labels: Mapping[str, str] = field(default_factory=dict)
