"""Reading usage from the host: cgroup files (v1 and v2), /proc (open files, a pod's
/proc/<pid>/net/dev), block device names from sysfs, a filesystem's capacity and the size of
a writable layer.

`UsageReader` keeps what needs memory between reads: the previous CPU sample of each
container and pod (usage_nano_cores is a rate between two samples) and the cached size of
each writable layer (walking a layer costs far more than reading a cgroup file). What the
numbers mean, and their parsing, is `runtime/stats.py`.
"""

from __future__ import annotations

import os
import threading
import time
from collections.abc import Callable, Iterable
from dataclasses import replace

from cri_py.linux.cgroupfs import Cgroupfs, CgroupMode
from cri_py.runtime.stats import (
    CgroupDetail,
    CgroupUsage,
    CpuUsage,
    DeviceIo,
    FilesystemCapacity,
    FilesystemUsage,
    NetworkUsage,
    RateState,
    SwapUsage,
    next_rate,
    parse_flat_keyed,
    parse_limit,
    parse_net_dev,
    parse_v1_blkio,
    parse_v2_io_stat,
    v1_memory,
    v2_memory,
)

# kubelet asks every 10 s; walking each writable layer every time would dominate the cost.
LAYER_CACHE_NS = 10_000_000_000


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
        self._rates: dict[str, RateState] = {}
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
