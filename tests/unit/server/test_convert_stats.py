"""CRI resources in and out, and usage numbers as ContainerStats / PodSandboxStats."""

from __future__ import annotations

from cri_py.api import api_pb2 as pb
from cri_py.model.container import ContainerConfig, ContainerMetadata, ContainerRecord
from cri_py.model.resources import Resources
from cri_py.model.sandbox import (
    PodMetadata,
    SandboxConfig,
    SandboxRecord,
    SandboxState,
    SandboxView,
)
from cri_py.runtime.container_stats import ContainerUsage, SandboxUsage
from cri_py.runtime.stats import (
    CgroupUsage,
    CpuUsage,
    FilesystemUsage,
    InterfaceUsage,
    NetworkUsage,
    v1_memory,
)
from cri_py.server import convert_containers, convert_stats


def test_resources_round_trip() -> None:
    linux = pb.LinuxContainerResources(
        cpu_shares=512,
        cpu_quota=50000,
        cpu_period=100000,
        memory_limit_in_bytes=67108864,
        cpuset_cpus="0-1",
        hugepage_limits=[pb.HugepageLimit(page_size="2MB", limit=2097152)],
        unified={"memory.oom.group": "1"},
        oom_score_adj=-997,
    )
    resources = convert_containers.resources(linux)
    assert resources == Resources(
        cpu_shares=512,
        cpu_quota=50000,
        cpu_period=100000,
        memory_limit_in_bytes=67108864,
        cpuset_cpus="0-1",
        hugepage_limits={"2MB": 2097152},
        unified={"memory.oom.group": "1"},
    )
    assert convert_containers.linux_resources(resources, -997) == linux


def record() -> ContainerRecord:
    config = ContainerConfig(ContainerMetadata("app", 1), "busybox", labels={"a": "b"})
    return ContainerRecord("c1", "s1", config, 1, "sha256:x")


def test_container_stats_carry_attributes_cpu_memory_and_layer() -> None:
    usage = CgroupUsage(CpuUsage(7, 900, 450), v1_memory(7, 100, None, {}), None, 1)
    layer = FilesystemUsage(8, "/var/lib/cri-py", 4096, 3)
    stats = convert_stats.container_stats(ContainerUsage(record(), usage, layer), 9)
    assert (stats.attributes.id, stats.attributes.metadata.attempt) == ("c1", 1)
    assert dict(stats.attributes.labels) == {"a": "b"}
    assert (stats.cpu.timestamp, stats.cpu.usage_nano_cores.value) == (7, 450)
    assert not stats.memory.HasField("available_bytes")  # no limit: no bound to report
    assert stats.writable_layer.fs_id.mountpoint == "/var/lib/cri-py"
    assert stats.writable_layer.inodes_used.value == 3
    empty = convert_stats.container_stats(ContainerUsage(record(), None, None), 9)
    assert (empty.cpu.timestamp, empty.memory.timestamp) == (9, 9)


def test_pod_stats_name_eth0_the_default_interface() -> None:
    sandbox = SandboxRecord("s1", SandboxConfig(PodMetadata("web", "uid", "ns")), 1)
    network = NetworkUsage(
        3, (InterfaceUsage("eth0", 1, 0, 2, 0), InterfaceUsage("net1", 5, 0, 6, 0))
    )
    usage = SandboxUsage(
        SandboxView(sandbox, SandboxState.READY),
        CpuUsage(3, 10, None),
        v1_memory(3, 10, None, {}),
        network,
        2,
        (),
    )
    stats = convert_stats.sandbox_stats(usage, 4)
    assert stats.attributes.metadata.uid == "uid"
    assert stats.linux.network.default_interface.name == "eth0"
    assert len(stats.linux.network.interfaces) == 2
    assert stats.linux.process.process_count.value == 2


def test_stats_filters() -> None:
    request = pb.ListContainerStatsRequest(
        filter=pb.ContainerStatsFilter(id="c", pod_sandbox_id="s", label_selector={"k": "v"})
    )
    selector = convert_stats.container_stats_filter(request)
    assert (selector.id, selector.sandbox_id, dict(selector.labels)) == ("c", "s", {"k": "v"})
    assert convert_stats.container_stats_filter(pb.ListContainerStatsRequest()).id == ""
