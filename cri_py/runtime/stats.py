"""Usage numbers behind ContainerStats and PodSandboxStats, as values: what cgroup files (v1
and v2), a pod's /proc/<pid>/net/dev and a writable layer say, parsed and summed.

Pure functions (text and numbers in, frozen values out); the reading, and what needs memory
between two reads, is `runtime/stats_reader.py` `UsageReader`'s.
"""

from __future__ import annotations

from collections.abc import Iterable, Mapping
from dataclasses import dataclass

# A rate over less than this is noise: two callers (kubelet's summary and a `crictl stats`)
# sampling a few ms apart must not turn one busy second into 0 or 10 cores.
MIN_RATE_WINDOW_NS = 1_000_000_000
# The kernel shows "no limit" as a huge page-aligned number (v1) or "max" (v2).
_UNLIMITED = 2**62


@dataclass(frozen=True)
class CpuUsage:
    timestamp: int
    usage_core_nano_seconds: int
    usage_nano_cores: int | None  # None until two samples a second apart exist


@dataclass(frozen=True)
class MemoryUsage:
    timestamp: int
    working_set_bytes: int
    usage_bytes: int
    rss_bytes: int
    page_faults: int
    major_page_faults: int
    available_bytes: int | None  # None without a limit


@dataclass(frozen=True)
class SwapUsage:
    timestamp: int
    usage_bytes: int
    available_bytes: int | None


@dataclass(frozen=True)
class DeviceIo:
    """Block I/O of a cgroup on one device (what blkio / io.stat count)."""

    major: int
    minor: int
    read_bytes: int = 0
    write_bytes: int = 0
    reads: int = 0
    writes: int = 0
    device: str = ""  # its /dev name, when the kernel tells


@dataclass(frozen=True)
class CgroupDetail:
    """The cAdvisor-style numbers ListPodSandboxMetrics adds to the stats' ones; read only
    when asked for (counting open files walks every process's fd table)."""

    user_ns: int = 0
    system_ns: int = 0
    cfs_periods: int = 0
    cfs_throttled_periods: int = 0
    cfs_throttled_ns: int = 0
    cache_bytes: int = 0
    mapped_file_bytes: int = 0
    kernel_bytes: int = 0
    max_usage_bytes: int = 0
    failcnt: int = 0
    # Page faults of this cgroup alone and of it with its descendants (v1 tells them apart).
    pgfault: int = 0
    pgmajfault: int = 0
    hierarchy_pgfault: int = 0
    hierarchy_pgmajfault: int = 0
    oom_kills: int = 0
    threads: int = 0
    threads_max: int = 0  # 0: no limit
    file_descriptors: int = 0
    sockets: int = 0
    io: tuple[DeviceIo, ...] = ()


@dataclass(frozen=True)
class CgroupUsage:
    cpu: CpuUsage
    memory: MemoryUsage
    swap: SwapUsage | None
    process_count: int
    detail: CgroupDetail | None = None  # only when asked for


@dataclass(frozen=True)
class FilesystemCapacity:
    """The filesystem holding writable layers (statvfs of the root dir)."""

    mountpoint: str
    limit_bytes: int
    inodes_total: int
    inodes_free: int


@dataclass(frozen=True)
class FilesystemUsage:
    timestamp: int
    mountpoint: str
    used_bytes: int
    inodes_used: int


@dataclass(frozen=True)
class InterfaceUsage:
    name: str
    rx_bytes: int
    rx_errors: int
    tx_bytes: int
    tx_errors: int
    rx_packets: int = 0
    rx_dropped: int = 0
    tx_packets: int = 0
    tx_dropped: int = 0


@dataclass(frozen=True)
class NetworkUsage:
    timestamp: int
    interfaces: tuple[InterfaceUsage, ...]


# --- pure parsing and arithmetic -----------------------------------------------------------


def parse_flat_keyed(text: str) -> dict[str, int]:
    """`key value` lines (memory.stat, cpu.stat, memory.events, memory.oom_control)."""
    values: dict[str, int] = {}
    for line in text.splitlines():
        key, _, value = line.partition(" ")
        try:
            values[key] = int(value)
        except ValueError:
            continue
    return values


def parse_limit(text: str) -> int | None:
    text = text.strip()
    if not text or text == "max":
        return None
    number = int(text)
    return None if number >= _UNLIMITED else number


def parse_net_dev(text: str) -> tuple[InterfaceUsage, ...]:
    """/proc/<pid>/net/dev: two header lines, then `name: rx(8 fields) tx(8 fields)`.
    The loopback is left out, as kubelet's summary does."""
    interfaces = []
    for line in text.splitlines()[2:]:
        name, sep, counters = line.partition(":")
        name = name.strip()
        fields = counters.split()
        if not sep or name == "lo" or len(fields) < 16:
            continue
        # rx: bytes packets errs drop ...; tx (from field 8): bytes packets errs drop ...
        interfaces.append(
            InterfaceUsage(
                name,
                rx_bytes=int(fields[0]),
                rx_errors=int(fields[2]),
                tx_bytes=int(fields[8]),
                tx_errors=int(fields[10]),
                rx_packets=int(fields[1]),
                rx_dropped=int(fields[3]),
                tx_packets=int(fields[9]),
                tx_dropped=int(fields[11]),
            )
        )
    return tuple(sorted(interfaces, key=lambda i: i.name))


def parse_v1_blkio(service_bytes: str, serviced: str) -> tuple[DeviceIo, ...]:
    """blkio.throttle.io_service_bytes(_recursive) and io_serviced: `major:minor Op count`
    lines (Op: Read, Write, Sync, Async, Discard, Total), and a closing `Total n`."""
    devices: dict[tuple[int, int], dict[str, int]] = {}
    for text, suffix in ((service_bytes, "bytes"), (serviced, "ops")):
        for line in text.splitlines():
            fields = line.split()
            if len(fields) != 3 or ":" not in fields[0] or fields[1] not in ("Read", "Write"):
                continue
            major, _, minor = fields[0].partition(":")
            key = (int(major), int(minor))
            devices.setdefault(key, {})[f"{fields[1].lower()}_{suffix}"] = int(fields[2])
    return tuple(
        DeviceIo(
            major,
            minor,
            read_bytes=c.get("read_bytes", 0),
            write_bytes=c.get("write_bytes", 0),
            reads=c.get("read_ops", 0),
            writes=c.get("write_ops", 0),
        )
        for (major, minor), c in sorted(devices.items())
    )


def parse_v2_io_stat(text: str) -> tuple[DeviceIo, ...]:
    """io.stat: `major:minor rbytes=n wbytes=n rios=n wios=n ...` per line."""
    devices = []
    for line in text.splitlines():
        head, *pairs = line.split()
        major, sep, minor = head.partition(":")
        if not sep:
            continue
        values = {}
        for pair in pairs:
            key, _, value = pair.partition("=")
            if value.isdigit():
                values[key] = int(value)
        devices.append(
            DeviceIo(
                int(major),
                int(minor),
                read_bytes=values.get("rbytes", 0),
                write_bytes=values.get("wbytes", 0),
                reads=values.get("rios", 0),
                writes=values.get("wios", 0),
            )
        )
    return tuple(sorted(devices, key=lambda d: (d.major, d.minor)))


def memory_usage(
    timestamp: int,
    usage: int,
    limit: int | None,
    inactive_file: int,
    rss: int,
    page_faults: int,
    major_page_faults: int,
) -> MemoryUsage:
    """kubelet's working set: usage minus the inactive file cache (what could be dropped)."""
    working_set = max(0, usage - inactive_file)
    return MemoryUsage(
        timestamp=timestamp,
        working_set_bytes=working_set,
        usage_bytes=usage,
        rss_bytes=rss,
        page_faults=page_faults,
        major_page_faults=major_page_faults,
        available_bytes=max(0, limit - working_set) if limit is not None else None,
    )


def v1_memory(
    timestamp: int, usage: int, limit: int | None, stat: Mapping[str, int]
) -> MemoryUsage:
    # total_*: this cgroup and its descendants (a container's cgroup has none, a pod's has).
    return memory_usage(
        timestamp,
        usage,
        limit,
        stat.get("total_inactive_file", stat.get("inactive_file", 0)),
        stat.get("total_rss", stat.get("rss", 0)),
        stat.get("total_pgfault", stat.get("pgfault", 0)),
        stat.get("total_pgmajfault", stat.get("pgmajfault", 0)),
    )


def v2_memory(
    timestamp: int, usage: int, limit: int | None, stat: Mapping[str, int]
) -> MemoryUsage:
    return memory_usage(
        timestamp,
        usage,
        limit,
        stat.get("inactive_file", 0),
        stat.get("anon", 0),
        stat.get("pgfault", 0),
        stat.get("pgmajfault", 0),
    )


@dataclass
class RateState:
    """A CPU counter's last sample and the rate computed at it (`next_rate`)."""

    timestamp: int
    usage: int
    rate: int | None = None


def next_rate(
    previous: RateState | None, timestamp: int, usage: int
) -> tuple[RateState, int | None]:
    """usage_nano_cores from the previous sample; a sample younger than MIN_RATE_WINDOW_NS
    keeps the last rate (and the older sample, so the next window is long enough). A counter
    that went down (a container left the pod's sum) starts over."""
    if previous is None or usage < previous.usage or timestamp <= previous.timestamp:
        return RateState(timestamp, usage), None
    elapsed = timestamp - previous.timestamp
    if elapsed < MIN_RATE_WINDOW_NS:
        return previous, previous.rate
    rate = (usage - previous.usage) * 1_000_000_000 // elapsed
    return RateState(timestamp, usage, rate), rate


def sum_usage(timestamp: int, usages: Iterable[CgroupUsage]) -> tuple[int, MemoryUsage, int]:
    """A pod's totals over its containers: (cpu ns, memory, process count)."""
    items = list(usages)
    limits = [u.memory.available_bytes for u in items]
    memory = MemoryUsage(
        timestamp=timestamp,
        working_set_bytes=sum(u.memory.working_set_bytes for u in items),
        usage_bytes=sum(u.memory.usage_bytes for u in items),
        rss_bytes=sum(u.memory.rss_bytes for u in items),
        page_faults=sum(u.memory.page_faults for u in items),
        major_page_faults=sum(u.memory.major_page_faults for u in items),
        # The pod has a bound only when every container has one.
        available_bytes=sum(a for a in limits if a is not None)
        if items and all(a is not None for a in limits)
        else None,
    )
    cpu = sum(u.cpu.usage_core_nano_seconds for u in items)
    return cpu, memory, sum(u.process_count for u in items)
