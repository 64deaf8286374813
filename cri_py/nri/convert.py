"""The runtime's records and a container's OCI spec as NRI shows them to plugins (PodSandbox,
Container). Pure: records and spec dicts in, messages out."""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any

from cri_py.model.container import ContainerRecord, ContainerState
from cri_py.model.sandbox import SandboxRecord
from cri_py.nri import api_pb2 as api
from cri_py.nri.adjust import nri_resources, resources_from_model

_STATES = {
    ContainerState.CREATED: api.CONTAINER_CREATED,
    ContainerState.RUNNING: api.CONTAINER_RUNNING,
    ContainerState.EXITED: api.CONTAINER_STOPPED,
    ContainerState.UNKNOWN: api.CONTAINER_UNKNOWN,
}

_NAMESPACE_TYPES = {"net": "network", "uts": "uts", "ipc": "ipc", "pid": "pid", "user": "user"}


def pod_sandbox(record: SandboxRecord) -> api.PodSandbox:
    config = record.config
    pod = api.PodSandbox(
        id=record.id,
        name=config.metadata.name,
        uid=config.metadata.uid,
        namespace=config.metadata.namespace,
        labels=dict(config.labels),
        annotations=dict(config.annotations),
        runtime_handler=record.runtime_handler,
        pid=record.shim.init_pid or record.shim.pid if record.shim else 0,
        ips=[ip for ip in (record.ip, *record.additional_ips) if ip],
    )
    pod.linux.cgroup_parent = config.cgroup_parent or record.cgroup
    pod.linux.cgroups_path = record.cgroup or config.cgroup_parent
    pod.linux.pod_resources.CopyFrom(resources_from_model(config.resources))
    pod.linux.pod_overhead.CopyFrom(resources_from_model(config.overhead))
    for kind, path in sorted(record.namespaces.items()):
        if kind in _NAMESPACE_TYPES:
            pod.linux.namespaces.add(type=_NAMESPACE_TYPES[kind], path=path)
    return pod


def container(record: ContainerRecord, spec: Mapping[str, Any]) -> api.Container:
    """A container as plugins see it: its record's state and its spec's contents."""
    process = spec.get("process") or {}
    linux = spec.get("linux") or {}
    exit = record.exit
    out = api.Container(
        id=record.id,
        pod_sandbox_id=record.sandbox_id,
        name=record.config.metadata.name,
        state=_STATES.get(record.state, api.CONTAINER_UNKNOWN),
        labels=dict(record.config.labels),
        annotations={str(k): str(v) for k, v in (spec.get("annotations") or {}).items()},
        args=[str(a) for a in process.get("args") or ()],
        env=[str(e) for e in process.get("env") or ()],
        pid=record.pid,
        created_at=record.created_at,
        started_at=record.started_at,
        finished_at=exit.finished_at if exit else 0,
        exit_code=exit.exit_code if exit else 0,
        status_reason=exit.reason if exit else "",
        status_message=exit.message if exit else "",
    )
    out.image.name = record.image_name or record.config.image
    out.image.digest = record.image_id
    for m in spec.get("mounts") or ():
        out.mounts.add(
            destination=str(m.get("destination", "")),
            type=str(m.get("type", "")),
            source=str(m.get("source", "")),
            options=[str(o) for o in m.get("options") or ()],
        )
    for r in process.get("rlimits") or ():
        out.rlimits.add(type=str(r["type"]), hard=int(r["hard"]), soft=int(r["soft"]))
    hooks = spec.get("hooks") or {}
    for field, key in (
        ("prestart", "prestart"),
        ("create_runtime", "createRuntime"),
        ("create_container", "createContainer"),
        ("start_container", "startContainer"),
        ("poststart", "poststart"),
        ("poststop", "poststop"),
    ):
        for h in hooks.get(key) or ():
            hook = getattr(out.hooks, field).add(
                path=str(h.get("path", "")),
                args=[str(a) for a in h.get("args") or ()],
                env=[str(e) for e in h.get("env") or ()],
            )
            if "timeout" in h:
                hook.timeout.value = int(h["timeout"])
    user = process.get("user") or {}
    if record.user is not None:
        out.user.uid = record.user.uid
        out.user.gid = record.user.gid
        out.user.additional_gids.extend(record.user.supplemental_groups)
    elif user:
        out.user.uid = int(user.get("uid", 0))
        out.user.gid = int(user.get("gid", 0))
        out.user.additional_gids.extend(int(g) for g in user.get("additionalGids") or ())
    for ns in linux.get("namespaces") or ():
        out.linux.namespaces.add(type=str(ns.get("type", "")), path=str(ns.get("path", "")))
    for d in linux.get("devices") or ():
        device = out.linux.devices.add(
            path=str(d["path"]), type=str(d["type"]), major=int(d["major"]), minor=int(d["minor"])
        )
        if "fileMode" in d:
            device.file_mode.value = int(d["fileMode"])
        device.uid.value = int(d.get("uid", 0))
        device.gid.value = int(d.get("gid", 0))
    if "resources" in linux:
        out.linux.resources.CopyFrom(nri_resources(linux["resources"]))
    if "oomScoreAdj" in process:
        out.linux.oom_score_adj.value = int(process["oomScoreAdj"])
    out.linux.cgroups_path = str(linux.get("cgroupsPath", ""))
    seccomp = record.config.seccomp
    if seccomp is not None:
        out.linux.seccomp_profile.profile_type = api.SecurityProfile.ProfileType.ValueType(
            int(seccomp.type)
        )
        out.linux.seccomp_profile.localhost_ref = seccomp.localhost_ref
    return out
