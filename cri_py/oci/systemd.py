"""Pure systemd naming and translation for the systemd cgroup driver: slice names and the
cgroup paths systemd gives them, the units cri-py makes (`cri-py-<id>.scope` per container,
`cri-py-pod_<id>.slice` per pod without a parent), and a spec's `linux.resources` as unit
properties on cgroup v1 and v2.

The cgroup files stay the one source of truth for values (`cri_py.oci.cgroups` plans them and
the driver writes them after systemd has applied the properties, as runc does): the properties
here are what systemd keeps and applies again whenever it re-realizes a unit (daemon-reload,
a sibling's change), so that it never undoes a limit. Keys systemd has no property for
(hugetlb, most `unified` keys, v1 cpuset and memsw) live in the files only. The D-Bus calls are
`cri_py.linux.systemd`'s; nothing here does I/O.
"""

from __future__ import annotations

import posixpath
import re
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from typing import Any

from cri_py.errors import InvalidArgument
from cri_py.oci.cgroups import (
    DEFAULT_CPU_PERIOD,
    MAX_SHARES,
    MIN_SHARES,
    read_limits,
    shares_to_weight,
    v1_writes,
)

# systemd's "infinity" for every uint64 limit property (USEC_INFINITY, CGROUP_LIMIT_MAX).
INFINITY = 2**64 - 1
SCOPE_PREFIX = "cri-py-"
# A separator no ID contains: the leak checker finds the 64-hex ID in the name.
POD_SLICE_PREFIX = "pod_"
SHIM_SCOPE = "cri-py-shims.scope"
# The description of a pod parent slice cri-py made (a `cgroup_parent` that did not exist):
# how the leak checker tells it from kubelet's.
PARENT_SLICE_DESCRIPTION = "cri-py pod parent slice"
DEFAULT_SLICE = "cri-py.slice"
# The characters systemd allows in a unit name (unit_name_is_valid), and its length limit.
_UNIT_CHARS = re.compile(r"^[A-Za-z0-9:_.\\-]+$")
_UNIT_NAME_MAX = 255
# Versions that first took a property: CPUQuotaPeriodUSec (242), AllowedCPUs and
# AllowedMemoryNodes (244). Older systemd gets the files only.
_PERIOD_SINCE, _CPUSET_SINCE = 242, 244
# `unified` keys that are systemd properties on v2: given to systemd too, or its next
# realization would put its own value back (memory.high="max" and so on).
_UNIFIED_PROPERTIES = {
    "memory.high": "MemoryHigh",
    "memory.low": "MemoryLow",
    "memory.min": "MemoryMin",
    "memory.max": "MemoryMax",
    "memory.swap.max": "MemorySwapMax",
    "pids.max": "TasksMax",
}


@dataclass(frozen=True)
class Property:
    """One unit property as D-Bus carries it: name, value signature, value."""

    name: str
    signature: str
    value: Any

    def as_dbus(self) -> tuple[str, tuple[str, Any]]:
        """The `(sv)` form StartTransientUnit and SetUnitProperties take."""
        return (self.name, (self.signature, self.value))


def _check_unit_name(name: str) -> str:
    if len(name) > _UNIT_NAME_MAX or not _UNIT_CHARS.match(name):
        raise InvalidArgument(f"{name!r} is not a valid systemd unit name")
    return name


def expand_slice(name: str) -> str:
    """The cgroup path systemd gives a slice: `a-b-c.slice` is `/a.slice/a-b.slice/a-b-c.slice`
    (each dash a level), `-.slice` the root."""
    stem = name.removesuffix(".slice")
    if stem == name or not stem or "/" in name:
        raise InvalidArgument(f"cgroup parent {name!r} is not a systemd slice name (a-b.slice)")
    _check_unit_name(name)
    if stem == "-":
        return "/"
    parts = stem.split("-")
    if any(not p for p in parts):
        # systemd refuses -a.slice, a-.slice and a--b.slice.
        raise InvalidArgument(f"cgroup parent {name!r} has an empty slice level")
    return "".join(f"/{'-'.join(parts[: i + 1])}.slice" for i in range(len(parts)))


def slice_name(parent: str) -> str:
    """The slice a CRI `cgroup_parent` names under the systemd driver: kubelet sends the name
    (`kubepods-burstable-pod<uid>.slice`), some clients the path (critest `/test.slice`,
    `/kubepods.slice/kubepods-besteffort.slice`): its last level is the slice, and the rest
    must be where systemd puts it."""
    name = posixpath.basename(parent.rstrip("/")) if "/" in parent else parent
    path = expand_slice(name)
    if "/" in parent and parent.rstrip("/") not in (path, f"/{name}"):
        raise InvalidArgument(
            f"cgroup parent {parent!r} is not where systemd puts slice {name} ({path})"
        )
    return name


def scope_name(container_id: str) -> str:
    """The transient scope of a container."""
    if not re.fullmatch(r"[0-9a-zA-Z_]+", container_id):
        raise InvalidArgument(f"container ID {container_id!r} cannot name a systemd unit")
    return _check_unit_name(f"{SCOPE_PREFIX}{container_id}.scope")


def pod_slice_name(parent_slice: str, sandbox_id: str) -> str:
    """The slice cri-py makes for a pod that names no parent, one level below `parent_slice`."""
    if not re.fullmatch(r"[0-9a-zA-Z_]+", sandbox_id):
        raise InvalidArgument(f"sandbox ID {sandbox_id!r} cannot name a systemd unit")
    stem = parent_slice.removesuffix(".slice")
    prefix = "" if stem == "-" else f"{stem}-"
    name = f"{prefix}{POD_SLICE_PREFIX}{sandbox_id}.slice"
    expand_slice(name)
    return name


def unit_of(cgroup: str) -> str:
    """The unit whose cgroup is `cgroup` (a path cri-py made: its last level)."""
    name = posixpath.basename(cgroup.rstrip("/"))
    if not name.endswith((".scope", ".slice")):
        raise InvalidArgument(f"cgroup {cgroup} is not a systemd unit's cgroup")
    return _check_unit_name(name)


def is_ours(cgroup: str) -> bool:
    """Whether a cgroup is a unit cri-py makes (a container scope, a pod slice)."""
    name = posixpath.basename(cgroup.rstrip("/"))
    if name.endswith(".scope"):
        return name.startswith(SCOPE_PREFIX)
    last = name.removesuffix(".slice").rsplit("-", 1)[-1]
    return (
        name.endswith(".slice")
        and last.startswith(POD_SLICE_PREFIX)
        and (re.fullmatch(r"pod_[0-9a-f]{64}", last) is not None)
    )


def cpu_bits(cpus: str) -> bytes:
    """A cpuset list (`0-2,4`) as the little-endian bit mask AllowedCPUs and
    AllowedMemoryNodes take (byte 0 holds CPUs 0-7)."""
    mask = 0
    for part in filter(None, (p.strip() for p in cpus.split(","))):
        first, _, last = part.partition("-")
        low, high = int(first), int(last or first)
        if high < low:
            raise InvalidArgument(f"cpuset range {part!r} runs backwards")
        mask |= ((1 << (high - low + 1)) - 1) << low
    return mask.to_bytes((mask.bit_length() + 7) // 8, "little")


def quota_per_second(quota: int, period: int) -> int:
    """CPUQuotaPerSecUSec for a CFS quota per period: systemd keeps it as a percentage (10 ms
    per second steps), so a fraction is rounded up, never below what the spec grants;
    INFINITY when there is no quota."""
    if quota <= 0:
        return INFINITY
    per_second = quota * 1_000_000 // (period or DEFAULT_CPU_PERIOD)
    return -(-per_second // 10_000) * 10_000


def _limit_value(value: str) -> int | None:
    if value == "max":
        return INFINITY
    return int(value) if value.isdigit() else None


def resource_properties(
    resources: Mapping[str, Any], v2: bool, systemd_version: int
) -> list[Property]:
    """The unit properties for a spec's `linux.resources` (devices aside: see
    `device_properties`). `unified` keys win over the fields, as in the files."""
    r = read_limits(resources)
    if not v2:
        v1_writes(resources)  # the same refusals as the files (unified keys need v2)
    found: dict[str, Property] = {}

    def put(name: str, signature: str, value: Any) -> None:
        found[name] = Property(name, signature, value)

    if r.shares:
        if v2:
            put("CPUWeight", "t", shares_to_weight(r.shares))
        else:
            put("CPUShares", "t", min(max(r.shares, MIN_SHARES), MAX_SHARES))
    if r.period or r.quota:
        period = r.period or DEFAULT_CPU_PERIOD
        if systemd_version >= _PERIOD_SINCE:
            put("CPUQuotaPeriodUSec", "t", period)
        put("CPUQuotaPerSecUSec", "t", quota_per_second(r.quota, period))
    if v2 and systemd_version >= _CPUSET_SINCE:
        if r.cpus.strip():
            put("AllowedCPUs", "ay", cpu_bits(r.cpus))
        if r.mems.strip():
            put("AllowedMemoryNodes", "ay", cpu_bits(r.mems))
    if r.memory:
        put("MemoryMax" if v2 else "MemoryLimit", "t", r.memory)
        if v2 and r.swap and r.swap >= r.memory:
            put("MemorySwapMax", "t", r.swap - r.memory)
    if r.pids:
        put("TasksMax", "t", r.pids)
    if v2:
        for key, raw in r.unified:
            if key == "cpu.weight" and raw.isdigit():
                put("CPUWeight", "t", int(raw))
            elif key in _UNIFIED_PROPERTIES and (value := _limit_value(raw)) is not None:
                put(_UNIFIED_PROPERTIES[key], "t", value)
    return list(found.values())


def _wildcard(value: Any) -> bool:
    return value is None or int(value) < 0


def device_properties(
    rules: Sequence[Mapping[str, Any]], device_names: Mapping[tuple[str, int], str]
) -> list[Property] | None:
    """cgroup v1 device rules as DevicePolicy/DeviceAllow, so that systemd, re-realizing a
    unit, writes the container's allow list rather than its default "allow everything".
    The spec's shape is a deny-all then allows; `/dev/char/M:m` names an exact device,
    `char-<group>` (from /proc/devices, `device_names[(type, major)]`) a major's every minor.
    None when the rules say something systemd cannot (a deny after an allow, a major with no
    group): the caller then relies on the files alone and says so."""
    if not rules:
        return []
    first = rules[0]
    if first.get("allow") or (first.get("type") or "a") != "a":
        return None
    allowed: list[tuple[str, str]] = []
    for rule in rules[1:]:
        kind = rule.get("type") or "a"
        access = str(rule.get("access") or "rwm")
        if not rule.get("allow") or kind not in ("a", "b", "c") or set(access) - set("rwm"):
            return None
        if kind == "a":
            return [Property("DevicePolicy", "s", "auto")]  # everything allowed
        group = "char" if kind == "c" else "block"
        major: Any = rule.get("major")
        minor: Any = rule.get("minor")
        if _wildcard(major):
            if not _wildcard(minor):
                return None
            allowed.append((f"{group}-*", access))
        elif _wildcard(minor):
            name = device_names.get((kind, int(major)))
            if name is None:
                return None
            allowed.append((f"{group}-{name}", access))
        else:
            allowed.append((f"/dev/{group}/{int(major)}:{int(minor)}", access))
    return [Property("DevicePolicy", "s", "strict"), Property("DeviceAllow", "a(ss)", allowed)]


def parse_proc_devices(text: str) -> dict[tuple[str, int], str]:
    """/proc/devices as (type, major) -> group name, the names DeviceAllow's `char-` takes."""
    names: dict[tuple[str, int], str] = {}
    kind = ""
    for line in text.splitlines():
        if line.startswith("Character devices"):
            kind = "c"
        elif line.startswith("Block devices"):
            kind = "b"
        elif kind and (fields := line.split()) and len(fields) == 2 and fields[0].isdigit():
            names.setdefault((kind, int(fields[0])), fields[1])
    return names


def accounting_properties(v2: bool) -> list[Property]:
    """Turn on the controllers a unit's limits and stats need (systemd enables a controller
    in the parents' subtree only for units that ask)."""
    names = ["CPUAccounting", "MemoryAccounting", "TasksAccounting"]
    names.append("IOAccounting" if v2 else "BlockIOAccounting")
    return [Property(name, "b", True) for name in names]


def scope_properties(
    description: str, parent_slice: str, pids: Sequence[int], delegate: bool = True
) -> list[Property]:
    """What a transient scope is: in `parent_slice`, holding `pids`, its subtree delegated
    (`Delegate=yes`: systemd leaves what is below the unit's cgroup and the files cri-py
    writes alone), kept out of shutdown ordering, and collected even when it failed."""
    return [
        Property("Description", "s", description),
        Property("Slice", "s", parent_slice),
        Property("Delegate", "b", delegate),
        Property("DefaultDependencies", "b", False),
        Property("CollectMode", "s", "inactive-or-failed"),
        Property("PIDs", "au", list(pids)),
    ]


def slice_properties(description: str) -> list[Property]:
    return [
        Property("Description", "s", description),
        Property("DefaultDependencies", "b", False),
    ]
