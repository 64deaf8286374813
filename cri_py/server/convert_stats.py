"""Usage numbers (`cri_py.runtime.stats`, gathered by the container service) as the CRI's
ContainerStats and PodSandboxStats messages, and the stats filters as our own types."""

from __future__ import annotations

from cri_py.api import api_pb2 as pb
from cri_py.model.container import ContainerFilter
from cri_py.model.sandbox import SandboxFilter
from cri_py.runtime.container_stats import ContainerUsage, SandboxUsage
from cri_py.runtime.stats import CpuUsage, MemoryUsage, NetworkUsage


def _u64(value: int | None) -> pb.UInt64Value | None:
    return None if value is None else pb.UInt64Value(value=max(0, value))


def container_stats_filter(request: pb.ListContainerStatsRequest) -> ContainerFilter:
    if not request.HasField("filter"):
        return ContainerFilter()
    f = request.filter
    return ContainerFilter(id=f.id, sandbox_id=f.pod_sandbox_id, labels=dict(f.label_selector))


def sandbox_stats_filter(request: pb.ListPodSandboxStatsRequest) -> SandboxFilter:
    if not request.HasField("filter"):
        return SandboxFilter()
    return SandboxFilter(id=request.filter.id, labels=dict(request.filter.label_selector))


def cpu(usage: CpuUsage) -> pb.CpuUsage:
    return pb.CpuUsage(
        timestamp=usage.timestamp,
        usage_core_nano_seconds=_u64(usage.usage_core_nano_seconds),
        usage_nano_cores=_u64(usage.usage_nano_cores),
    )


def memory(usage: MemoryUsage) -> pb.MemoryUsage:
    return pb.MemoryUsage(
        timestamp=usage.timestamp,
        working_set_bytes=_u64(usage.working_set_bytes),
        available_bytes=_u64(usage.available_bytes),
        usage_bytes=_u64(usage.usage_bytes),
        rss_bytes=_u64(usage.rss_bytes),
        page_faults=_u64(usage.page_faults),
        major_page_faults=_u64(usage.major_page_faults),
    )


def container_stats(usage: ContainerUsage, now: int) -> pb.ContainerStats:
    record = usage.record
    stats = pb.ContainerStats(
        attributes=pb.ContainerAttributes(
            id=record.id,
            metadata=pb.ContainerMetadata(
                name=record.config.metadata.name, attempt=record.config.metadata.attempt
            ),
            labels=dict(record.config.labels),
            annotations=dict(record.config.annotations),
        )
    )
    if usage.cgroup is not None:
        stats.cpu.CopyFrom(cpu(usage.cgroup.cpu))
        stats.memory.CopyFrom(memory(usage.cgroup.memory))
        swap = usage.cgroup.swap
        if swap is not None:
            stats.swap.CopyFrom(
                pb.SwapUsage(
                    timestamp=swap.timestamp,
                    swap_usage_bytes=_u64(swap.usage_bytes),
                    swap_available_bytes=_u64(swap.available_bytes),
                )
            )
    else:
        # No cgroup to read (gone, or cgroups unmanaged): timestamps say "measured, nothing".
        stats.cpu.CopyFrom(pb.CpuUsage(timestamp=now))
        stats.memory.CopyFrom(pb.MemoryUsage(timestamp=now))
    layer = usage.writable_layer
    if layer is not None:
        stats.writable_layer.CopyFrom(
            pb.FilesystemUsage(
                timestamp=layer.timestamp,
                fs_id=pb.FilesystemIdentifier(mountpoint=layer.mountpoint),
                used_bytes=_u64(layer.used_bytes),
                inodes_used=_u64(layer.inodes_used),
            )
        )
    return stats


def network(usage: NetworkUsage) -> pb.NetworkUsage:
    interfaces = [
        pb.NetworkInterfaceUsage(
            name=i.name,
            rx_bytes=_u64(i.rx_bytes),
            rx_errors=_u64(i.rx_errors),
            tx_bytes=_u64(i.tx_bytes),
            tx_errors=_u64(i.tx_errors),
        )
        for i in usage.interfaces
    ]
    # The pod's default interface is eth0 (the one CNI and our bridge set up).
    default = next(
        (i for i in interfaces if i.name == "eth0"), interfaces[0] if interfaces else None
    )
    return pb.NetworkUsage(
        timestamp=usage.timestamp, default_interface=default, interfaces=interfaces
    )


def sandbox_stats(usage: SandboxUsage, now: int) -> pb.PodSandboxStats:
    record = usage.view.record
    m = record.config.metadata
    linux = pb.LinuxPodSandboxStats(
        cpu=cpu(usage.cpu),
        memory=memory(usage.memory),
        process=pb.ProcessUsage(timestamp=now, process_count=_u64(usage.process_count)),
        containers=[container_stats(c, now) for c in usage.containers],
    )
    if usage.network is not None:
        linux.network.CopyFrom(network(usage.network))
    return pb.PodSandboxStats(
        attributes=pb.PodSandboxAttributes(
            id=record.id,
            metadata=pb.PodSandboxMetadata(
                name=m.name, uid=m.uid, namespace=m.namespace, attempt=m.attempt
            ),
            labels=dict(record.config.labels),
            annotations=dict(record.config.annotations),
        ),
        linux=linux,
    )
