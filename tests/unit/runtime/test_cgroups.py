"""Which nodes can enforce a container's device rules (`device_rules_problem`)."""

from __future__ import annotations

from cri_py.linux.cgroupfs import Cgroupfs, Hierarchy
from cri_py.runtime.cgroups import CgroupManager, device_rules_problem


def manager(*hierarchies: Hierarchy) -> CgroupManager:
    return CgroupManager(Cgroupfs(list(hierarchies)))


def v1(name: str) -> Hierarchy:
    return Hierarchy(f"/sys/fs/cgroup/{name}", "/", frozenset({name}), 1)


def test_cgroup_v1_with_the_devices_controller_enforces_them() -> None:
    assert device_rules_problem(manager(v1("memory"), v1("devices"))) == ""


def test_cgroup_v2_enforces_them_with_a_bpf_program() -> None:
    assert device_rules_problem(manager(Hierarchy("/sys/fs/cgroup", "/", frozenset(), 2))) == ""


def test_cgroup_v1_or_hybrid_without_the_devices_controller_cannot() -> None:
    assert "no devices controller" in device_rules_problem(manager(v1("memory"), v1("pids")))
    hybrid = manager(v1("memory"), Hierarchy("/sys/fs/cgroup/unified", "/", frozenset(), 2))
    assert "cgroup hybrid" in device_rules_problem(hybrid)


def test_no_cgroups_at_all_cannot() -> None:
    assert "no cgroup hierarchy" in device_rules_problem(None)
