"""Pod-level limits: the containers' sum plus the pod overhead, on both cgroup versions."""

from __future__ import annotations

from cri_py.model.resources import Resources
from cri_py.oci.cgroups import Write
from cri_py.oci.cgroups import v1_writes as v1_oci
from cri_py.oci.cgroups import v2_writes as v2_oci
from cri_py.spec.resources import linux_resources, pod_resources


def v1_writes(r: Resources) -> list[Write]:
    return v1_oci(linux_resources(r))


def v2_writes(r: Resources) -> list[Write]:
    return v2_oci(linux_resources(r))


# kubelet's sandbox `resources` for a pod of two containers at 250m / 32Mi each, and a
# RuntimeClass overhead of 100m / 16Mi.
SUM = Resources(
    cpu_shares=512, cpu_quota=50_000, cpu_period=100_000, memory_limit_in_bytes=64 << 20
)
OVERHEAD = Resources(
    cpu_shares=102, cpu_quota=10_000, cpu_period=100_000, memory_limit_in_bytes=16 << 20
)


def test_overhead_adds_to_every_limit() -> None:
    pod = pod_resources(SUM, OVERHEAD)
    assert (pod.cpu_shares, pod.cpu_quota, pod.cpu_period) == (614, 60_000, 100_000)
    assert pod.memory_limit_in_bytes == 80 << 20


def test_pod_limits_as_v1_and_v2_files() -> None:
    pod = pod_resources(SUM, OVERHEAD)
    assert v1_writes(pod) == [
        Write("cpu", "cpu.shares", "614"),
        Write("cpu", "cpu.cfs_period_us", "100000"),
        Write("cpu", "cpu.cfs_quota_us", "60000"),
        Write("memory", "memory.limit_in_bytes", str(80 << 20)),
    ]
    assert v2_writes(pod) == [
        Write("", "cpu.weight", "24"),
        Write("", "cpu.max", "60000 100000"),
        Write("", "memory.max", str(80 << 20)),
    ]


def test_an_unlimited_sum_stays_unlimited_whatever_the_overhead() -> None:
    pod = pod_resources(Resources(cpu_shares=2), OVERHEAD)
    assert pod.cpu_quota == 0 and pod.memory_limit_in_bytes == 0
    assert v1_writes(pod) == [Write("cpu", "cpu.shares", "104")]


def test_overhead_quota_is_scaled_to_the_pods_period() -> None:
    pod = pod_resources(
        Resources(cpu_quota=25_000, cpu_period=50_000),
        Resources(cpu_quota=10_000, cpu_period=100_000),
    )
    assert (pod.cpu_quota, pod.cpu_period) == (30_000, 50_000)


def test_nothing_asked_writes_nothing() -> None:
    assert v1_writes(pod_resources(Resources(), Resources())) == []
    assert v2_writes(pod_resources(Resources(), OVERHEAD)) == []
