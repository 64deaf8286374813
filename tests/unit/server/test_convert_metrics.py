"""Usage numbers as cAdvisor-style CRI metrics: the descriptor table critest and kubelet read,
and values whose labels always match their descriptor's keys."""

from __future__ import annotations

from cri_py.api import api_pb2 as pb
from cri_py.model.container import (
    ContainerConfig,
    ContainerMetadata,
    ContainerRecord,
    ContainerState,
)
from cri_py.model.resources import Resources
from cri_py.model.sandbox import (
    PodMetadata,
    SandboxConfig,
    SandboxRecord,
    SandboxState,
    SandboxView,
)
from cri_py.runtime.container_stats import ContainerUsage, SandboxUsage
from cri_py.runtime.events import ContainerEvent, EventType
from cri_py.runtime.stats import (
    CgroupDetail,
    CgroupUsage,
    CpuUsage,
    DeviceIo,
    FilesystemCapacity,
    FilesystemUsage,
    InterfaceUsage,
    NetworkUsage,
    SwapUsage,
    v1_memory,
)
from cri_py.server import convert_containers, convert_metrics

NS = 1_000_000_000
# critest v1.37.0's expectedMetricDescriptorNames less its unimplementedMetricDescriptors.
CRITEST_EXPECTED = {
    "container_blkio_device_usage_total",
    "container_cpu_cfs_periods_total",
    "container_cpu_cfs_throttled_periods_total",
    "container_cpu_cfs_throttled_seconds_total",
    "container_cpu_system_seconds_total",
    "container_cpu_usage_seconds_total",
    "container_cpu_user_seconds_total",
    "container_file_descriptors",
    "container_fs_inodes_free",
    "container_fs_inodes_total",
    "container_fs_limit_bytes",
    "container_fs_reads_bytes_total",
    "container_fs_reads_total",
    "container_fs_usage_bytes",
    "container_fs_writes_bytes_total",
    "container_fs_writes_total",
    "container_last_seen",
    "container_memory_cache",
    "container_memory_failcnt",
    "container_memory_failures_total",
    "container_memory_kernel_usage",
    "container_memory_mapped_file",
    "container_memory_max_usage_bytes",
    "container_memory_rss",
    "container_memory_swap",
    "container_memory_usage_bytes",
    "container_memory_working_set_bytes",
    "container_network_receive_bytes_total",
    "container_network_receive_errors_total",
    "container_network_receive_packets_dropped_total",
    "container_network_receive_packets_total",
    "container_network_transmit_bytes_total",
    "container_network_transmit_errors_total",
    "container_network_transmit_packets_dropped_total",
    "container_network_transmit_packets_total",
    "container_oom_events_total",
    "container_processes",
    "container_sockets",
    "container_spec_cpu_period",
    "container_spec_cpu_shares",
    "container_spec_memory_limit_bytes",
    "container_spec_memory_swap_limit_bytes",
    "container_start_time_seconds",
    "container_threads",
    "container_threads_max",
}


def test_descriptors_name_what_critest_expects_with_help_and_labels() -> None:
    descriptors = convert_metrics.descriptors()
    names = [d.name for d in descriptors]
    assert len(names) == len(set(names))
    assert set(names) >= CRITEST_EXPECTED
    for d in descriptors:
        assert d.help and d.label_keys[:3] == ["id", "name", "image"]


def container_usage() -> ContainerUsage:
    config = ContainerConfig(
        ContainerMetadata("app", 0),
        "busybox",
        resources=Resources(cpu_period=100000, cpu_quota=20000, memory_limit_in_bytes=64 << 20),
    )
    record = ContainerRecord(
        "c1", "s1", config, 5 * NS, "sha256:x", state=ContainerState.RUNNING, started_at=7 * NS
    )
    detail = CgroupDetail(
        user_ns=3 * NS,
        system_ns=NS,
        cfs_periods=10,
        cfs_throttled_periods=2,
        cfs_throttled_ns=2 * NS,
        pgfault=5,
        hierarchy_pgfault=6,
        oom_kills=1,
        threads=3,
        threads_max=100,
        file_descriptors=9,
        sockets=2,
        io=(
            DeviceIo(8, 0, read_bytes=4096, write_bytes=8192, reads=1, writes=2, device="/dev/sda"),
        ),
    )
    cgroup = CgroupUsage(
        CpuUsage(1, 4 * NS + 5, None),
        v1_memory(1, 1000, 64 << 20, {"total_inactive_file": 100, "total_rss": 700}),
        SwapUsage(1, 50, None),
        2,
        detail,
    )
    return ContainerUsage(record, cgroup, FilesystemUsage(1, "/var/lib/cri-py", 12288, 11))


def sandbox_usage() -> SandboxUsage:
    view = SandboxView(
        SandboxRecord("s1", SandboxConfig(PodMetadata("pod", "uid", "ns")), 1),
        SandboxState.READY,
    )
    network = NetworkUsage(
        1, (InterfaceUsage("eth0", 100, 1, 200, 2, rx_packets=3, rx_dropped=4, tx_packets=5),)
    )
    usage = container_usage()
    assert usage.cgroup is not None
    return SandboxUsage(view, usage.cgroup.cpu, usage.cgroup.memory, network, 2, (usage,))


def by_name(metrics: list[pb.Metric]) -> dict[str, list[pb.Metric]]:
    found: dict[str, list[pb.Metric]] = {}
    for m in metrics:
        found.setdefault(m.name, []).append(m)
    return found


def test_pod_metrics_carry_every_expected_metric_with_matching_labels() -> None:
    capacity = FilesystemCapacity("/var/lib/cri-py", 10 << 30, 1000, 900)
    pod = convert_metrics.pod_metrics(sandbox_usage(), capacity, 100 * NS)
    assert pod.pod_sandbox_id == "s1"
    (container,) = pod.container_metrics
    assert container.container_id == "c1"
    every = [*pod.metrics, *container.metrics]
    keys = {d.name: list(d.label_keys) for d in convert_metrics.descriptors()}
    for metric in every:
        assert len(metric.label_values) == len(keys[metric.name]), metric.name
    assert {m.name for m in every} >= CRITEST_EXPECTED
    # The network is the pod's; the rest the container's, labelled with its ID, name, image.
    assert {m.name for m in pod.metrics} == {n for n in keys if n.startswith("container_network")}
    rx = by_name(list(pod.metrics))["container_network_receive_packets_dropped_total"][0]
    assert (list(rx.label_values), rx.value.value) == (["s1", "POD", "", "eth0"], 4)
    found = by_name(list(container.metrics))
    cpu = found["container_cpu_usage_seconds_total"][0]
    assert list(cpu.label_values) == ["c1", "app", "busybox", "total"]
    assert (cpu.value.value, cpu.metric_type) == (4, pb.MetricType.COUNTER)
    assert found["container_memory_working_set_bytes"][0].value.value == 900
    assert found["container_memory_working_set_bytes"][0].metric_type == pb.MetricType.GAUGE
    assert found["container_memory_swap"][0].value.value == 50
    assert found["container_start_time_seconds"][0].value.value == 7
    assert found["container_last_seen"][0].value.value == 100
    assert found["container_spec_cpu_quota"][0].value.value == 20000
    assert found["container_spec_cpu_shares"][0].value.value == 1024  # unset: the default
    assert found["container_fs_inodes_free"][0].value.value == 900
    assert found["container_fs_usage_bytes"][0].value.value == 12288
    failures = {
        tuple(m.label_values[3:]): m.value.value for m in found["container_memory_failures_total"]
    }
    assert failures[("pgfault", "container")] == 5 and failures[("pgfault", "hierarchy")] == 6
    blkio = {
        tuple(m.label_values[3:]): m.value.value
        for m in found["container_blkio_device_usage_total"]
    }
    assert blkio == {("/dev/sda", "8", "0", "Read"): 4096, ("/dev/sda", "8", "0", "Write"): 8192}
    assert found["container_oom_events_total"][0].value.value == 1
    assert found["container_sockets"][0].value.value == 2


def test_a_container_without_a_cgroup_reports_only_what_is_known() -> None:
    usage = container_usage()
    bare = ContainerUsage(usage.record, None, None)
    names = {n for n, _, _ in convert_metrics.container_values(bare, None, 0)}
    assert "container_memory_usage_bytes" not in names
    assert "container_spec_memory_limit_bytes" in names


def test_container_event_carries_the_pod_and_every_container_status() -> None:
    usage = container_usage()
    view = sandbox_usage().view
    event = ContainerEvent(EventType.STARTED, "c1", 42, view, (usage.record,))
    message = convert_containers.container_event(event)
    assert message.container_event_type == pb.CONTAINER_STARTED_EVENT
    assert (message.container_id, message.created_at) == ("c1", 42)
    assert message.pod_sandbox_status.metadata.uid == "uid"
    assert [s.id for s in message.containers_statuses] == ["c1"]
    assert message.containers_statuses[0].state == pb.CONTAINER_RUNNING
