"""Pure translation of a runtime spec's `linux.resources` into cgroup file writes, for cgroup
v1 and v2. Both cgroup drivers write these files (the systemd driver after giving systemd the
same limits as unit properties, `cri_py.oci.systemd`).

`v1_writes` / `v2_writes` read the object `cri_py.spec.resources.linux_resources` put into
config.json and give the files to write, in order; `cri_py.runtime.cgroups` writes exactly
these, nothing else. The object's `devices` rules are turned into v1 files by
`cri_py.oci.devices` and into a v2 BPF program by `cri_py.oci.device_filter`, once, at create.
Nothing here touches the filesystem: `cri_py/linux/cgroupfs.py` does.
"""

from __future__ import annotations

import re
from collections.abc import Mapping
from dataclasses import dataclass
from typing import Any

from cri_py.errors import InvalidArgument

# kubelet sends quota 0 (or -1) with period 100000 when a container has no CPU limit.
DEFAULT_CPU_PERIOD = 100_000
# The kernel's bounds for cpu.cfs_period_us / the period of cpu.max: 1 ms to 1 s.
MIN_CPU_PERIOD, MAX_CPU_PERIOD = 1_000, 1_000_000
MIN_CPU_QUOTA = 1_000
# cgroup v1 cpu.shares bounds (the kernel clamps to these).
MIN_SHARES, MAX_SHARES = 2, 262_144
PAGE_SIZE = re.compile(r"^[0-9]+(KB|MB|GB|TB|PB)$")
CPU_LIST = re.compile(r"^\s*$|^[0-9]+(-[0-9]+)?(,[0-9]+(-[0-9]+)?)*$")
# The parts of `linux.resources` cri-py writes and applies; anything else in a spec would be a
# limit nobody enforces, so it is refused rather than ignored.
_FIELDS: dict[str, frozenset[str]] = {
    "cpu": frozenset({"shares", "quota", "period", "cpus", "mems"}),
    "memory": frozenset({"limit", "swap"}),
    "pids": frozenset({"limit"}),
}
_LISTS = frozenset({"hugepageLimits", "unified", "devices"})


@dataclass(frozen=True)
class Write:
    """One cgroup file write: `controller` names the v1 hierarchy ("" on v2)."""

    controller: str
    file: str
    value: str


def is_v2_file_name(key: str) -> bool:
    """Whether a `unified` key can only name a file in the container's own cgroup dir."""
    return "/" not in key and not key.startswith(".") and "." in key and "\x00" not in key


@dataclass(frozen=True)
class Limits:
    """The limits of a `linux.resources` object, read and checked (0, "" = not set)."""

    shares: int = 0
    quota: int = 0
    period: int = 0
    cpus: str = ""
    mems: str = ""
    memory: int = 0
    swap: int = 0  # OCI: memory plus swap, as the CRI's memory_swap_limit_in_bytes
    pids: int = 0
    hugepages: tuple[tuple[str, int], ...] = ()  # (page size, bytes), sorted
    unified: tuple[tuple[str, str], ...] = ()  # sorted


def _int(section: str, key: str, value: Any) -> int:
    if not isinstance(value, int) or isinstance(value, bool):
        raise InvalidArgument(f"linux.resources.{section}.{key} must be an integer, got {value!r}")
    return value


def _cpu_list(key: str, value: Any) -> str:
    if not isinstance(value, str) or not CPU_LIST.match(value):
        raise InvalidArgument(f"linux.resources.cpu.{key} {value!r} is not a list like 0-2,4")
    return value


def read_limits(resources: Mapping[str, Any]) -> Limits:
    """The limits a spec's `linux.resources` sets; a field cri-py would not apply, or a value
    that could name a file outside the cgroup, is refused."""
    unknown = sorted(set(resources) - set(_FIELDS) - _LISTS)
    for section, known in _FIELDS.items():
        extra = set(resources.get(section, {})) - known
        unknown += sorted(f"{section}.{key}" for key in extra)
    if unknown:
        raise InvalidArgument(f"linux.resources fields cri-py does not apply: {', '.join(unknown)}")
    cpu: Mapping[str, Any] = resources.get("cpu", {})
    memory: Mapping[str, Any] = resources.get("memory", {})
    hugepages: list[tuple[str, int]] = []
    for entry in resources.get("hugepageLimits", ()):
        size = entry.get("pageSize")
        if not isinstance(size, str) or not PAGE_SIZE.match(size):
            raise InvalidArgument(f"hugepage page size {size!r} is not like 2MB or 1GB")
        hugepages.append((size, _int("hugepageLimits", size, entry.get("limit"))))
    unified: list[tuple[str, str]] = []
    for key, value in resources.get("unified", {}).items():
        if not is_v2_file_name(key) or not isinstance(value, str):
            raise InvalidArgument(f"unified key {key!r} is not a cgroup v2 file name")
        unified.append((key, value))
    return Limits(
        shares=_int("cpu", "shares", cpu.get("shares", 0)),
        quota=_int("cpu", "quota", cpu.get("quota", 0)),
        period=_int("cpu", "period", cpu.get("period", 0)),
        cpus=_cpu_list("cpus", cpu.get("cpus", "")),
        mems=_cpu_list("mems", cpu.get("mems", "")),
        memory=_int("memory", "limit", memory.get("limit", 0)),
        swap=_int("memory", "swap", memory.get("swap", 0)),
        pids=_int("pids", "limit", resources.get("pids", {}).get("limit", 0)),
        hugepages=tuple(sorted(hugepages)),
        unified=tuple(sorted(unified)),
    )


def _cpu_max_quota(limits: Limits) -> int:
    """The quota to write when a period is: a missing or negative one is "no limit"."""
    return limits.quota if limits.quota > 0 else -1


def _pids_max(limits: Limits) -> str:
    return str(limits.pids) if limits.pids > 0 else "max"


def v1_writes(resources: Mapping[str, Any], current_memsw_limit: int | None = None) -> list[Write]:
    """Files for cgroup v1. The kernel keeps memory.limit_in_bytes <= memory.memsw.limit_in_bytes
    at every write, so memsw goes first only when the new limit exceeds the current memsw
    (`current_memsw_limit`, None for unlimited, as in a new cgroup)."""
    r = read_limits(resources)
    if r.unified:
        raise InvalidArgument(
            f"unified cgroup settings ({', '.join(k for k, _ in r.unified)}) need cgroup v2; "
            "this node runs cgroup v1"
        )
    writes: list[Write] = []
    if r.shares:
        shares = min(max(r.shares, MIN_SHARES), MAX_SHARES)
        writes.append(Write("cpu", "cpu.shares", str(shares)))
    if r.period or r.quota:
        writes.append(Write("cpu", "cpu.cfs_period_us", str(r.period or DEFAULT_CPU_PERIOD)))
        writes.append(Write("cpu", "cpu.cfs_quota_us", str(_cpu_max_quota(r))))
    # cpuset.mems before tasks can join, and cpus before mems is what the kernel accepts.
    if r.cpus:
        writes.append(Write("cpuset", "cpuset.cpus", r.cpus))
    if r.mems:
        writes.append(Write("cpuset", "cpuset.mems", r.mems))
    memory: list[Write] = []
    if r.memory:
        memory.append(Write("memory", "memory.limit_in_bytes", str(r.memory)))
    if r.swap:
        memsw = Write("memory", "memory.memsw.limit_in_bytes", str(r.swap))
        raising = current_memsw_limit is not None and r.memory > current_memsw_limit
        memory.insert(0 if raising else len(memory), memsw)
    writes.extend(memory)
    for size, limit in r.hugepages:
        writes.append(Write("hugetlb", f"hugetlb.{size}.limit_in_bytes", str(limit)))
    if r.pids:
        writes.append(Write("pids", "pids.max", _pids_max(r)))
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


def v2_writes(resources: Mapping[str, Any]) -> list[Write]:
    """Files for cgroup v2, `unified` keys last and verbatim (they win, as in the OCI spec)."""
    r = read_limits(resources)
    writes: list[Write] = []
    if r.shares:
        writes.append(Write("", "cpu.weight", str(shares_to_weight(r.shares))))
    if r.period or r.quota:
        quota = "max" if r.quota <= 0 else str(r.quota)
        writes.append(Write("", "cpu.max", f"{quota} {r.period or DEFAULT_CPU_PERIOD}"))
    if r.cpus:
        writes.append(Write("", "cpuset.cpus", r.cpus))
    if r.mems:
        writes.append(Write("", "cpuset.mems", r.mems))
    if r.memory:
        writes.append(Write("", "memory.max", str(r.memory)))
        if r.swap:
            # OCI's swap is memory+swap; v2's memory.swap.max is the swap alone.
            writes.append(Write("", "memory.swap.max", str(r.swap - r.memory)))
    elif r.swap:
        raise InvalidArgument("memory_swap_limit_in_bytes needs memory_limit_in_bytes on cgroup v2")
    for size, limit in r.hugepages:
        writes.append(Write("", f"hugetlb.{size}.max", str(limit)))
    if r.pids:
        writes.append(Write("", "pids.max", _pids_max(r)))
    for key, value in r.unified:
        writes.append(Write("", key, value))
    return writes


def v2_controllers(writes: list[Write]) -> list[str]:
    """The controllers a v2 parent must enable in cgroup.subtree_control for these writes."""
    names = {w.file.split(".", 1)[0] for w in writes}
    return sorted(names & {"cpu", "cpuset", "memory", "hugetlb", "pids", "io"})
