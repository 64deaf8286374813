"""Protobuf <-> the runtime's own types, for the sandbox RPCs: the one place CRI messages are
read field by field. Unknown enum numbers are the client's error (InvalidArgument)."""

from __future__ import annotations

import enum
import json
from typing import Any, TypeVar

from cri_py.api import api_pb2 as pb
from cri_py.errors import InvalidArgument
from cri_py.model.resources import Resources
from cri_py.model.sandbox import (
    DNSConfig,
    IDMapping,
    NamespaceMode,
    NamespaceOptions,
    PodMetadata,
    PortMapping,
    SandboxConfig,
    SandboxFilter,
    SandboxState,
    SandboxView,
    UserNamespace,
)
from cri_py.store.codec import to_data

E = TypeVar("E", bound=enum.Enum)


def parse_enum(kind: type[E], value: int, message: str) -> E:
    """A protobuf enum number as our enum; a number the CRI does not define is the client's
    error (`message` says which field), not a crash."""
    try:
        return kind(value)
    except ValueError:
        raise InvalidArgument(message) from None


def _mode(value: int, what: str) -> NamespaceMode:
    return parse_enum(NamespaceMode, value, f"{what}: unknown namespace mode {value}")


def id_mappings(mappings: Any) -> tuple[IDMapping, ...]:
    return tuple(IDMapping(m.container_id, m.host_id, m.length) for m in mappings)


def user_namespace(options: pb.NamespaceOption) -> UserNamespace | None:
    """The CRI's userns_options; None when unset (a pod then keeps the host's users)."""
    if not options.HasField("userns_options"):
        return None
    user = options.userns_options
    return UserNamespace(
        mode=_mode(user.mode, "user"), uids=id_mappings(user.uids), gids=id_mappings(user.gids)
    )


def pb_mappings(mappings: tuple[IDMapping, ...]) -> list[pb.IDMapping]:
    return [
        pb.IDMapping(container_id=m.container_id, host_id=m.host_id, length=m.length)
        for m in mappings
    ]


def sandbox_config(config: pb.PodSandboxConfig) -> SandboxConfig:
    security = config.linux.security_context
    options = security.namespace_options
    return SandboxConfig(
        metadata=PodMetadata(
            name=config.metadata.name,
            uid=config.metadata.uid,
            namespace=config.metadata.namespace,
            attempt=config.metadata.attempt,
        ),
        hostname=config.hostname,
        log_directory=config.log_directory,
        dns=DNSConfig(
            servers=tuple(config.dns_config.servers),
            searches=tuple(config.dns_config.searches),
            options=tuple(config.dns_config.options),
        ),
        port_mappings=tuple(
            PortMapping(
                protocol=p.protocol,
                container_port=p.container_port,
                host_port=p.host_port,
                host_ip=p.host_ip,
            )
            for p in config.port_mappings
        ),
        labels=dict(config.labels),
        annotations=dict(config.annotations),
        namespaces=NamespaceOptions(
            network=_mode(options.network, "network"),
            pid=_mode(options.pid, "pid"),
            ipc=_mode(options.ipc, "ipc"),
            user=user_namespace(options) or UserNamespace(),
        ),
        sysctls=dict(config.linux.sysctls),
        cgroup_parent=config.linux.cgroup_parent,
        privileged=security.privileged,
        resources=resources(config.linux.resources),
        overhead=resources(config.linux.overhead),
    )


def resources(linux: pb.LinuxContainerResources) -> Resources:
    """CRI LinuxContainerResources as our Resources (0 / empty = not set, as in the CRI)."""
    return Resources(
        cpu_shares=linux.cpu_shares,
        cpu_quota=linux.cpu_quota,
        cpu_period=linux.cpu_period,
        memory_limit_in_bytes=linux.memory_limit_in_bytes,
        memory_swap_limit_in_bytes=linux.memory_swap_limit_in_bytes,
        cpuset_cpus=linux.cpuset_cpus,
        cpuset_mems=linux.cpuset_mems,
        hugepage_limits={h.page_size: h.limit for h in linux.hugepage_limits},
        unified=dict(linux.unified),
    )


def sandbox_filter(request: pb.ListPodSandboxRequest) -> SandboxFilter:
    if not request.HasField("filter"):
        return SandboxFilter()
    f = request.filter
    state = None
    if f.HasField("state"):
        state = parse_enum(
            SandboxState, f.state.state, f"unknown pod sandbox state {f.state.state}"
        )
    return SandboxFilter(id=f.id, state=state, labels=dict(f.label_selector))


def _metadata(view: SandboxView) -> pb.PodSandboxMetadata:
    m = view.record.config.metadata
    return pb.PodSandboxMetadata(name=m.name, uid=m.uid, namespace=m.namespace, attempt=m.attempt)


def sandbox_status(view: SandboxView) -> pb.PodSandboxStatus:
    record = view.record
    ns = record.config.namespaces
    ips = (
        [record.ip, *record.additional_ips]
        if record.ip and view.record.phase.value == "created"
        else []
    )
    return pb.PodSandboxStatus(
        id=record.id,
        metadata=_metadata(view),
        state=int(view.state),  # type: ignore[arg-type]
        created_at=record.created_at,
        network=pb.PodSandboxNetworkStatus(
            ip=ips[0] if ips else "", additional_ips=[pb.PodIP(ip=ip) for ip in ips[1:]]
        ),
        linux=pb.LinuxPodSandboxStatus(
            namespaces=pb.Namespace(
                options=pb.NamespaceOption(
                    network=int(ns.network),  # type: ignore[arg-type]
                    pid=int(ns.pid),  # type: ignore[arg-type]
                    ipc=int(ns.ipc),  # type: ignore[arg-type]
                    userns_options=pb.UserNamespace(
                        mode=int(ns.user.mode),  # type: ignore[arg-type]
                        uids=pb_mappings(ns.user.uids),
                        gids=pb_mappings(ns.user.gids),
                    ),
                )
            )
        ),
        labels=dict(record.config.labels),
        annotations=dict(record.config.annotations),
        runtime_handler=record.runtime_handler,
    )


def sandbox_info(view: SandboxView) -> dict[str, str]:
    """PodSandboxStatus's verbose `info`: one JSON document under the key "info"."""
    record = view.record
    info: dict[str, Any] = {
        "id": record.id,
        "phase": record.phase.value,
        "pid": record.shim.pid if record.shim else 0,
        "initPid": record.shim.init_pid if record.shim else 0,
        "hostname": record.hostname,
        "namespaces": dict(record.namespaces),
        "shmPath": record.shm_path,
        "network": {
            "kind": record.network,
            "ip": record.ip,
            "additionalIps": list(record.additional_ips),
        },
        "config": to_data(record.config),
    }
    return {"info": json.dumps(info)}


def sandbox_summary(view: SandboxView) -> pb.PodSandbox:
    record = view.record
    return pb.PodSandbox(
        id=record.id,
        metadata=_metadata(view),
        state=int(view.state),  # type: ignore[arg-type]
        created_at=record.created_at,
        labels=dict(record.config.labels),
        annotations=dict(record.config.annotations),
        runtime_handler=record.runtime_handler,
    )
