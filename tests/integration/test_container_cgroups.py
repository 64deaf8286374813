"""Containers in their cgroups, against a real daemon: limits at create, the init inside the
cgroup, /sys/fs/cgroup in the container, UpdateContainerResources, OOM kills, stats, removal.

The daemon's default cgroup parent is `/cri-py-tests/<random>`; the module removes it (and any
leftover child) in every hierarchy, pass or fail. Needs the lab registry, like
test_containers.py.
"""

from __future__ import annotations

import json
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import grpc
import pytest

from cri_py.api import api_pb2 as pb
from cri_py.linux.cgroupfs import Cgroupfs, CgroupMode
from tests.host_kind import skip_host_kind

from .conftest import needs_root
from .test_containers import (
    BUSYBOX,
    CGROUP_PARENT,
    CONFIG,
    Lab,
    open_lab,
)

pytestmark = needs_root

PARENT = CGROUP_PARENT
# cgroups.pids_limit for this module's daemon: the CRI has no field for it, so the spec must.
PIDS_LIMIT = 2048


@pytest.fixture(scope="module")
def fs() -> Cgroupfs:
    fs = Cgroupfs.from_host()
    if fs.mode == CgroupMode.V2:
        skip_host_kind("cgroup-v2", "these tests read cgroup v1 files; v2 has golden tests")
    return fs


@pytest.fixture(scope="module")
def lab(tmp_path_factory: pytest.TempPathFactory, fs: Cgroupfs) -> Iterator[Lab]:
    # CONFIG ends with its `cgroups:` section.
    config = CONFIG + f"  pids_limit: {PIDS_LIMIT}\n"
    with open_lab(tmp_path_factory.mktemp("cgroups"), config) as opened:
        yield opened


def create(
    lab: Lab,
    sandbox_id: str,
    name: str,
    command: list[str],
    resources: pb.LinuxContainerResources | None = None,
    labels: dict[str, str] | None = None,
    pid_mode: int = 1,
) -> str:
    config = pb.ContainerConfig(
        metadata=pb.ContainerMetadata(name=name),
        image=pb.ImageSpec(image=BUSYBOX),
        command=command,
        log_path=f"{name}.log",
        labels=labels or {"test": name},
        linux=pb.LinuxContainerConfig(
            resources=resources,
            security_context=pb.LinuxContainerSecurityContext(
                namespace_options=pb.NamespaceOption(pid=pid_mode)  # type: ignore[arg-type]
            ),
        ),
    )
    request = pb.CreateContainerRequest(
        pod_sandbox_id=sandbox_id, config=config, sandbox_config=lab.configs[sandbox_id]
    )
    return lab.daemon.runtime().CreateContainer(request, timeout=30).container_id


def verbose_info(lab: Lab, container_id: str) -> dict[str, Any]:
    request = pb.ContainerStatusRequest(container_id=container_id, verbose=True)
    info: dict[str, Any] = json.loads(
        lab.daemon.runtime().ContainerStatus(request, timeout=10).info["info"]
    )
    return info


def cgroup_of(pod: str, container_id: str) -> str:
    """Where a container of a pod that names no cgroup parent lives: in the pod's cgroup."""
    return f"{PARENT}/cri-py-pod-{pod}/cri-py-{container_id}"


def test_limits_are_written_before_the_init_runs_and_shown_read_only_inside(
    lab: Lab, fs: Cgroupfs
) -> None:
    pod = lab.run_pod("limits")
    # What kubelet sends for cpu 500m, memory 64Mi.
    resources = pb.LinuxContainerResources(
        cpu_shares=512, cpu_quota=50000, cpu_period=100000, memory_limit_in_bytes=64 << 20
    )
    cid = create(lab, pod, "limited", ["sleep", "1000"], resources)
    cgroup = cgroup_of(pod, cid)
    assert fs.read(cgroup, "cpu", "cpu.shares") == "512"
    assert fs.read(cgroup, "cpu", "cpu.cfs_quota_us") == "50000"
    assert fs.read(cgroup, "cpu", "cpu.cfs_period_us") == "100000"
    assert fs.read(cgroup, "memory", "memory.limit_in_bytes") == "67108864"
    # Created, not started: the init already sits in every hierarchy's cgroup.
    pid = int(verbose_info(lab, cid)["pid"])
    for line in Path(f"/proc/{pid}/cgroup").read_text().splitlines():
        _, controllers, path = line.split(":", 2)
        if controllers:  # the v2 line ("0::...") of a hybrid host is not ours
            assert path == cgroup, line
    lab.start(cid)
    inside = lab.exec(cid, "cat", "/sys/fs/cgroup/memory/memory.limit_in_bytes")
    assert inside.stdout == b"67108864\n"
    denied = lab.exec(cid, "sh", "-c", "echo 1 > /sys/fs/cgroup/memory/memory.limit_in_bytes")
    assert denied.exit_code != 0 and b"Read-only" in denied.stderr
    # ExecSync's processes join the container's cgroup too.
    procs = lab.exec(cid, "sh", "-c", "cat /proc/self/cgroup")
    assert f"memory:{cgroup}".encode() in procs.stdout
    spec = verbose_info(lab, cid)["runtimeSpec"]
    assert spec["linux"]["cgroupsPath"] == cgroup
    assert spec["linux"]["resources"]["memory"] == {"limit": 67108864}
    lab.remove_pod(pod)
    assert not fs.exists(cgroup)


def test_update_container_resources_changes_the_live_cgroup_and_the_status(
    lab: Lab, fs: Cgroupfs
) -> None:
    pod = lab.run_pod("update")
    resources = pb.LinuxContainerResources(cpu_shares=256, memory_limit_in_bytes=64 << 20)
    cid = create(lab, pod, "updated", ["sleep", "1000"], resources)
    lab.start(cid)
    rt = lab.daemon.runtime()
    rt.UpdateContainerResources(
        pb.UpdateContainerResourcesRequest(
            container_id=cid,
            linux=pb.LinuxContainerResources(
                cpu_shares=1024, cpu_quota=20000, cpu_period=100000, memory_limit_in_bytes=96 << 20
            ),
        ),
        timeout=10,
    )
    cgroup = cgroup_of(pod, cid)
    assert fs.read(cgroup, "cpu", "cpu.shares") == "1024"
    assert fs.read(cgroup, "cpu", "cpu.cfs_quota_us") == "20000"
    assert fs.read(cgroup, "memory", "memory.limit_in_bytes") == str(96 << 20)
    reported = lab.status(cid).resources.linux
    assert (reported.cpu_shares, reported.cpu_quota, reported.memory_limit_in_bytes) == (
        1024,
        20000,
        96 << 20,
    )
    # A value the kernel refuses changes nothing.
    with pytest.raises(grpc.RpcError) as caught:
        rt.UpdateContainerResources(
            pb.UpdateContainerResourcesRequest(
                container_id=cid,
                linux=pb.LinuxContainerResources(cpu_shares=2048, cpuset_cpus="4096"),
            ),
            timeout=10,
        )
    assert caught.value.code() == grpc.StatusCode.INVALID_ARGUMENT
    assert fs.read(cgroup, "cpu", "cpu.shares") == "1024"
    assert lab.status(cid).resources.linux.cpu_shares == 1024
    lab.remove_pod(pod)
    assert not fs.exists(cgroup)


def spec_and_cgroup(lab: Lab, fs: Cgroupfs, container_id: str, cgroup: str) -> tuple[Any, Any]:
    """The container's config.json `linux.resources` (the file, read from the bundle) and what
    its cgroup files hold, in the same terms."""
    bundle = lab.daemon.root_dir / "containers" / container_id
    spec = json.loads((bundle / "config.json").read_text())["linux"]["resources"]
    applied = {
        "cpu": {
            "shares": int(fs.read(cgroup, "cpu", "cpu.shares")),
            "quota": int(fs.read(cgroup, "cpu", "cpu.cfs_quota_us")),
            "period": int(fs.read(cgroup, "cpu", "cpu.cfs_period_us")),
        },
        "memory": {"limit": int(fs.read(cgroup, "memory", "memory.limit_in_bytes"))},
        "pids": {"limit": int(fs.read(cgroup, "pids", "pids.max"))},
    }
    return spec, applied


def test_config_json_holds_what_the_cgroup_holds_at_create_and_after_an_update(
    lab: Lab, fs: Cgroupfs
) -> None:
    pod = lab.run_pod("truth")
    # kubelet's 500m / 64Mi, with a zero limit for a huge page size the kernel has.
    resources = pb.LinuxContainerResources(
        cpu_shares=512,
        cpu_quota=50000,
        cpu_period=100000,
        memory_limit_in_bytes=64 << 20,
        hugepage_limits=[pb.HugepageLimit(page_size="2MB", limit=0)],
    )
    cid = create(lab, pod, "truth", ["sleep", "1000"], resources)
    cgroup = cgroup_of(pod, cid)
    spec, applied = spec_and_cgroup(lab, fs, cid, cgroup)
    assert applied == {
        "cpu": spec["cpu"],
        "memory": spec["memory"],
        "pids": spec["pids"],
    }
    assert spec["pids"] == {"limit": PIDS_LIMIT}  # the config's, written and applied
    assert spec["memory"] == {"limit": 64 << 20}
    if "hugetlb" in fs.controllers():
        assert spec["hugepageLimits"] == [{"pageSize": "2MB", "limit": 0}]
        assert fs.read(cgroup, "hugetlb", "hugetlb.2MB.limit_in_bytes") == "0"
    else:  # no controller: the spec does not claim a limit nobody applies
        assert "hugepageLimits" not in spec
    devices = spec["devices"]
    lab.start(cid)
    # kubelet's resize to 1 CPU share-wise, no CPU limit (quota 0 with its period), 96Mi.
    lab.daemon.runtime().UpdateContainerResources(
        pb.UpdateContainerResourcesRequest(
            container_id=cid,
            linux=pb.LinuxContainerResources(
                cpu_shares=1024, cpu_quota=0, cpu_period=100000, memory_limit_in_bytes=96 << 20
            ),
        ),
        timeout=10,
    )
    spec, applied = spec_and_cgroup(lab, fs, cid, cgroup)
    assert spec["cpu"] == {"shares": 1024, "period": 100000}
    assert applied["cpu"] == {"shares": 1024, "quota": -1, "period": 100000}
    assert applied["memory"] == spec["memory"] == {"limit": 96 << 20}
    assert applied["pids"] == spec["pids"] == {"limit": PIDS_LIMIT}
    assert spec["devices"] == devices
    reported = lab.status(cid).resources.linux
    assert (reported.cpu_shares, reported.cpu_quota, reported.memory_limit_in_bytes) == (
        1024,
        0,
        96 << 20,
    )
    # One the kernel refuses (no CPU 4096): neither config.json nor the cgroup changes.
    with pytest.raises(grpc.RpcError) as caught:
        lab.daemon.runtime().UpdateContainerResources(
            pb.UpdateContainerResourcesRequest(
                container_id=cid,
                linux=pb.LinuxContainerResources(cpu_shares=2048, cpuset_cpus="4096"),
            ),
            timeout=10,
        )
    assert caught.value.code() == grpc.StatusCode.INVALID_ARGUMENT
    assert spec_and_cgroup(lab, fs, cid, cgroup) == (spec, applied)
    lab.remove_pod(pod)


def test_a_container_past_its_memory_limit_is_oom_killed(lab: Lab) -> None:
    pod = lab.run_pod("oom")
    limit = 15 * 1024 * 1024
    resources = pb.LinuxContainerResources(
        memory_limit_in_bytes=limit, memory_swap_limit_in_bytes=limit
    )
    # critest's "Container OOM" command, and an init that is itself the victim.
    child = create(lab, pod, "oom-child", ["sh", "-c", "dd if=/dev/zero of=/dev/null bs=20M"],
                   resources)  # fmt: skip
    init = create(lab, pod, "oom-init", ["dd", "if=/dev/zero", "of=/dev/null", "bs=64M"],
                  resources)  # fmt: skip
    lab.start(child)
    lab.start(init)
    for cid in (child, init):
        status = lab.wait_exited(cid, timeout=30)
        assert (status.exit_code, status.reason) == (137, "OOMKilled")
    # A plain non-zero exit stays an Error.
    plain = create(lab, pod, "plain", ["sh", "-c", "exit 3"], resources)
    lab.start(plain)
    assert lab.wait_exited(plain).reason == "Error"
    lab.remove_pod(pod)


def test_stats_show_cpu_memory_layer_and_network(lab: Lab) -> None:
    pod = lab.run_pod("stats")
    busy = create(
        lab,
        pod,
        "busy",
        ["sh", "-c", "head -c 5000000 /dev/zero > /big; while true; do :; done"],
        labels={"role": "busy"},
    )
    idle = create(lab, pod, "idle", ["sleep", "1000"], labels={"role": "idle"})
    lab.start(busy)
    lab.start(idle)
    # The layer's size is cached for a while: first wait for the file to be written.
    wait_written = "until [ $(wc -c < /big) -ge 5000000 ]; do sleep 0.05; done"
    assert lab.exec(busy, "sh", "-c", wait_written).exit_code == 0
    rt = lab.daemon.runtime()
    rt.ListContainerStats(pb.ListContainerStatsRequest(), timeout=10)
    time.sleep(1.2)  # usage_nano_cores is a rate: it needs two samples a second apart
    stats = rt.ContainerStats(pb.ContainerStatsRequest(container_id=busy), timeout=10).stats
    assert stats.attributes.id == busy and stats.attributes.metadata.name == "busy"
    assert stats.cpu.usage_core_nano_seconds.value > 0
    # A spinning shell: most of a core on a quiet machine; on a loaded one (CI, parallel
    # work) still far above the idle container's.
    assert stats.cpu.usage_nano_cores.value > 50_000_000
    assert stats.memory.working_set_bytes.value > 0 and stats.memory.usage_bytes.value > 0
    assert stats.memory.page_faults.value > 0
    assert stats.writable_layer.used_bytes.value >= 5_000_000
    assert stats.writable_layer.inodes_used.value >= 1
    listed = rt.ListContainerStats(
        pb.ListContainerStatsRequest(
            filter=pb.ContainerStatsFilter(pod_sandbox_id=pod, label_selector={"role": "idle"})
        ),
        timeout=10,
    ).stats
    assert [s.attributes.id for s in listed] == [idle]
    assert listed[0].cpu.usage_nano_cores.value < stats.cpu.usage_nano_cores.value
    by_id = rt.ListContainerStats(
        pb.ListContainerStatsRequest(filter=pb.ContainerStatsFilter(id=busy)), timeout=10
    ).stats
    assert [s.attributes.id for s in by_id] == [busy]
    # Some traffic on the pod's interface, then the pod's numbers.
    lab.exec(idle, "sh", "-c", "ping -c 1 -W 1 10.95.0.1 || true")
    pod_stats = rt.PodSandboxStats(pb.PodSandboxStatsRequest(pod_sandbox_id=pod), timeout=10)
    linux = pod_stats.stats.linux
    assert pod_stats.stats.attributes.id == pod
    assert linux.cpu.usage_core_nano_seconds.value >= stats.cpu.usage_core_nano_seconds.value
    assert linux.memory.working_set_bytes.value > 0
    assert linux.process.process_count.value >= 2
    assert {c.attributes.id for c in linux.containers} == {busy, idle}
    assert linux.network.default_interface.name == "eth0"
    assert linux.network.default_interface.tx_bytes.value > 0
    listed_pods = rt.ListPodSandboxStats(
        pb.ListPodSandboxStatsRequest(filter=pb.PodSandboxStatsFilter(id=pod)), timeout=10
    ).stats
    assert [p.attributes.id for p in listed_pods] == [pod]
    lab.remove_pod(pod)


def test_no_cgroup_is_left_after_the_pods_are_removed(lab: Lab, fs: Cgroupfs) -> None:
    pod = lab.run_pod("leftover", pid_mode=0)
    # Orphans in the pod's PID namespace outlive their container's init: removal kills them.
    cid = create(lab, pod, "forker", ["sh", "-c", "sleep 1000 & sleep 1000"], pid_mode=0)
    lab.start(cid)
    lab.remove_pod(pod)
    for directory in fs.dirs(PARENT):
        assert not directory.exists() or not [p for p in directory.iterdir() if p.is_dir()]


def run_pod_with(lab: Lab, name: str, **linux: Any) -> str:
    config = pb.PodSandboxConfig(
        metadata=pb.PodSandboxMetadata(name=name, uid=f"uid-{name}", namespace="test"),
        log_directory=str(lab.logs / name),
        linux=pb.LinuxPodSandboxConfig(**linux),
    )
    request = pb.RunPodSandboxRequest(config=config)
    sandbox_id = lab.daemon.runtime().RunPodSandbox(request, timeout=30).pod_sandbox_id
    lab.pods.append(sandbox_id)
    lab.configs[sandbox_id] = config
    return sandbox_id


def test_pod_level_resources_bound_a_pod_without_a_parent(lab: Lab, fs: Cgroupfs) -> None:
    # Two containers' worth (500m / 64Mi in all) plus a RuntimeClass overhead of 100m / 16Mi.
    total = pb.LinuxContainerResources(
        cpu_shares=512, cpu_quota=50000, cpu_period=100000, memory_limit_in_bytes=64 << 20
    )
    overhead = pb.LinuxContainerResources(
        cpu_shares=102, cpu_quota=10000, cpu_period=100000, memory_limit_in_bytes=16 << 20
    )
    pod = run_pod_with(lab, "podlevel", resources=total, overhead=overhead)
    pod_cgroup = f"{PARENT}/cri-py-pod-{pod}"
    assert fs.read(pod_cgroup, "cpu", "cpu.shares") == "614"
    assert fs.read(pod_cgroup, "cpu", "cpu.cfs_quota_us") == "60000"
    assert fs.read(pod_cgroup, "memory", "memory.limit_in_bytes") == str(80 << 20)
    cid = create(lab, pod, "inpod", ["sleep", "1000"])
    lab.start(cid)
    procs = lab.exec(cid, "cat", "/proc/self/cgroup").stdout.decode()
    assert f"memory:{pod_cgroup}/cri-py-{cid}" in procs
    # A resize: the pod cgroup follows; a value the kernel refuses changes nothing.
    rt = lab.daemon.runtime()
    bigger = pb.LinuxContainerResources(
        cpu_shares=1024, cpu_quota=100000, cpu_period=100000, memory_limit_in_bytes=128 << 20
    )
    rt.UpdatePodSandboxResources(
        pb.UpdatePodSandboxResourcesRequest(
            pod_sandbox_id=pod, resources=bigger, overhead=overhead
        ),
        timeout=10,
    )
    assert fs.read(pod_cgroup, "cpu", "cpu.shares") == "1126"
    assert fs.read(pod_cgroup, "cpu", "cpu.cfs_quota_us") == "110000"
    assert fs.read(pod_cgroup, "memory", "memory.limit_in_bytes") == str(144 << 20)
    with pytest.raises(grpc.RpcError) as caught:
        rt.UpdatePodSandboxResources(
            pb.UpdatePodSandboxResourcesRequest(
                pod_sandbox_id=pod,
                resources=pb.LinuxContainerResources(cpu_shares=64, cpuset_cpus="4096"),
            ),
            timeout=10,
        )
    assert caught.value.code() == grpc.StatusCode.INVALID_ARGUMENT
    assert fs.read(pod_cgroup, "cpu", "cpu.shares") == "1126"
    with pytest.raises(grpc.RpcError) as caught:
        rt.UpdatePodSandboxResources(
            pb.UpdatePodSandboxResourcesRequest(pod_sandbox_id="no-such-pod"), timeout=10
        )
    assert caught.value.code() == grpc.StatusCode.NOT_FOUND
    lab.remove_pod(pod)
    assert not fs.exists(pod_cgroup)


def test_kubelets_pod_cgroup_holds_the_containers_and_is_never_written(
    lab: Lab, fs: Cgroupfs
) -> None:
    parent = f"{PARENT}/kubepods/burstable/poduid-kube"  # what kubelet's cgroupfs driver sends
    fs.create(parent)
    try:
        kubelets_pod_cgroup(lab, fs, parent)
    finally:
        for cgroup in (parent, f"{PARENT}/kubepods/burstable", f"{PARENT}/kubepods"):
            fs.remove(cgroup)


def kubelets_pod_cgroup(lab: Lab, fs: Cgroupfs, parent: str) -> None:
    before = fs.read(parent, "memory", "memory.limit_in_bytes")
    pod = run_pod_with(
        lab,
        "kubeletpod",
        cgroup_parent=parent,
        resources=pb.LinuxContainerResources(cpu_shares=512, memory_limit_in_bytes=64 << 20),
    )
    cid = create(lab, pod, "kube", ["sleep", "1000"])
    lab.start(cid)
    assert fs.exists(f"{parent}/cri-py-{cid}")
    lab.daemon.runtime().UpdatePodSandboxResources(
        pb.UpdatePodSandboxResourcesRequest(
            pod_sandbox_id=pod,
            resources=pb.LinuxContainerResources(memory_limit_in_bytes=32 << 20),
        ),
        timeout=10,
    )
    assert fs.read(parent, "memory", "memory.limit_in_bytes") == before
    assert [p.name for p in fs.dirs(parent)[0].iterdir() if p.is_dir()] == [f"cri-py-{cid}"]
    lab.remove_pod(pod)
    assert not fs.exists(f"{parent}/cri-py-{cid}") and fs.exists(parent)


def test_shims_run_in_their_own_cgroup(lab: Lab) -> None:
    pod = lab.run_pod("shimcg")
    info = json.loads(
        lab.daemon.runtime()
        .PodSandboxStatus(pb.PodSandboxStatusRequest(pod_sandbox_id=pod, verbose=True), timeout=10)
        .info["info"]
    )
    shim_pid = int(info["pid"])
    for line in Path(f"/proc/{shim_pid}/cgroup").read_text().splitlines():
        _, controllers, path = line.split(":", 2)
        if controllers:
            assert path == "/cri-py-tests/shims", line
    lab.remove_pod(pod)
