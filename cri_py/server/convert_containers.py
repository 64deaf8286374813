"""Protobuf <-> the runtime's own types, for the container RPCs: the one place container CRI
messages are read field by field. Unknown enum numbers are the client's error."""

from __future__ import annotations

import json
from typing import Any

from cri_py.api import api_pb2 as pb
from cri_py.errors import InvalidArgument
from cri_py.model.container import (
    ContainerConfig,
    ContainerFilter,
    ContainerMetadata,
    ContainerRecord,
    ContainerState,
    Device,
    Mount,
    ProfileType,
    Propagation,
    SecurityProfile,
    SupplementalGroupsPolicy,
)
from cri_py.model.resources import Resources
from cri_py.model.sandbox import NamespaceMode
from cri_py.runtime.events import ContainerEvent
from cri_py.server.convert import (
    id_mappings,
    parse_enum,
    pb_mappings,
    resources,
    sandbox_status,
    user_namespace,
)
from cri_py.store.codec import to_data


def _signal_name(value: int) -> str:
    """CRI's Signal enum (SIGNAL_SIGTERM) as a signal name (SIGTERM); "" for the default."""
    if value == 0:
        return ""
    try:
        return pb.Signal.Name(value).removeprefix("SIGNAL_")  # type: ignore[arg-type]
    except ValueError:
        raise InvalidArgument(f"unknown stop signal {value}") from None


def _signal_value(name: str) -> int:
    try:
        return int(pb.Signal.Value(f"SIGNAL_{name}"))
    except ValueError:
        return 0


def linux_resources(r: Resources, oom_score_adj: int = 0) -> pb.LinuxContainerResources:
    return pb.LinuxContainerResources(
        cpu_shares=r.cpu_shares,
        cpu_quota=r.cpu_quota,
        cpu_period=r.cpu_period,
        memory_limit_in_bytes=r.memory_limit_in_bytes,
        memory_swap_limit_in_bytes=r.memory_swap_limit_in_bytes,
        cpuset_cpus=r.cpuset_cpus,
        cpuset_mems=r.cpuset_mems,
        oom_score_adj=oom_score_adj,
        hugepage_limits=[
            pb.HugepageLimit(page_size=size, limit=limit)
            for size, limit in sorted(r.hugepage_limits.items())
        ],
        unified=dict(r.unified),
    )


def _profile(message: pb.SecurityProfile, what: str) -> SecurityProfile:
    kind = parse_enum(
        ProfileType, message.profile_type, f"unknown {what} profile type {message.profile_type}"
    )
    return SecurityProfile(kind, message.localhost_ref)


def container_config(config: pb.ContainerConfig) -> ContainerConfig:
    security = config.linux.security_context
    mounts = []
    for m in config.mounts:
        propagation = parse_enum(
            Propagation, m.propagation, f"mount {m.container_path}: unknown propagation"
        )
        image = m.image.image if m.HasField("image") else ""
        if image and m.host_path:
            raise InvalidArgument(
                f"mount {m.container_path}: host_path and image are mutually exclusive"
            )
        mounts.append(
            Mount(
                m.container_path,
                m.host_path,
                m.readonly,
                propagation,
                recursive_read_only=m.recursive_read_only,
                image=image,
                image_sub_path=m.image_sub_path,
                uid_mappings=id_mappings(m.uidMappings),
                gid_mappings=id_mappings(m.gidMappings),
            )
        )
    pid_mode = parse_enum(
        NamespaceMode, security.namespace_options.pid, "unknown PID namespace mode"
    )
    return ContainerConfig(
        metadata=ContainerMetadata(config.metadata.name, config.metadata.attempt),
        image=config.image.image,
        user_specified_image=config.image.user_specified_image,
        command=tuple(config.command),
        args=tuple(config.args),
        working_dir=config.working_dir,
        # Values are bytes in the CRI; undecodable ones survive as surrogate escapes.
        envs=tuple((kv.key, kv.value.decode("utf-8", "surrogateescape")) for kv in config.envs),
        mounts=tuple(mounts),
        devices=tuple(Device(d.container_path, d.host_path, d.permissions) for d in config.devices),
        cdi_devices=tuple(d.name for d in config.CDI_devices),
        labels=dict(config.labels),
        annotations=dict(config.annotations),
        log_path=config.log_path,
        stdin=config.stdin,
        stdin_once=config.stdin_once,
        tty=config.tty,
        run_as_user=security.run_as_user.value if security.HasField("run_as_user") else None,
        run_as_username=security.run_as_username,
        run_as_group=security.run_as_group.value if security.HasField("run_as_group") else None,
        supplemental_groups=tuple(security.supplemental_groups),
        pid_mode=pid_mode,
        target_id=security.namespace_options.target_id,
        user_namespace=user_namespace(security.namespace_options),
        readonly_rootfs=security.readonly_rootfs,
        privileged=security.privileged,
        add_capabilities=tuple(security.capabilities.add_capabilities),
        drop_capabilities=tuple(security.capabilities.drop_capabilities),
        add_ambient_capabilities=tuple(security.capabilities.add_ambient_capabilities),
        no_new_privs=security.no_new_privs,
        seccomp=_profile(security.seccomp, "seccomp") if security.HasField("seccomp") else None,
        seccomp_profile_path=security.seccomp_profile_path,
        apparmor=_profile(security.apparmor, "AppArmor") if security.HasField("apparmor") else None,
        apparmor_profile=security.apparmor_profile,
        selinux_options=tuple(
            v
            for v in (
                security.selinux_options.user,
                security.selinux_options.role,
                security.selinux_options.type,
                security.selinux_options.level,
            )
            if v
        ),
        masked_paths=tuple(security.masked_paths),
        readonly_paths=tuple(security.readonly_paths),
        supplemental_groups_policy=_groups_policy(security.supplemental_groups_policy),
        stop_signal=_signal_name(config.stop_signal),
        resources=resources(config.linux.resources),
        oom_score_adj=config.linux.resources.oom_score_adj,
    )


def _groups_policy(value: int) -> SupplementalGroupsPolicy:
    return parse_enum(
        SupplementalGroupsPolicy, value, f"unknown supplemental groups policy {value}"
    )


def container_filter(request: pb.ListContainersRequest) -> ContainerFilter:
    if not request.HasField("filter"):
        return ContainerFilter()
    f = request.filter
    state = None
    if f.HasField("state"):
        state = parse_enum(
            ContainerState, f.state.state, f"unknown container state {f.state.state}"
        )
    return ContainerFilter(
        id=f.id, state=state, sandbox_id=f.pod_sandbox_id, labels=dict(f.label_selector)
    )


def _metadata(record: ContainerRecord) -> pb.ContainerMetadata:
    m = record.config.metadata
    return pb.ContainerMetadata(name=m.name, attempt=m.attempt)


def container_summary(record: ContainerRecord) -> pb.Container:
    return pb.Container(
        id=record.id,
        pod_sandbox_id=record.sandbox_id,
        metadata=_metadata(record),
        image=_image(record),
        image_ref=record.image_id,
        image_id=record.image_id,
        state=int(record.state),  # type: ignore[arg-type]
        created_at=record.created_at,
        labels=dict(record.config.labels),
        annotations=dict(record.config.annotations),
    )


def container_status(record: ContainerRecord) -> pb.ContainerStatus:
    exit = record.exit
    return pb.ContainerStatus(
        id=record.id,
        metadata=_metadata(record),
        state=int(record.state),  # type: ignore[arg-type]
        created_at=record.created_at,
        started_at=record.started_at,
        finished_at=exit.finished_at if exit else 0,
        exit_code=exit.exit_code if exit else 0,
        image=_image(record),
        image_ref=record.image_id,
        image_id=record.image_id,
        reason=exit.reason if exit else "",
        message=exit.message if exit else "",
        labels=dict(record.config.labels),
        annotations=dict(record.config.annotations),
        mounts=[_mount(m) for m in record.config.mounts],
        log_path=record.log_path,
        stop_signal=_signal_value(record.config.stop_signal),  # type: ignore[arg-type]
        user=_user(record),
        resources=pb.ContainerResources(
            linux=linux_resources(record.config.resources, record.config.oom_score_adj)
        ),
    )


def container_event(event: ContainerEvent) -> pb.ContainerEventResponse:
    """A lifecycle event with the pod's status and every container's (kubelet needs the pod's
    metadata to act on it; older kubelets built the whole pod status from this message)."""
    return pb.ContainerEventResponse(
        container_id=event.container_id,
        container_event_type=int(event.type),  # type: ignore[arg-type]
        created_at=event.created_at,
        pod_sandbox_status=sandbox_status(event.sandbox) if event.sandbox else None,
        containers_statuses=[container_status(r) for r in event.containers],
    )


def _image(record: ContainerRecord) -> pb.ImageSpec:
    return pb.ImageSpec(
        image=record.image_name or record.config.image,
        user_specified_image=record.config.user_specified_image,
    )


def _mount(m: Mount) -> pb.Mount:
    image = None
    if m.image:
        # KEP-5365: image_ref is the image's ID, the PullImageResponse.image_ref kubelet saw.
        image = pb.ImageSpec(image=m.image, image_ref=m.image_ref)
    return pb.Mount(
        container_path=m.container_path,
        host_path=m.host_path,
        readonly=m.readonly,
        propagation=int(m.propagation),  # type: ignore[arg-type]
        recursive_read_only=m.recursive_read_only,
        image=image,
        image_sub_path=m.image_sub_path,
        uidMappings=pb_mappings(m.uid_mappings),
        gidMappings=pb_mappings(m.gid_mappings),
    )


def _user(record: ContainerRecord) -> pb.ContainerUser | None:
    if record.user is None:
        return None
    return pb.ContainerUser(
        linux=pb.LinuxContainerUser(
            uid=record.user.uid,
            gid=record.user.gid,
            supplemental_groups=list(record.user.supplemental_groups),
        )
    )


def container_info(record: ContainerRecord, spec: dict[str, Any]) -> dict[str, str]:
    """ContainerStatus's verbose `info`: one JSON document under "info", as containerd's."""
    info = {
        "sandboxID": record.sandbox_id,
        "pid": record.pid,
        "runtimeSpec": spec,
        "config": to_data(record.config),
    }
    return {"info": json.dumps(info)}
