"""The cgroup-relevant resources of a container or pod, as the CRI gives them (0 = not set).

A value only: validating it and turning it into cgroup writes or an OCI `linux.resources`
object is `cri_py.oci.cgroups`'s work.
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
    pids_limit: int = 0  # from config: the CRI has no field for it
