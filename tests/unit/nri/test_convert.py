"""Records and specs as NRI shows them to plugins."""

from __future__ import annotations

from cri_py.model.container import (
    ContainerConfig,
    ContainerMetadata,
    ContainerRecord,
    ContainerState,
    ContainerUser,
    ExitRecord,
)
from cri_py.model.resources import Resources
from cri_py.model.sandbox import PodMetadata, SandboxConfig, SandboxRecord, ShimInfo
from cri_py.nri import api_pb2 as api
from cri_py.nri.convert import container, pod_sandbox


def test_pod_sandbox_carries_metadata_ips_cgroups_and_namespaces() -> None:
    record = SandboxRecord(
        id="p1",
        config=SandboxConfig(
            metadata=PodMetadata(name="web", uid="u1", namespace="ns"),
            labels={"app": "web"},
            annotations={"a": "b"},
            cgroup_parent="/kubepods/burstable/podu1",
            resources=Resources(memory_limit_in_bytes=1 << 30),
        ),
        created_at=1,
        runtime_handler="",
        shim=ShimInfo(pid=10, start_time=0, init_pid=11),
        ip="10.0.0.2",
        additional_ips=("fd00::2",),
        namespaces={"net": "/run/ns/net", "ipc": "/run/ns/ipc"},
    )
    pod = pod_sandbox(record)
    assert (pod.id, pod.name, pod.uid, pod.namespace) == ("p1", "web", "u1", "ns")
    assert dict(pod.labels) == {"app": "web"} and dict(pod.annotations) == {"a": "b"}
    assert list(pod.ips) == ["10.0.0.2", "fd00::2"]
    assert pod.pid == 11
    assert pod.linux.cgroup_parent == "/kubepods/burstable/podu1"
    assert pod.linux.pod_resources.memory.limit.value == 1 << 30
    assert [(n.type, n.path) for n in pod.linux.namespaces] == [
        ("ipc", "/run/ns/ipc"),
        ("network", "/run/ns/net"),
    ]


def test_container_carries_its_state_exit_and_the_specs_contents() -> None:
    record = ContainerRecord(
        id="c1",
        sandbox_id="p1",
        config=ContainerConfig(
            metadata=ContainerMetadata(name="app"), image="busybox", labels={"l": "1"}
        ),
        created_at=5,
        image_id="sha256:abc",
        state=ContainerState.EXITED,
        pid=42,
        started_at=6,
        exit=ExitRecord(exit_code=1, finished_at=7, reason="Error", message="boom"),
        user=ContainerUser(uid=1000, gid=1000, supplemental_groups=(5,)),
        image_name="busybox:latest",
    )
    spec = {
        "process": {
            "args": ["sh"],
            "env": ["A=1"],
            "rlimits": [{"type": "RLIMIT_NOFILE", "hard": 10, "soft": 5}],
            "oomScoreAdj": 100,
        },
        "mounts": [{"destination": "/d", "type": "bind", "source": "/s", "options": ["ro"]}],
        "annotations": {"x": "y"},
        "linux": {
            "cgroupsPath": "/kubepods/c1",
            "devices": [{"path": "/dev/x", "type": "c", "major": 1, "minor": 2, "fileMode": 0o600}],
            "resources": {"cpu": {"shares": 2, "cpus": "0"}, "pids": {"limit": 10}},
            "namespaces": [{"type": "mount"}],
        },
    }
    out = container(record, spec)
    assert (out.id, out.pod_sandbox_id, out.name, out.state) == (
        "c1",
        "p1",
        "app",
        api.CONTAINER_STOPPED,
    )
    assert (out.pid, out.created_at, out.started_at, out.finished_at) == (42, 5, 6, 7)
    assert (out.exit_code, out.status_reason, out.status_message) == (1, "Error", "boom")
    assert list(out.args) == ["sh"] and list(out.env) == ["A=1"]
    assert dict(out.annotations) == {"x": "y"} and dict(out.labels) == {"l": "1"}
    assert [(m.destination, m.source, list(m.options)) for m in out.mounts] == [
        ("/d", "/s", ["ro"])
    ]
    assert [(r.type, r.hard, r.soft) for r in out.rlimits] == [("RLIMIT_NOFILE", 10, 5)]
    assert out.linux.oom_score_adj.value == 100
    assert out.linux.cgroups_path == "/kubepods/c1"
    assert out.linux.devices[0].file_mode.value == 0o600
    assert out.linux.resources.cpu.shares.value == 2 and out.linux.resources.pids.limit == 10
    assert (out.user.uid, list(out.user.additional_gids)) == (1000, [5])
    assert (out.image.name, out.image.digest) == ("busybox:latest", "sha256:abc")
