"""CRI resources -> the runtime spec's `linux.resources`: the one translation CreateContainer
(`build.py`) and UpdateContainerResources both use, so that config.json holds exactly what
`cri_py.oci.cgroups` turns into cgroup writes. Also the CRI-level rules around it: which values
are refused, how an update merges, what a pod's cgroup gets.

Pure: the node's part (the configured pids limit, whether a hugetlb controller exists) comes in
as a `CgroupSupport`.
"""

from __future__ import annotations

import dataclasses
from collections.abc import Mapping
from typing import Any

from cri_py.errors import InvalidArgument
from cri_py.model.resources import CgroupSupport, Resources
from cri_py.oci.cgroups import (
    CPU_LIST,
    DEFAULT_CPU_PERIOD,
    MAX_CPU_PERIOD,
    MIN_CPU_PERIOD,
    MIN_CPU_QUOTA,
    PAGE_SIZE,
    is_v2_file_name,
)

# What an update leaves as created: the CRI cannot express them (pids.max is the node's
# config, device rules come from CreateContainer's devices).
_KEPT_ON_UPDATE = ("pids", "devices")
# A node that adds nothing (no pids limit) and leaves nothing out (hugetlb exists).
DEFAULT_SUPPORT = CgroupSupport()


def validate_resources(r: Resources) -> None:
    """Refuses values the kernel would refuse, before anything is written or created."""
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
        if not CPU_LIST.match(getattr(r, name)):
            raise InvalidArgument(f"{name} {getattr(r, name)!r} is not a list like 0-2,4")
    for size, limit in r.hugepage_limits.items():
        if not PAGE_SIZE.match(size):
            raise InvalidArgument(f"hugepage page size {size!r} is not like 2MB or 1GB")
        if limit < 0:
            raise InvalidArgument(f"hugepage limit for {size} must not be negative")
    for key in r.unified:
        if not is_v2_file_name(key):
            raise InvalidArgument(f"unified key {key!r} is not a cgroup v2 file name")


def linux_resources(r: Resources, support: CgroupSupport = DEFAULT_SUPPORT) -> dict[str, Any]:
    """The runtime spec's `linux.resources` (OCI field names and semantics) for these CRI
    values on this node: the configured pids limit added, huge page limits left out where no
    hugetlb controller could apply them. Unset (0, "") CRI values are left out."""
    validate_resources(r)
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
    if support.pids_limit:
        resources["pids"] = {"limit": support.pids_limit}
    if r.hugepage_limits and support.hugetlb:
        resources["hugepageLimits"] = [
            {"pageSize": size, "limit": limit} for size, limit in sorted(r.hugepage_limits.items())
        ]
    if r.unified:
        resources["unified"] = dict(sorted(r.unified.items()))
    return resources


def unapplied_hugepage_limits(r: Resources, support: CgroupSupport) -> dict[str, int]:
    """The non-zero huge page limits `linux_resources` leaves out on this node (to be logged:
    kubelet's zero limits for every page size are expected and not worth a warning)."""
    if support.hugetlb:
        return {}
    return {size: limit for size, limit in sorted(r.hugepage_limits.items()) if limit}


def merge_resources(current: Resources, update: Resources) -> Resources:
    """A container's CRI resources after an UpdateContainerResources: set fields replace,
    unset (0, "") ones stay. The CPU quota goes with its period: kubelet sends quota 0 with
    period 100000 for "no CPU limit", so an update that sets the period without a positive
    quota takes the quota away (cpu.cfs_quota_us -1, cpu.max "max")."""
    changes = {
        f.name: getattr(update, f.name)
        for f in dataclasses.fields(update)
        if getattr(update, f.name)
    }
    merged = dataclasses.replace(current, **changes)
    if update.cpu_period and update.cpu_quota <= 0:
        merged = dataclasses.replace(merged, cpu_quota=0)
    if update.hugepage_limits:
        merged = dataclasses.replace(
            merged, hugepage_limits={**current.hugepage_limits, **update.hugepage_limits}
        )
    if update.unified:
        merged = dataclasses.replace(merged, unified={**current.unified, **update.unified})
    return merged


def updated_linux_resources(
    stored: Mapping[str, Any], merged: Resources, support: CgroupSupport
) -> dict[str, Any]:
    """The `linux.resources` config.json holds after an update to `merged` (see
    `merge_resources`): the same translation as at create, with the pids limit and the device
    rules `stored` was created with kept (an update cannot change them)."""
    resources = linux_resources(merged, dataclasses.replace(support, pids_limit=0))
    for key in _KEPT_ON_UPDATE:
        if key in stored:
            resources[key] = stored[key]
    return resources


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
