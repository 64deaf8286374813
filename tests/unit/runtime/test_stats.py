"""Usage numbers from fake cgroup v1 and v2 trees, /proc/net/dev texts and a small layer."""

from __future__ import annotations

from pathlib import Path

import pytest

from cri_py.linux.cgroupfs import Cgroupfs, Hierarchy
from cri_py.runtime.stats import (
    MIN_RATE_WINDOW_NS,
    CgroupUsage,
    CpuUsage,
    DeviceIo,
    next_rate,
    parse_limit,
    parse_net_dev,
    parse_v1_blkio,
    parse_v2_io_stat,
    sum_usage,
    v1_memory,
)
from cri_py.runtime.stats_reader import UsageReader, layer_usage

NET_DEV = """\
Inter-|   Receive                                                |  Transmit
 face |bytes    packets errs drop fifo frame compressed multicast|bytes    packets errs drop fifo colls carrier compressed
    lo:     100       1    0    0    0     0          0         0      100       1    0    0    0     0       0          0
  eth0:    5000      40    2    0    0     0          0         0     7000      50    3    0    0     0       0          0
"""  # noqa: E501

V1_STAT = """\
cache 4096
rss 8192
total_cache 1048576
total_rss 2097152
total_inactive_file 524288
total_pgfault 300
total_pgmajfault 2
"""


class Clock:
    def __init__(self) -> None:
        self.now = 1_000 * MIN_RATE_WINDOW_NS

    def __call__(self) -> int:
        return self.now


def v1_tree(root: Path, cgroup: str) -> Cgroupfs:
    hierarchies = []
    for name in ("cpu", "cpuacct", "memory", "pids"):
        mount = root / name
        (mount / cgroup.lstrip("/")).mkdir(parents=True)
        hierarchies.append(Hierarchy(str(mount), "/", frozenset({name}), 1))
    return Cgroupfs(hierarchies)


def write(fs: Cgroupfs, cgroup: str, controller: str, name: str, value: str) -> None:
    fs.file(cgroup, controller, name).write_text(value)


def test_v1_usage_and_the_cpu_rate_between_two_samples(tmp_path: Path) -> None:
    cgroup = "/cri-py/cri-py-a"
    fs = v1_tree(tmp_path, cgroup)
    for controller in ("cpu", "cpuacct", "memory", "pids"):
        write(fs, cgroup, controller, "cgroup.procs", "10\n11\n")
    write(fs, cgroup, "cpuacct", "cpuacct.usage", "1000000000\n")
    write(fs, cgroup, "memory", "memory.usage_in_bytes", "3145728\n")
    write(fs, cgroup, "memory", "memory.limit_in_bytes", "67108864\n")
    write(fs, cgroup, "memory", "memory.memsw.usage_in_bytes", "3145728\n")
    write(fs, cgroup, "memory", "memory.memsw.limit_in_bytes", "9223372036854771712\n")
    write(fs, cgroup, "memory", "memory.stat", V1_STAT)
    clock = Clock()
    reader = UsageReader(fs, clock)
    first = reader.cgroup("a", cgroup)
    assert first is not None
    assert first.cpu.usage_core_nano_seconds == 1_000_000_000
    assert first.cpu.usage_nano_cores is None  # one sample is no rate
    assert first.memory.usage_bytes == 3145728
    assert first.memory.working_set_bytes == 3145728 - 524288
    assert first.memory.rss_bytes == 2097152
    assert (first.memory.page_faults, first.memory.major_page_faults) == (300, 2)
    assert first.memory.available_bytes == 67108864 - (3145728 - 524288)
    assert first.swap is not None and first.swap.usage_bytes == 0
    assert first.process_count == 2
    # Half a core over two seconds.
    clock.now += 2 * MIN_RATE_WINDOW_NS
    write(fs, cgroup, "cpuacct", "cpuacct.usage", "2000000000\n")
    second = reader.cgroup("a", cgroup)
    assert second is not None and second.cpu.usage_nano_cores == 500_000_000
    # A sample a moment later keeps the rate instead of dividing by a tiny window.
    clock.now += 1000
    write(fs, cgroup, "cpuacct", "cpuacct.usage", "2000900000\n")
    third = reader.cgroup("a", cgroup)
    assert third is not None and third.cpu.usage_nano_cores == 500_000_000
    assert reader.cgroup("gone", "/cri-py/cri-py-gone") is None


def test_v2_usage(tmp_path: Path) -> None:
    cgroup = "/kubepods/cri-py-b"
    directory = tmp_path / cgroup.lstrip("/")
    directory.mkdir(parents=True)
    fs = Cgroupfs([Hierarchy(str(tmp_path), "/", frozenset(), 2)])
    (directory / "cpu.stat").write_text("usage_usec 1500\nuser_usec 1000\n")
    (directory / "memory.current").write_text("4096000\n")
    (directory / "memory.max").write_text("max\n")
    (directory / "memory.stat").write_text("anon 1000000\ninactive_file 96000\npgfault 7\n")
    (directory / "cgroup.procs").write_text("5\n")
    usage = UsageReader(fs).cgroup("b", cgroup)
    assert usage is not None
    assert usage.cpu.usage_core_nano_seconds == 1_500_000
    assert usage.memory.working_set_bytes == 4_000_000
    assert usage.memory.available_bytes is None
    assert (usage.memory.rss_bytes, usage.memory.page_faults) == (1_000_000, 7)
    assert usage.swap is None and usage.process_count == 1


def test_net_dev_leaves_out_the_loopback() -> None:
    (eth0,) = parse_net_dev(NET_DEV)
    assert (eth0.name, eth0.rx_bytes, eth0.rx_errors, eth0.tx_bytes, eth0.tx_errors) == (
        "eth0",
        5000,
        2,
        7000,
        3,
    )


@pytest.mark.parametrize(
    ("text", "expected"), [("max", None), ("9223372036854771712", None), ("1024\n", 1024)]
)
def test_limits(text: str, expected: int | None) -> None:
    assert parse_limit(text) == expected


def test_a_counter_that_went_down_starts_the_rate_over() -> None:
    state, rate = next_rate(None, 0, 100)
    state, rate = next_rate(state, 2 * MIN_RATE_WINDOW_NS, 50)
    assert rate is None and state.usage == 50


def test_pod_sums_and_its_bound_only_when_every_container_has_one() -> None:
    def usage(working_set: int, limit: int | None) -> CgroupUsage:
        memory = v1_memory(1, working_set, limit, {})
        return CgroupUsage(CpuUsage(1, 10, None), memory, None, 1)

    cpu, memory, processes = sum_usage(5, [usage(100, 1000), usage(50, None)])
    assert (cpu, memory.working_set_bytes, memory.available_bytes, processes) == (20, 150, None, 2)
    _, bounded, _ = sum_usage(5, [usage(100, 1000), usage(50, 500)])
    assert bounded.available_bytes == 900 + 450


def test_layer_usage_counts_blocks_and_hard_links_once(tmp_path: Path) -> None:
    (tmp_path / "d").mkdir()
    (tmp_path / "d" / "f").write_bytes(b"x" * 10000)
    (tmp_path / "d" / "link").hardlink_to(tmp_path / "d" / "f")
    used, inodes = layer_usage(str(tmp_path))
    assert inodes == 2  # d and f (the link is f)
    assert used >= 10000


def test_layer_size_is_cached(tmp_path: Path) -> None:
    clock = Clock()
    reader = UsageReader(Cgroupfs([Hierarchy(str(tmp_path), "/", frozenset(), 2)]), clock)
    layer = tmp_path / "upper"
    layer.mkdir()
    first = reader.writable_layer("a", str(layer), "/var/lib/cri-py")
    (layer / "new").write_bytes(b"y" * 8192)
    assert reader.writable_layer("a", str(layer), "/var/lib/cri-py") == first
    clock.now += 60 * MIN_RATE_WINDOW_NS
    assert reader.writable_layer("a", str(layer), "/var/lib/cri-py").inodes_used == 1


def test_net_dev_packets_and_drops() -> None:
    (eth0,) = parse_net_dev(NET_DEV)
    assert (eth0.rx_packets, eth0.rx_dropped, eth0.tx_packets, eth0.tx_dropped) == (40, 0, 50, 0)


def test_v1_detail_for_metrics(tmp_path: Path) -> None:
    cgroup = "/cri-py/cri-py-d"
    fs = v1_tree(tmp_path, cgroup)
    for controller in ("cpu", "cpuacct", "memory", "pids"):
        write(fs, cgroup, controller, "cgroup.procs", "")
    write(fs, cgroup, "cpuacct", "cpuacct.usage", "5000000000\n")
    write(fs, cgroup, "cpuacct", "cpuacct.usage_user", "3000000000\n")
    write(fs, cgroup, "cpuacct", "cpuacct.usage_sys", "2000000000\n")
    write(fs, cgroup, "cpu", "cpu.stat", "nr_periods 10\nnr_throttled 4\nthrottled_time 900\n")
    write(fs, cgroup, "memory", "memory.usage_in_bytes", "3145728\n")
    write(fs, cgroup, "memory", "memory.limit_in_bytes", "67108864\n")
    write(fs, cgroup, "memory", "memory.stat", V1_STAT + "pgfault 30\nmapped_file 5\n")
    write(fs, cgroup, "memory", "memory.max_usage_in_bytes", "4000000\n")
    write(fs, cgroup, "memory", "memory.failcnt", "3\n")
    write(fs, cgroup, "memory", "memory.oom_control", "oom_kill_disable 0\noom_kill 2\n")
    write(fs, cgroup, "pids", "pids.current", "6\n")
    write(fs, cgroup, "pids", "pids.max", "max\n")
    reader = UsageReader(fs)
    plain = reader.cgroup("d", cgroup)
    assert plain is not None and plain.detail is None  # only when asked for
    usage = reader.cgroup("d", cgroup, detailed=True)
    assert usage is not None and usage.detail is not None
    d = usage.detail
    assert (d.user_ns, d.system_ns) == (3_000_000_000, 2_000_000_000)
    assert (d.cfs_periods, d.cfs_throttled_periods, d.cfs_throttled_ns) == (10, 4, 900)
    assert (d.cache_bytes, d.mapped_file_bytes) == (1048576, 5)
    assert (d.max_usage_bytes, d.failcnt, d.oom_kills) == (4000000, 3, 2)
    assert (d.pgfault, d.hierarchy_pgfault, d.hierarchy_pgmajfault) == (30, 300, 2)
    assert (d.threads, d.threads_max) == (6, 0)  # "max": no limit
    assert d.kernel_bytes == 0 and d.io == ()  # no kmem file, no blkio controller here


def test_blkio_and_io_stat_parsing() -> None:
    v1 = parse_v1_blkio(
        "8:0 Read 4096\n8:0 Write 8192\n8:0 Sync 1\n8:0 Total 12288\nTotal 12288\n",
        "8:0 Read 1\n8:0 Write 2\nTotal 3\n",
    )
    assert v1 == (DeviceIo(8, 0, read_bytes=4096, write_bytes=8192, reads=1, writes=2),)
    v2 = parse_v2_io_stat("259:0 rbytes=10 wbytes=20 rios=1 wios=2 dbytes=0 dios=0\n")
    assert v2 == (DeviceIo(259, 0, read_bytes=10, write_bytes=20, reads=1, writes=2),)
