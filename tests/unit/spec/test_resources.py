"""CRI resources -> `linux.resources`: the node's part, an update's merge, what an update keeps."""

from __future__ import annotations

from cri_py.model.resources import CgroupSupport, Resources
from cri_py.spec.resources import (
    linux_resources,
    merge_resources,
    unapplied_hugepage_limits,
    updated_linux_resources,
)

KUBELET = Resources(
    cpu_shares=512,
    cpu_quota=50_000,
    cpu_period=100_000,
    memory_limit_in_bytes=64 << 20,
    hugepage_limits={"2MB": 0, "1GB": 0},
)
DEVICES = [{"allow": False, "access": "rwm"}, {"allow": True, "type": "c", "access": "m"}]


def test_the_configured_pids_limit_is_in_the_spec() -> None:
    oci = linux_resources(KUBELET, CgroupSupport(pids_limit=4096))
    assert oci["pids"] == {"limit": 4096}
    assert "pids" not in linux_resources(KUBELET, CgroupSupport())


def test_no_hugetlb_controller_no_huge_page_limits_in_the_spec() -> None:
    assert "hugepageLimits" not in linux_resources(KUBELET, CgroupSupport(hugetlb=False))
    assert linux_resources(KUBELET, CgroupSupport())["hugepageLimits"] == [
        {"pageSize": "1GB", "limit": 0},
        {"pageSize": "2MB", "limit": 0},
    ]


def test_only_asked_for_huge_page_limits_are_reported_as_unapplied() -> None:
    # kubelet's zero limits for every page size the kernel has are not worth a warning.
    asked = Resources(hugepage_limits={"2MB": 4 << 20, "1GB": 0})
    assert unapplied_hugepage_limits(asked, CgroupSupport(hugetlb=False)) == {"2MB": 4 << 20}
    assert unapplied_hugepage_limits(KUBELET, CgroupSupport(hugetlb=False)) == {}
    assert unapplied_hugepage_limits(asked, CgroupSupport()) == {}


def test_kubelets_period_without_quota_removes_the_cpu_limit() -> None:
    # kubelet resizes with the full resources: quota 0 and period 100000 is "no CPU limit",
    # which the cgroup got before too (cpu.cfs_quota_us -1); the record and spec now agree.
    update = Resources(cpu_shares=1024, cpu_quota=0, cpu_period=100_000)
    merged = merge_resources(KUBELET, update)
    assert (merged.cpu_quota, merged.cpu_period) == (0, 100_000)
    assert linux_resources(merged)["cpu"] == {"shares": 1024, "period": 100_000}
    # crictl update --cpu-share alone leaves the quota (the other fields: test_containers.py).
    assert merge_resources(KUBELET, Resources(cpu_shares=2)).cpu_quota == 50_000


def test_an_update_keeps_the_created_pids_limit_and_device_rules() -> None:
    stored = {
        **linux_resources(KUBELET, CgroupSupport(pids_limit=1024)),
        "devices": DEVICES,
    }
    merged = merge_resources(KUBELET, Resources(memory_limit_in_bytes=128 << 20))
    # The node's pids setting now differs (a restart with a new config): the container keeps
    # the limit it was created with; the CRI cannot change it, nor the devices.
    updated = updated_linux_resources(stored, merged, CgroupSupport(pids_limit=99))
    assert updated["memory"] == {"limit": 128 << 20}
    assert updated["cpu"] == stored["cpu"]
    assert updated["pids"] == {"limit": 1024}
    assert updated["devices"] == DEVICES
    assert "pids" not in updated_linux_resources({}, merged, CgroupSupport(pids_limit=99))
