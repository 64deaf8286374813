"""Pure translation of container resources into cgroup file writes, for cgroup v1 and v2.

`Resources` is what the CRI asks for (LinuxContainerResources, already converted at the server
edge); `to_oci` gives the runtime spec's `linux.resources`; `v1_writes` / `v2_writes` give the
files to write, in order. Nothing here touches the filesystem: `cri_py/linux/cgroupfs.py` does.
"""

from __future__ import annotations

import re
from dataclasses import dataclass
from typing import Any

from cri_py.errors import InvalidArgument
from cri_py.model.resources import Resources

# kubelet sends quota 0 (or -1) with period 100000 when a container has no CPU limit.
DEFAULT_CPU_PERIOD = 100_000
# The kernel's bounds for cpu.cfs_period_us / the period of cpu.max: 1 ms to 1 s.
MIN_CPU_PERIOD, MAX_CPU_PERIOD = 1_000, 1_000_000
MIN_CPU_QUOTA = 1_000
# cgroup v1 cpu.shares bounds (the kernel clamps to these).
MIN_SHARES, MAX_SHARES = 2, 262_144
_PAGE_SIZE = re.compile(r"^[0-9]+(KB|MB|GB|TB|PB)$")
_CPU_LIST = re.compile(r"^\s*$|^[0-9]+(-[0-9]+)?(,[0-9]+(-[0-9]+)?)*$")


@dataclass(frozen=True)
class Write:
    """One cgroup file write: `controller` names the v1 hierarchy ("" on v2)."""

    controller: str
    file: str
    value: str


def validate(resources: Resources) -> None:
    """Rejects values the kernel would refuse, before anything is created."""
    r = resources
    for name in ("cpu_shares", "cpu_period", "memory_limit_in_bytes"):
        if getattr(r, name) < 0:
            raise InvalidArgument(f"{name} must not be negative, got {getattr(r, name)}")
    if r.cpu_period and not MIN_CPU_PERIOD <= r.cpu_period <= MAX_CPU_PERIOD:
        raise InvalidArgument(
            f"cpu_period must be between {MIN_CPU_PERIOD} and {MAX_CPU_PERIOD} us, "
            f"got {r.cpu_period}"
        )
    if r.cpu_quota > 0 and r.cpu_quota < MIN_CPU_QUOTA:
        raise InvalidArgument(f"cpu_quota must be at least {MIN_CPU_QUOTA} us, got {r.cpu_quota}")
    if 0 < r.memory_swap_limit_in_bytes < r.memory_limit_in_bytes:
        raise InvalidArgument(
            "memory_swap_limit_in_bytes is memory plus swap and must not be below "
            f"memory_limit_in_bytes ({r.memory_swap_limit_in_bytes} < {r.memory_limit_in_bytes})"
        )
    for name in ("cpuset_cpus", "cpuset_mems"):
        if not _CPU_LIST.match(getattr(r, name)):
            raise InvalidArgument(f"{name} {getattr(r, name)!r} is not a list like 0-2,4")
    for size, limit in r.hugepage_limits.items():
        if not _PAGE_SIZE.match(size):
            raise InvalidArgument(f"hugepage page size {size!r} is not like 2MB or 1GB")
        if limit < 0:
            raise InvalidArgument(f"hugepage limit for {size} must not be negative")
    for key in r.unified:
        if "/" in key or key.startswith(".") or "." not in key:
            raise InvalidArgument(f"unified key {key!r} is not a cgroup v2 file name")


def pod_resources(resources: Resources, overhead: Resources) -> Resources:
    """A pod cgroup's limits: its containers' sum (what the CRI's sandbox `resources` holds)
    plus the pod `overhead`, as kubelet sizes its own pod cgroups. A dimension the sum leaves
    unlimited stays unlimited: overhead only adds to a limit that exists.

    Quotas of different periods are added per period of the sum's (`overhead`'s quota scaled),
    so the pod gets the CPU time both ask for."""
    period = resources.cpu_period or overhead.cpu_period or DEFAULT_CPU_PERIOD
    quota = 0
    if resources.cpu_quota > 0:
        extra = 0
        if overhead.cpu_quota > 0:
            extra = overhead.cpu_quota * period // (overhead.cpu_period or DEFAULT_CPU_PERIOD)
        quota = resources.cpu_quota + extra
    memory = 0
    if resources.memory_limit_in_bytes > 0:
        memory = resources.memory_limit_in_bytes + max(overhead.memory_limit_in_bytes, 0)
    shares = resources.cpu_shares + overhead.cpu_shares if resources.cpu_shares else 0
    return Resources(
        cpu_shares=shares,
        cpu_quota=quota,
        cpu_period=period if (quota or resources.cpu_period) else 0,
        memory_limit_in_bytes=memory,
        cpuset_cpus=resources.cpuset_cpus,
        cpuset_mems=resources.cpuset_mems,
        hugepage_limits=dict(resources.hugepage_limits),
        unified=dict(resources.unified),
    )


def _quota_unlimited(r: Resources) -> bool:
    return r.cpu_quota <= 0


def to_oci(r: Resources) -> dict[str, Any]:
    """The runtime spec's `linux.resources` (OCI field names and semantics)."""
    resources: dict[str, Any] = {}
    cpu: dict[str, Any] = {}
    if r.cpu_shares:
        cpu["shares"] = r.cpu_shares
    if r.cpu_quota:
        cpu["quota"] = r.cpu_quota
    if r.cpu_period:
        cpu["period"] = r.cpu_period
    if r.cpuset_cpus:
        cpu["cpus"] = r.cpuset_cpus
    if r.cpuset_mems:
        cpu["mems"] = r.cpuset_mems
    if cpu:
        resources["cpu"] = cpu
    memory: dict[str, Any] = {}
    if r.memory_limit_in_bytes:
        memory["limit"] = r.memory_limit_in_bytes
    if r.memory_swap_limit_in_bytes:
        memory["swap"] = r.memory_swap_limit_in_bytes
    if memory:
        resources["memory"] = memory
    if r.pids_limit:
        resources["pids"] = {"limit": r.pids_limit}
    if r.hugepage_limits:
        resources["hugepageLimits"] = [
            {"pageSize": size, "limit": limit} for size, limit in sorted(r.hugepage_limits.items())
        ]
    if r.unified:
        resources["unified"] = dict(sorted(r.unified.items()))
    return resources


def v1_writes(r: Resources, current_memsw_limit: int | None = None) -> list[Write]:
    """Files for cgroup v1. The kernel keeps memory.limit_in_bytes <= memory.memsw.limit_in_bytes
    at every write, so memsw goes first only when the new limit exceeds the current memsw
    (`current_memsw_limit`, None for unlimited, as in a new cgroup)."""
    validate(r)
    if r.unified:
        raise InvalidArgument(
            f"unified cgroup settings ({', '.join(sorted(r.unified))}) need cgroup v2; "
            "this node runs cgroup v1"
        )
    writes: list[Write] = []
    if r.cpu_shares:
        shares = min(max(r.cpu_shares, MIN_SHARES), MAX_SHARES)
        writes.append(Write("cpu", "cpu.shares", str(shares)))
    if r.cpu_period or r.cpu_quota:
        writes.append(Write("cpu", "cpu.cfs_period_us", str(r.cpu_period or DEFAULT_CPU_PERIOD)))
        quota = -1 if _quota_unlimited(r) else r.cpu_quota
        writes.append(Write("cpu", "cpu.cfs_quota_us", str(quota)))
    # cpuset.mems before tasks can join, and cpus before mems is what the kernel accepts.
    if r.cpuset_cpus:
        writes.append(Write("cpuset", "cpuset.cpus", r.cpuset_cpus))
    if r.cpuset_mems:
        writes.append(Write("cpuset", "cpuset.mems", r.cpuset_mems))
    memory: list[Write] = []
    if r.memory_limit_in_bytes:
        memory.append(Write("memory", "memory.limit_in_bytes", str(r.memory_limit_in_bytes)))
    if r.memory_swap_limit_in_bytes:
        memsw = Write("memory", "memory.memsw.limit_in_bytes", str(r.memory_swap_limit_in_bytes))
        raising = current_memsw_limit is not None and (
            r.memory_limit_in_bytes > current_memsw_limit
        )
        memory.insert(0 if raising else len(memory), memsw)
    writes.extend(memory)
    for size, limit in sorted(r.hugepage_limits.items()):
        writes.append(Write("hugetlb", f"hugetlb.{size}.limit_in_bytes", str(limit)))
    if r.pids_limit:
        writes.append(Write("pids", "pids.max", str(r.pids_limit) if r.pids_limit > 0 else "max"))
    return writes


def shares_to_weight(shares: int) -> int:
    """cpu.shares (2..262144) to cpu.weight (1..10000), linearly.

    This is the conversion of the OCI runtime-spec's cgroup v2 notes (runc, crun before 1.23,
    and kubelet's own read-back in KEP-2254 all use it), so the weight kubelet computes for a
    pod and the one we write for its containers agree. Its known flaw is that the default 1024
    shares becomes weight 39, not the v2 default 100; we keep the formula kubelet expects.
    """
    shares = min(max(shares, MIN_SHARES), MAX_SHARES)
    return 1 + ((shares - MIN_SHARES) * 9999) // (MAX_SHARES - MIN_SHARES)


def v2_writes(r: Resources) -> list[Write]:
    """Files for cgroup v2, `unified` keys last and verbatim (they win, as in the OCI spec)."""
    validate(r)
    writes: list[Write] = []
    if r.cpu_shares:
        writes.append(Write("", "cpu.weight", str(shares_to_weight(r.cpu_shares))))
    if r.cpu_period or r.cpu_quota:
        quota = "max" if _quota_unlimited(r) else str(r.cpu_quota)
        writes.append(Write("", "cpu.max", f"{quota} {r.cpu_period or DEFAULT_CPU_PERIOD}"))
    if r.cpuset_cpus:
        writes.append(Write("", "cpuset.cpus", r.cpuset_cpus))
    if r.cpuset_mems:
        writes.append(Write("", "cpuset.mems", r.cpuset_mems))
    if r.memory_limit_in_bytes:
        writes.append(Write("", "memory.max", str(r.memory_limit_in_bytes)))
        if r.memory_swap_limit_in_bytes:
            # OCI's swap is memory+swap; v2's memory.swap.max is the swap alone.
            swap = r.memory_swap_limit_in_bytes - r.memory_limit_in_bytes
            writes.append(Write("", "memory.swap.max", str(swap)))
    elif r.memory_swap_limit_in_bytes:
        raise InvalidArgument("memory_swap_limit_in_bytes needs memory_limit_in_bytes on cgroup v2")
    for size, limit in sorted(r.hugepage_limits.items()):
        writes.append(Write("", f"hugetlb.{size}.max", str(limit)))
    if r.pids_limit:
        writes.append(Write("", "pids.max", str(r.pids_limit) if r.pids_limit > 0 else "max"))
    for key, value in sorted(r.unified.items()):
        writes.append(Write("", key, value))
    return writes


def v2_controllers(writes: list[Write]) -> list[str]:
    """The controllers a v2 parent must enable in cgroup.subtree_control for these writes."""
    names = {w.file.split(".", 1)[0] for w in writes}
    return sorted(names & {"cpu", "cpuset", "memory", "hugetlb", "pids", "io"})
