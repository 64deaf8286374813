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
from dataclasses import dataclass

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
class CgroupUsage:
    cpu: CpuUsage
    memory: MemoryUsage
    swap: SwapUsage | None
    process_count: int


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
        interfaces.append(
            InterfaceUsage(name, int(fields[0]), int(fields[2]), int(fields[8]), int(fields[10]))
        )
    return tuple(sorted(interfaces, key=lambda i: i.name))


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

    def cgroup(self, key: str, cgroup: str) -> CgroupUsage | None:
        """The usage of one cgroup; None when it is gone."""
        timestamp = self._clock()
        try:
            if self.fs.mode == CgroupMode.V2:
                return self._v2(key, cgroup, timestamp)
            return self._v1(key, cgroup, timestamp)
        except FileNotFoundError:
            return None

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
