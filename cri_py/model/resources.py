"""The cgroup-relevant resources of a container or pod, as the CRI gives them (0 = not set),
and what the node's cgroups add to them or cannot take (`CgroupSupport`).

Values only: turning them into the runtime spec's `linux.resources` is `cri_py.spec.resources`'s
work, and that object into cgroup file writes `cri_py.oci.cgroups`'s.
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass, field


@dataclass(frozen=True)
class Resources:
    """The cgroup-relevant part of a CRI LinuxContainerResources. 0 means "not set"."""

    cpu_shares: int = 0
    cpu_quota: int = 0
    cpu_period: int = 0
    memory_limit_in_bytes: int = 0
    memory_swap_limit_in_bytes: int = 0
    cpuset_cpus: str = ""
    cpuset_mems: str = ""
    hugepage_limits: Mapping[str, int] = field(default_factory=dict)  # page size -> bytes
    unified: Mapping[str, str] = field(default_factory=dict)


@dataclass(frozen=True)
class CgroupSupport:
    """What this node puts into every container's `linux.resources` beyond the CRI's values,
    and what it leaves out because no controller could apply it."""

    # pids.max of every container (config `cgroups.pids_limit`; the CRI has no field for
    # it); 0: no limit.
    pids_limit: int = 0
    # Whether a hugetlb controller exists. kubelet sends a limit (0 unless requested) for
    # every huge page size the kernel has, controller or not; without one the spec carries
    # none, as containerd (`tolerate_missing_hugetlb_controller`) and CRI-O do.
    hugetlb: bool = True
