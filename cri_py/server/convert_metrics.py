"""Usage numbers (gathered by the container service with their `CgroupDetail`) as the CRI's
cAdvisor-style metrics: ListMetricDescriptors' fixed table and ListPodSandboxMetrics' values.

The names, label keys and units are cAdvisor's, as kubelet's /metrics/cadvisor shows them and
critest checks them; the labels are CRI-O's (`id`, `name`, `image`, then the metric's own).
The CRI carries every value as a uint64, so seconds are whole seconds. A pod's network counters
are the pod's own metrics (name "POD"); everything else is per container.
"""

from __future__ import annotations

from collections.abc import Iterator
from dataclasses import dataclass

from cri_py.api import api_pb2 as pb
from cri_py.runtime.container_stats import ContainerUsage, SandboxUsage
from cri_py.runtime.stats import CgroupDetail, FilesystemCapacity, NetworkUsage

NS = 1_000_000_000
BASE_LABELS = ("id", "name", "image")
# kubelet's pod-level name for what is not a container's (CRI-O's and dockershim's "POD").
POD_NAME = "POD"
COUNTER = pb.MetricType.COUNTER
GAUGE = pb.MetricType.GAUGE


@dataclass(frozen=True)
class Descriptor:
    name: str
    help: str
    type: pb.MetricType.ValueType
    labels: tuple[str, ...] = ()  # after BASE_LABELS


# ListMetricDescriptors: static for the daemon's life (kubelet reads it once, at start).
DESCRIPTORS: tuple[Descriptor, ...] = (
    # cpu
    Descriptor(
        "container_cpu_usage_seconds_total",
        "Cumulative cpu time consumed in seconds.",
        COUNTER,
        ("cpu",),
    ),
    Descriptor(
        "container_cpu_user_seconds_total", "Cumulative user cpu time consumed in seconds.", COUNTER
    ),
    Descriptor(
        "container_cpu_system_seconds_total",
        "Cumulative system cpu time consumed in seconds.",
        COUNTER,
    ),
    Descriptor(
        "container_cpu_cfs_periods_total",
        "Number of elapsed enforcement period intervals.",
        COUNTER,
    ),
    Descriptor(
        "container_cpu_cfs_throttled_periods_total",
        "Number of throttled period intervals.",
        COUNTER,
    ),
    Descriptor(
        "container_cpu_cfs_throttled_seconds_total",
        "Total time duration the container has been throttled.",
        COUNTER,
    ),
    # memory
    Descriptor("container_memory_cache", "Number of bytes of page cache memory.", GAUGE),
    Descriptor("container_memory_rss", "Size of RSS in bytes.", GAUGE),
    Descriptor("container_memory_kernel_usage", "Size of kernel memory allocated in bytes.", GAUGE),
    Descriptor("container_memory_mapped_file", "Size of memory mapped files in bytes.", GAUGE),
    Descriptor("container_memory_swap", "Container swap usage in bytes.", GAUGE),
    Descriptor("container_memory_failcnt", "Number of memory usage hits limits.", COUNTER),
    Descriptor(
        "container_memory_usage_bytes",
        "Current memory usage in bytes, including all memory regardless of when it was accessed.",
        GAUGE,
    ),
    Descriptor(
        "container_memory_max_usage_bytes", "Maximum memory usage recorded in bytes.", GAUGE
    ),
    Descriptor("container_memory_working_set_bytes", "Current working set in bytes.", GAUGE),
    Descriptor(
        "container_memory_failures_total",
        "Cumulative count of memory allocation failures.",
        COUNTER,
        ("failure_type", "scope"),
    ),
    Descriptor(
        "container_oom_events_total",
        "Count of out of memory events observed for the container.",
        COUNTER,
    ),
    # processes
    Descriptor("container_processes", "Number of processes running inside the container.", GAUGE),
    Descriptor(
        "container_file_descriptors", "Number of open file descriptors for the container.", GAUGE
    ),
    Descriptor("container_sockets", "Number of open sockets for the container.", GAUGE),
    Descriptor("container_threads", "Number of threads running inside the container.", GAUGE),
    Descriptor(
        "container_threads_max",
        "Maximum number of threads allowed inside the container, infinity if value is zero.",
        GAUGE,
    ),
    # spec and life
    Descriptor(
        "container_start_time_seconds",
        "Start time of the container since unix epoch in seconds.",
        GAUGE,
    ),
    Descriptor("container_last_seen", "Last time a container was seen by the exporter.", GAUGE),
    Descriptor("container_spec_cpu_period", "CPU period of the container.", GAUGE),
    Descriptor("container_spec_cpu_quota", "CPU quota of the container.", GAUGE),
    Descriptor("container_spec_cpu_shares", "CPU share of the container.", GAUGE),
    Descriptor(
        "container_spec_memory_limit_bytes", "Memory limit for the container in bytes.", GAUGE
    ),
    Descriptor(
        "container_spec_memory_swap_limit_bytes",
        "Memory swap limit for the container in bytes.",
        GAUGE,
    ),
    # the writable layer's filesystem
    Descriptor(
        "container_fs_usage_bytes",
        "Number of bytes that are consumed by the container on this filesystem.",
        GAUGE,
        ("device",),
    ),
    Descriptor(
        "container_fs_limit_bytes",
        "Number of bytes that can be consumed by the container on this filesystem.",
        GAUGE,
        ("device",),
    ),
    Descriptor("container_fs_inodes_total", "Number of Inodes.", GAUGE, ("device",)),
    Descriptor("container_fs_inodes_free", "Number of available Inodes.", GAUGE, ("device",)),
    # block I/O
    Descriptor(
        "container_fs_reads_bytes_total", "Cumulative count of bytes read.", COUNTER, ("device",)
    ),
    Descriptor(
        "container_fs_reads_total", "Cumulative count of reads completed.", COUNTER, ("device",)
    ),
    Descriptor(
        "container_fs_writes_bytes_total",
        "Cumulative count of bytes written.",
        COUNTER,
        ("device",),
    ),
    Descriptor(
        "container_fs_writes_total", "Cumulative count of writes completed.", COUNTER, ("device",)
    ),
    Descriptor(
        "container_blkio_device_usage_total",
        "Blkio device bytes usage.",
        COUNTER,
        ("device", "major", "minor", "operation"),
    ),
    # the pod's network
    *(
        Descriptor(f"container_network_{name}", help, COUNTER, ("interface",))
        for name, help in (
            ("receive_bytes_total", "Cumulative count of bytes received."),
            ("receive_packets_total", "Cumulative count of packets received."),
            (
                "receive_packets_dropped_total",
                "Cumulative count of packets dropped while receiving.",
            ),
            ("receive_errors_total", "Cumulative count of errors encountered while receiving."),
            ("transmit_bytes_total", "Cumulative count of bytes transmitted."),
            ("transmit_packets_total", "Cumulative count of packets transmitted."),
            (
                "transmit_packets_dropped_total",
                "Cumulative count of packets dropped while transmitting.",
            ),
            ("transmit_errors_total", "Cumulative count of errors encountered while transmitting."),
        )
    ),
)

_BY_NAME = {d.name: d for d in DESCRIPTORS}

# (name, the metric's own label values, value); timestamps are added when building messages.
Value = tuple[str, tuple[str, ...], int]


def descriptors() -> list[pb.MetricDescriptor]:
    return [
        pb.MetricDescriptor(name=d.name, help=d.help, label_keys=[*BASE_LABELS, *d.labels])
        for d in DESCRIPTORS
    ]


def _metric(name: str, base: tuple[str, ...], labels: tuple[str, ...], value: int) -> pb.Metric:
    descriptor = _BY_NAME[name]
    assert len(labels) == len(descriptor.labels), name  # a table and its use must agree
    return pb.Metric(
        name=name,
        # 0: gathered for this call (the CRI's rule; only the layer walk may be seconds old).
        timestamp=0,
        metric_type=descriptor.type,
        label_values=[*base, *labels],
        value=pb.UInt64Value(value=max(0, value)),
    )


def _detail_values(detail: CgroupDetail) -> Iterator[Value]:
    yield "container_cpu_user_seconds_total", (), detail.user_ns // NS
    yield "container_cpu_system_seconds_total", (), detail.system_ns // NS
    yield "container_cpu_cfs_periods_total", (), detail.cfs_periods
    yield "container_cpu_cfs_throttled_periods_total", (), detail.cfs_throttled_periods
    yield "container_cpu_cfs_throttled_seconds_total", (), detail.cfs_throttled_ns // NS
    yield "container_memory_cache", (), detail.cache_bytes
    yield "container_memory_kernel_usage", (), detail.kernel_bytes
    yield "container_memory_mapped_file", (), detail.mapped_file_bytes
    yield "container_memory_failcnt", (), detail.failcnt
    yield "container_memory_max_usage_bytes", (), detail.max_usage_bytes
    for kind, scope, value in (
        ("pgfault", "container", detail.pgfault),
        ("pgmajfault", "container", detail.pgmajfault),
        ("pgfault", "hierarchy", detail.hierarchy_pgfault),
        ("pgmajfault", "hierarchy", detail.hierarchy_pgmajfault),
    ):
        yield "container_memory_failures_total", (kind, scope), value
    yield "container_oom_events_total", (), detail.oom_kills
    yield "container_file_descriptors", (), detail.file_descriptors
    yield "container_sockets", (), detail.sockets
    yield "container_threads", (), detail.threads
    yield "container_threads_max", (), detail.threads_max
    for io in detail.io:
        device = io.device or f"{io.major}:{io.minor}"
        yield "container_fs_reads_bytes_total", (device,), io.read_bytes
        yield "container_fs_reads_total", (device,), io.reads
        yield "container_fs_writes_bytes_total", (device,), io.write_bytes
        yield "container_fs_writes_total", (device,), io.writes
        numbers = (device, str(io.major), str(io.minor))
        yield "container_blkio_device_usage_total", (*numbers, "Read"), io.read_bytes
        yield "container_blkio_device_usage_total", (*numbers, "Write"), io.write_bytes


def container_values(
    usage: ContainerUsage, capacity: FilesystemCapacity | None, now: int
) -> list[Value]:
    """One container's metrics (without labels of the container's own)."""
    record = usage.record
    resources = record.config.resources
    values: list[Value] = [
        ("container_last_seen", (), now // NS),
        ("container_start_time_seconds", (), (record.started_at or record.created_at) // NS),
        # Unset fields are the kernel's defaults (period 100ms, 1024 shares, no limit: 0).
        ("container_spec_cpu_period", (), resources.cpu_period or 100_000),
        ("container_spec_cpu_quota", (), max(0, resources.cpu_quota)),
        ("container_spec_cpu_shares", (), resources.cpu_shares or 1024),
        ("container_spec_memory_limit_bytes", (), resources.memory_limit_in_bytes),
        ("container_spec_memory_swap_limit_bytes", (), resources.memory_swap_limit_in_bytes),
    ]
    cgroup = usage.cgroup
    if cgroup is not None:
        memory = cgroup.memory
        values += [
            (
                "container_cpu_usage_seconds_total",
                ("total",),
                cgroup.cpu.usage_core_nano_seconds // NS,
            ),
            ("container_memory_usage_bytes", (), memory.usage_bytes),
            ("container_memory_working_set_bytes", (), memory.working_set_bytes),
            ("container_memory_rss", (), memory.rss_bytes),
            ("container_memory_swap", (), cgroup.swap.usage_bytes if cgroup.swap else 0),
            ("container_processes", (), cgroup.process_count),
        ]
        if cgroup.detail is not None:
            values += _detail_values(cgroup.detail)
    layer = usage.writable_layer
    if layer is not None and capacity is not None:
        device = (capacity.mountpoint,)
        values += [
            ("container_fs_usage_bytes", device, layer.used_bytes),
            ("container_fs_limit_bytes", device, capacity.limit_bytes),
            ("container_fs_inodes_total", device, capacity.inodes_total),
            ("container_fs_inodes_free", device, capacity.inodes_free),
        ]
    return values


def network_values(network: NetworkUsage) -> list[Value]:
    values: list[Value] = []
    for i in network.interfaces:
        name = (i.name,)
        values += [
            ("container_network_receive_bytes_total", name, i.rx_bytes),
            ("container_network_receive_packets_total", name, i.rx_packets),
            ("container_network_receive_packets_dropped_total", name, i.rx_dropped),
            ("container_network_receive_errors_total", name, i.rx_errors),
            ("container_network_transmit_bytes_total", name, i.tx_bytes),
            ("container_network_transmit_packets_total", name, i.tx_packets),
            ("container_network_transmit_packets_dropped_total", name, i.tx_dropped),
            ("container_network_transmit_errors_total", name, i.tx_errors),
        ]
    return values


def pod_metrics(
    usage: SandboxUsage, capacity: FilesystemCapacity | None, now: int
) -> pb.PodSandboxMetrics:
    sandbox_id = usage.view.record.id
    pod_base = (sandbox_id, POD_NAME, "")
    metrics = []
    if usage.network is not None:
        metrics = [
            _metric(n, pod_base, labels, v) for n, labels, v in network_values(usage.network)
        ]
    containers = []
    for c in usage.containers:
        base = (c.record.id, c.record.config.metadata.name, c.record.config.image)
        containers.append(
            pb.ContainerMetrics(
                container_id=c.record.id,
                metrics=[
                    _metric(n, base, labels, v)
                    for n, labels, v in container_values(c, capacity, now)
                ],
            )
        )
    return pb.PodSandboxMetrics(
        pod_sandbox_id=sandbox_id, metrics=metrics, container_metrics=containers
    )
