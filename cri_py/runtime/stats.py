"""Usage numbers behind ContainerStats and PodSandboxStats: cgroup files (v1 and v2), a pod's
/proc/<pid>/net/dev and the size of a writable layer.

Parsing and arithmetic are pure functions (text and numbers in, frozen values out);
`UsageReader` does the reading and keeps what needs memory: the previous CPU sample of each
container and pod (usage_nano_cores is a rate between two samples) and the cached size of
each writable layer (walking a layer costs far more than reading a cgroup file).
"""

from __future__ import annotations

import os
import threading
import time
from collections.abc import Callable, Iterable, Mapping
from dataclasses import dataclass, replace

from cri_py.linux.cgroupfs import Cgroupfs, CgroupMode

# A rate over less than this is noise: two callers (kubelet's summary and a `crictl stats`)
# sampling a few ms apart must not turn one busy second into 0 or 10 cores.
MIN_RATE_WINDOW_NS = 1_000_000_000
# kubelet asks every 10 s; walking each writable layer every time would dominate the cost.
LAYER_CACHE_NS = 10_000_000_000
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
class _RateState:
    timestamp: int
    usage: int
    rate: int | None = None


def next_rate(
    previous: _RateState | None, timestamp: int, usage: int
) -> tuple[_RateState, int | None]:
    """usage_nano_cores from the previous sample; a sample younger than MIN_RATE_WINDOW_NS
    keeps the last rate (and the older sample, so the next window is long enough). A counter
    that went down (a container left the pod's sum) starts over."""
    if previous is None or usage < previous.usage or timestamp <= previous.timestamp:
        return _RateState(timestamp, usage), None
    elapsed = timestamp - previous.timestamp
    if elapsed < MIN_RATE_WINDOW_NS:
        return previous, previous.rate
    rate = (usage - previous.usage) * 1_000_000_000 // elapsed
    return _RateState(timestamp, usage, rate), rate


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


# --- reading --------------------------------------------------------------------------------


def _read(path: str) -> str:
    with open(path) as f:
        return f.read()


def _read_or(path: str, default: str = "") -> str:
    """A file that an older kernel or an unmounted controller may lack."""
    try:
        return _read(path)
    except OSError:
        return default


def _int_or_zero(text: str) -> int:
    text = text.strip()
    return int(text) if text.isdigit() else 0


def open_files(pids: Iterable[int]) -> tuple[int, int]:
    """(file descriptors, sockets) open in `pids`, from /proc/<pid>/fd; a process that
    exits meanwhile counts nothing."""
    fds = sockets = 0
    for pid in pids:
        directory = f"/proc/{pid}/fd"
        try:
            names = os.listdir(directory)
        except OSError:
            continue
        fds += len(names)
        for name in names:
            try:
                if os.readlink(f"{directory}/{name}").startswith("socket:"):
                    sockets += 1
            except OSError:
                continue
    return fds, sockets


def device_name(major: int, minor: int) -> str:
    """/dev/<name> of a block device, from its uevent in sysfs; "" when unknown."""
    for line in _read_or(f"/sys/dev/block/{major}:{minor}/uevent").splitlines():
        key, _, value = line.partition("=")
        if key == "DEVNAME" and value:
            return f"/dev/{value}"
    return ""


def _named(devices: tuple[DeviceIo, ...]) -> tuple[DeviceIo, ...]:
    return tuple(replace(d, device=device_name(d.major, d.minor)) for d in devices)


def filesystem_capacity(path: str) -> FilesystemCapacity | None:
    try:
        st = os.statvfs(path)
    except OSError:
        return None
    return FilesystemCapacity(path, st.f_blocks * st.f_frsize, st.f_files, st.f_ffree)


def layer_usage(path: str) -> tuple[int, int]:
    """(bytes, inodes) under `path`, as du counts them: allocated blocks, hard links once."""
    used = inodes = 0
    seen: set[tuple[int, int]] = set()
    stack = [path]
    while stack:
        directory = stack.pop()
        try:
            entries = list(os.scandir(directory))
        except OSError:
            continue
        for entry in entries:
            try:
                st = entry.stat(follow_symlinks=False)
            except OSError:
                continue
            if st.st_nlink > 1:
                key = (st.st_dev, st.st_ino)
                if key in seen:
                    continue
                seen.add(key)
            used += st.st_blocks * 512
            inodes += 1
            if entry.is_dir(follow_symlinks=False):
                stack.append(entry.path)
    return used, inodes


class UsageReader:
    """Reads usage from cgroups; thread-safe (the server calls it from worker threads)."""

    def __init__(self, fs: Cgroupfs, clock: Callable[[], int] = time.time_ns) -> None:
        self.fs = fs
        self._clock = clock
        self._lock = threading.Lock()
        self._rates: dict[str, _RateState] = {}
        self._layers: dict[str, FilesystemUsage] = {}

    def _rate(self, key: str, timestamp: int, usage: int) -> int | None:
        with self._lock:
            state, rate = next_rate(self._rates.get(key), timestamp, usage)
            self._rates[key] = state
        return rate

    def rate(self, key: str, timestamp: int, usage: int) -> int | None:
        """usage_nano_cores of anything whose CPU counter is `usage` (a pod's sum, say)."""
        return self._rate(key, timestamp, usage)

    def forget(self, key: str) -> None:
        with self._lock:
            self._rates.pop(key, None)
            self._layers.pop(key, None)

    def cgroup(self, key: str, cgroup: str, detailed: bool = False) -> CgroupUsage | None:
        """The usage of one cgroup (with its `CgroupDetail` when `detailed`); None when it
        is gone."""
        timestamp = self._clock()
        try:
            if self.fs.mode == CgroupMode.V2:
                usage = self._v2(key, cgroup, timestamp)
                detail = self._v2_detail(cgroup) if detailed else None
            else:
                usage = self._v1(key, cgroup, timestamp)
                detail = self._v1_detail(cgroup) if detailed else None
        except FileNotFoundError:
            return None
        return replace(usage, detail=detail) if detail is not None else usage

    def _optional(self, cgroup: str, controller: str, name: str) -> str:
        try:
            return _read_or(self._file(cgroup, controller, name))
        except OSError:
            return ""  # the controller is not mounted

    def _v1_detail(self, cgroup: str) -> CgroupDetail:
        cpu = parse_flat_keyed(self._optional(cgroup, "cpu", "cpu.stat"))
        user = self._optional(cgroup, "cpuacct", "cpuacct.usage_user")
        system = self._optional(cgroup, "cpuacct", "cpuacct.usage_sys")
        if user and system:
            user_ns, system_ns = _int_or_zero(user), _int_or_zero(system)
        else:  # older kernels: clock ticks only
            ticks = parse_flat_keyed(self._optional(cgroup, "cpuacct", "cpuacct.stat"))
            per_tick = 1_000_000_000 // os.sysconf("SC_CLK_TCK")
            user_ns = ticks.get("user", 0) * per_tick
            system_ns = ticks.get("system", 0) * per_tick
        memory = parse_flat_keyed(_read(self._file(cgroup, "memory", "memory.stat")))
        oom = parse_flat_keyed(self._optional(cgroup, "memory", "memory.oom_control"))
        pids = self.fs.pids(cgroup)
        fds, sockets = open_files(pids)
        return CgroupDetail(
            user_ns=user_ns,
            system_ns=system_ns,
            cfs_periods=cpu.get("nr_periods", 0),
            cfs_throttled_periods=cpu.get("nr_throttled", 0),
            cfs_throttled_ns=cpu.get("throttled_time", 0),
            cache_bytes=memory.get("total_cache", memory.get("cache", 0)),
            mapped_file_bytes=memory.get("total_mapped_file", memory.get("mapped_file", 0)),
            kernel_bytes=_int_or_zero(
                self._optional(cgroup, "memory", "memory.kmem.usage_in_bytes")
            ),
            max_usage_bytes=_int_or_zero(
                self._optional(cgroup, "memory", "memory.max_usage_in_bytes")
            ),
            failcnt=_int_or_zero(self._optional(cgroup, "memory", "memory.failcnt")),
            pgfault=memory.get("pgfault", 0),
            pgmajfault=memory.get("pgmajfault", 0),
            hierarchy_pgfault=memory.get("total_pgfault", memory.get("pgfault", 0)),
            hierarchy_pgmajfault=memory.get("total_pgmajfault", memory.get("pgmajfault", 0)),
            oom_kills=oom.get("oom_kill", 0),
            threads=_int_or_zero(self._optional(cgroup, "pids", "pids.current")),
            threads_max=_int_or_zero(self._optional(cgroup, "pids", "pids.max")),
            file_descriptors=fds,
            sockets=sockets,
            io=_named(
                parse_v1_blkio(
                    self._optional(cgroup, "blkio", "blkio.throttle.io_service_bytes_recursive"),
                    self._optional(cgroup, "blkio", "blkio.throttle.io_serviced_recursive"),
                )
            ),
        )

    def _v2_detail(self, cgroup: str) -> CgroupDetail:
        cpu = parse_flat_keyed(_read(self._file(cgroup, "", "cpu.stat")))
        memory = parse_flat_keyed(_read(self._file(cgroup, "", "memory.stat")))
        events = parse_flat_keyed(self._optional(cgroup, "", "memory.events"))
        kernel = memory.get("kernel", memory.get("kernel_stack", 0) + memory.get("slab", 0))
        pids = self.fs.pids(cgroup)
        fds, sockets = open_files(pids)
        return CgroupDetail(
            user_ns=cpu.get("user_usec", 0) * 1000,
            system_ns=cpu.get("system_usec", 0) * 1000,
            cfs_periods=cpu.get("nr_periods", 0),
            cfs_throttled_periods=cpu.get("nr_throttled", 0),
            cfs_throttled_ns=cpu.get("throttled_usec", 0) * 1000,
            cache_bytes=memory.get("file", 0),
            mapped_file_bytes=memory.get("file_mapped", 0),
            kernel_bytes=kernel,
            max_usage_bytes=_int_or_zero(self._optional(cgroup, "", "memory.peak")),
            # v2 has no failcnt; the times usage hit the limit is the nearest thing.
            failcnt=events.get("max", 0),
            pgfault=memory.get("pgfault", 0),
            pgmajfault=memory.get("pgmajfault", 0),
            hierarchy_pgfault=memory.get("pgfault", 0),
            hierarchy_pgmajfault=memory.get("pgmajfault", 0),
            oom_kills=events.get("oom_kill", 0),
            threads=_int_or_zero(self._optional(cgroup, "", "pids.current")),
            threads_max=_int_or_zero(self._optional(cgroup, "", "pids.max")),
            file_descriptors=fds,
            sockets=sockets,
            io=_named(parse_v2_io_stat(self._optional(cgroup, "", "io.stat"))),
        )

    def _file(self, cgroup: str, controller: str, name: str) -> str:
        return str(self.fs.file(cgroup, controller, name))

    def _v1(self, key: str, cgroup: str, timestamp: int) -> CgroupUsage:
        cpu_ns = int(_read(self._file(cgroup, "cpuacct", "cpuacct.usage")))
        usage = int(_read(self._file(cgroup, "memory", "memory.usage_in_bytes")))
        limit = parse_limit(_read(self._file(cgroup, "memory", "memory.limit_in_bytes")))
        stat = parse_flat_keyed(_read(self._file(cgroup, "memory", "memory.stat")))
        swap = None
        try:
            memsw = int(_read(self._file(cgroup, "memory", "memory.memsw.usage_in_bytes")))
            memsw_limit = parse_limit(
                _read(self._file(cgroup, "memory", "memory.memsw.limit_in_bytes"))
            )
        except FileNotFoundError:
            pass  # no swap accounting on this kernel
        else:
            used = max(0, memsw - usage)
            available = None
            if memsw_limit is not None and limit is not None:
                # memsw is memory plus swap: the swap allowed is what the memory limit leaves.
                available = max(0, memsw_limit - limit - used)
            swap = SwapUsage(timestamp, used, available)
        return CgroupUsage(
            cpu=CpuUsage(timestamp, cpu_ns, self._rate(key, timestamp, cpu_ns)),
            memory=v1_memory(timestamp, usage, limit, stat),
            swap=swap,
            process_count=len(self.fs.pids(cgroup)),
        )

    def _v2(self, key: str, cgroup: str, timestamp: int) -> CgroupUsage:
        cpu = parse_flat_keyed(_read(self._file(cgroup, "", "cpu.stat")))
        cpu_ns = cpu.get("usage_usec", 0) * 1000
        usage = int(_read(self._file(cgroup, "", "memory.current")))
        limit = parse_limit(_read(self._file(cgroup, "", "memory.max")))
        stat = parse_flat_keyed(_read(self._file(cgroup, "", "memory.stat")))
        swap = None
        try:
            swap_used = int(_read(self._file(cgroup, "", "memory.swap.current")))
            swap_max = parse_limit(_read(self._file(cgroup, "", "memory.swap.max")))
        except FileNotFoundError:
            pass
        else:
            available = max(0, swap_max - swap_used) if swap_max is not None else None
            swap = SwapUsage(timestamp, swap_used, available)
        procs = _read(self._file(cgroup, "", "cgroup.procs")).split()
        return CgroupUsage(
            cpu=CpuUsage(timestamp, cpu_ns, self._rate(key, timestamp, cpu_ns)),
            memory=v2_memory(timestamp, usage, limit, stat),
            swap=swap,
            process_count=len(procs),
        )

    def writable_layer(self, key: str, path: str, mountpoint: str) -> FilesystemUsage:
        """The size of a container's upper dir, walked at most every LAYER_CACHE_NS."""
        now = self._clock()
        with self._lock:
            cached = self._layers.get(key)
        if cached is not None and now - cached.timestamp < LAYER_CACHE_NS:
            return cached
        used, inodes = layer_usage(path)
        usage = FilesystemUsage(now, mountpoint, used, inodes)
        with self._lock:
            self._layers[key] = usage
        return usage

    def network(self, pid: int) -> NetworkUsage | None:
        """A pod's interfaces, from a process in its network namespace (no setns needed)."""
        timestamp = self._clock()
        try:
            text = _read(f"/proc/{pid}/net/dev")
        except OSError:
            return None
        return NetworkUsage(timestamp, parse_net_dev(text))
