"""The runtime's own types for pod sandboxes: what the server edge converts CRI messages into,
what the store persists and what services pass around (config, record, view, filter, the
namespace and user-namespace options containers share). Frozen; no protobuf here."""

from __future__ import annotations

import enum
from collections.abc import Mapping
from dataclasses import dataclass, field

from cri_py.model.resources import Resources


class NamespaceMode(enum.IntEnum):
    """CRI's NamespaceMode values (the numbers are the proto's)."""

    POD = 0
    CONTAINER = 1
    NODE = 2
    TARGET = 3


class SandboxState(enum.IntEnum):
    """CRI's PodSandboxState values."""

    READY = 0
    NOTREADY = 1


class Phase(enum.StrEnum):
    """Where a sandbox is in its life; persisted so a restart knows what to finish or undo."""

    # The record exists, side effects may be half done: a restart rolls them back.
    CREATING = "creating"
    # Everything is in place; READY while its shim lives.
    CREATED = "created"
    # Network, shim, pins and mounts released; only the record and files remain.
    STOPPED = "stopped"


@dataclass(frozen=True)
class PodMetadata:
    name: str
    uid: str
    namespace: str
    attempt: int = 0


@dataclass(frozen=True)
class DNSConfig:
    servers: tuple[str, ...] = ()
    searches: tuple[str, ...] = ()
    options: tuple[str, ...] = ()

    @property
    def empty(self) -> bool:
        return not (self.servers or self.searches or self.options)


@dataclass(frozen=True)
class PortMapping:
    protocol: int = 0  # CRI Protocol: 0 TCP, 1 UDP, 2 SCTP
    container_port: int = 0
    host_port: int = 0
    host_ip: str = ""


@dataclass(frozen=True)
class IDMapping:
    """A range of IDs: `length` IDs from `container_id` inside are `host_id`... outside."""

    container_id: int
    host_id: int
    length: int


@dataclass(frozen=True)
class UserNamespace:
    """The CRI's UserNamespace: NODE (the host's users) or POD (a pod-wide user namespace with
    these mappings). An unset CRI field means NODE: a pod that did not ask keeps host users."""

    mode: NamespaceMode = NamespaceMode.NODE
    uids: tuple[IDMapping, ...] = ()
    gids: tuple[IDMapping, ...] = ()


@dataclass(frozen=True)
class NamespaceOptions:
    network: NamespaceMode = NamespaceMode.POD
    pid: NamespaceMode = NamespaceMode.POD
    ipc: NamespaceMode = NamespaceMode.POD
    user: UserNamespace = field(default_factory=UserNamespace)


@dataclass(frozen=True)
class SandboxConfig:
    metadata: PodMetadata
    hostname: str = ""
    log_directory: str = ""
    dns: DNSConfig = field(default_factory=DNSConfig)
    port_mappings: tuple[PortMapping, ...] = ()
    labels: Mapping[str, str] = field(default_factory=dict)
    annotations: Mapping[str, str] = field(default_factory=dict)
    namespaces: NamespaceOptions = field(default_factory=NamespaceOptions)
    sysctls: Mapping[str, str] = field(default_factory=dict)
    cgroup_parent: str = ""
    privileged: bool = False
    # Pod-level resources: the sum of the containers' and the pod overhead (both from
    # kubelet; UpdatePodSandboxResources replaces them on a resize).
    resources: Resources = field(default_factory=Resources)
    overhead: Resources = field(default_factory=Resources)


@dataclass(frozen=True)
class ShimInfo:
    pid: int
    start_time: int
    init_pid: int = 0


@dataclass(frozen=True)
class SandboxRecord:
    """What the store keeps of one sandbox (one atomic JSON file)."""

    id: str
    config: SandboxConfig
    created_at: int  # ns since the epoch
    phase: Phase = Phase.CREATING
    runtime_handler: str = ""
    shim: ShimInfo | None = None
    ip: str = ""
    additional_ips: tuple[str, ...] = ()
    # The network the pod was set up with ("builtin" or "cni"; "" with the host's network):
    # teardown uses the same one whatever the CNI conf dir holds by then.
    network: str = "builtin"
    # Where the pod's files and namespace pins live (absolute paths).
    namespaces: Mapping[str, str] = field(default_factory=dict)
    shm_path: str = ""
    hostname: str = ""
    # The pod cgroup cri-py made (and limits) when the CRI gave no cgroup_parent; the pod's
    # containers go under it. "" when kubelet's parent is used (kubelet sizes that one).
    cgroup: str = ""
    # The parent cri-py made (systemd driver: the slice `cgroup_parent` names, when systemd
    # had none) with the pod's limits; the last of the pods that record it removes it.
    made_parent: str = ""


@dataclass(frozen=True)
class SandboxView:
    """A sandbox as the CRI reports it: the record plus whether its shim is alive."""

    record: SandboxRecord
    state: SandboxState


@dataclass(frozen=True)
class SandboxFilter:
    id: str = ""
    state: SandboxState | None = None
    labels: Mapping[str, str] = field(default_factory=dict)
