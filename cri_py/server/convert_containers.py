"""Protobuf <-> the runtime's own types, for the container RPCs: the one place container CRI
messages are read field by field. Unknown enum numbers are the client's error."""

from __future__ import annotations

import json
from typing import Any

from cri_py.api import api_pb2 as pb
from cri_py.errors import InvalidArgument
from cri_py.runtime.container_model import (
    ContainerConfig,
    ContainerFilter,
    ContainerMetadata,
    ContainerRecord,
    ContainerState,
    Mount,
    Propagation,
)
from cri_py.runtime.model import NamespaceMode
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


def container_config(config: pb.ContainerConfig) -> ContainerConfig:
    security = config.linux.security_context
    mounts = []
    for m in config.mounts:
        try:
            propagation = Propagation(m.propagation)
        except ValueError:
            raise InvalidArgument(f"mount {m.container_path}: unknown propagation") from None
        mounts.append(Mount(m.container_path, m.host_path, m.readonly, propagation))
    try:
        pid_mode = NamespaceMode(security.namespace_options.pid)
    except ValueError:
        raise InvalidArgument("unknown PID namespace mode") from None
    return ContainerConfig(
        metadata=ContainerMetadata(config.metadata.name, config.metadata.attempt),
        image=config.image.image,
        command=tuple(config.command),
        args=tuple(config.args),
        working_dir=config.working_dir,
        # Values are bytes in the CRI; undecodable ones survive as surrogate escapes.
        envs=tuple((kv.key, kv.value.decode("utf-8", "surrogateescape")) for kv in config.envs),
        mounts=tuple(mounts),
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
        readonly_rootfs=security.readonly_rootfs,
        privileged=security.privileged,
        stop_signal=_signal_name(config.stop_signal),
    )


def container_filter(request: pb.ListContainersRequest) -> ContainerFilter:
    if not request.HasField("filter"):
        return ContainerFilter()
    f = request.filter
    state = None
    if f.HasField("state"):
        try:
            state = ContainerState(f.state.state)
        except ValueError:
            raise InvalidArgument(f"unknown container state {f.state.state}") from None
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
        image=pb.ImageSpec(image=record.config.image),
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
        image=pb.ImageSpec(image=record.config.image),
        image_ref=record.image_id,
        image_id=record.image_id,
        reason=exit.reason if exit else "",
        message=exit.message if exit else "",
        labels=dict(record.config.labels),
        annotations=dict(record.config.annotations),
        mounts=[
            pb.Mount(
                container_path=m.container_path,
                host_path=m.host_path,
                readonly=m.readonly,
                propagation=int(m.propagation),  # type: ignore[arg-type]
            )
            for m in record.config.mounts
        ],
        log_path=record.log_path,
        stop_signal=_signal_value(record.config.stop_signal),  # type: ignore[arg-type]
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
