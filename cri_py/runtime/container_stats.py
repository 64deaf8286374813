"""Usage of containers and pods: ContainerStats, ListContainerStats, PodSandboxStats and the
numbers ListPodSandboxMetrics adds, gathered from the registry's records by
`runtime/stats_reader.py` `UsageReader` (cgroup files, /proc, writable layers).

Turning them into CRI messages is the server's job (`server/convert_stats.py`,
`server/convert_metrics.py`).
"""

from __future__ import annotations

import dataclasses
import time

from cri_py.model.container import ContainerFilter, ContainerRecord, ContainerState
from cri_py.model.sandbox import NamespaceMode, SandboxFilter, SandboxState, SandboxView
from cri_py.runtime.container_table import ContainerTable
from cri_py.runtime.stats import (
    CgroupUsage,
    CpuUsage,
    FilesystemUsage,
    MemoryUsage,
    NetworkUsage,
    sum_usage,
)
from cri_py.runtime.stats_reader import UsageReader


@dataclasses.dataclass(frozen=True)
class ContainerUsage:
    record: ContainerRecord
    cgroup: CgroupUsage | None  # None: no cgroup (or it is gone)
    writable_layer: FilesystemUsage | None


@dataclasses.dataclass(frozen=True)
class SandboxUsage:
    view: SandboxView
    cpu: CpuUsage
    memory: MemoryUsage
    network: NetworkUsage | None
    process_count: int
    containers: tuple[ContainerUsage, ...]


class ContainerStats:
    """Without a `UsageReader` (no cgroup access) the numbers are empty, not errors."""

    def __init__(self, table: ContainerTable, usage: UsageReader | None, root_dir: str) -> None:
        self._table = table
        self._usage = usage
        self._root_dir = root_dir

    def usage(self, record: ContainerRecord, detailed: bool = False) -> ContainerUsage:
        """One container's numbers (blocking: reads cgroup files, walks the writable layer
        at most every few seconds); `detailed` adds the metrics' `CgroupDetail`."""
        cgroup_usage = None
        if self._usage is not None and record.cgroup:
            cgroup_usage = self._usage.cgroup(record.id, record.cgroup, detailed)
        layer = None
        if self._usage is not None:
            layer = self._usage.writable_layer(
                record.id,
                str(self._table.store.dir_of(record.id) / "upper"),
                self._root_dir,
            )
        return ContainerUsage(record, cgroup_usage, layer)

    def list_usage(self, selector: ContainerFilter, detailed: bool = False) -> list[ContainerUsage]:
        """ListContainerStats: containers that are not exited (kubelet's own rule)."""
        return [
            self.usage(r, detailed)
            for r in self._table.list(selector)
            if r.state in (ContainerState.CREATED, ContainerState.RUNNING)
        ]

    def sandbox_usage(self, selector: SandboxFilter, detailed: bool = False) -> list[SandboxUsage]:
        """ListPodSandboxStats (and, `detailed`, ListPodSandboxMetrics): ready pods, their
        containers' sums, their network."""
        result = []
        for view in self._table.sandboxes.list(selector):
            if view.state != SandboxState.READY:
                continue
            containers = self.list_usage(ContainerFilter(sandbox_id=view.record.id), detailed)
            containers = [c for c in containers if c.record.sandbox_id == view.record.id]
            result.append(self._sandbox_usage(view, containers))
        return result

    def _sandbox_usage(self, view: SandboxView, containers: list[ContainerUsage]) -> SandboxUsage:
        now = time.time_ns()
        cpu_ns, memory, processes = sum_usage(
            now, [c.cgroup for c in containers if c.cgroup is not None]
        )
        rate = None
        network = None
        if self._usage is not None:
            rate = self._usage.rate(f"sandbox:{view.record.id}", now, cpu_ns)
            shim = view.record.shim
            if shim is not None and view.record.config.namespaces.network != NamespaceMode.NODE:
                network = self._usage.network(shim.pid)
        return SandboxUsage(
            view=view,
            cpu=CpuUsage(now, cpu_ns, rate),
            memory=memory,
            network=network,
            process_count=processes,
            containers=tuple(containers),
        )
