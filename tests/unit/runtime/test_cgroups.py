"""Which nodes can enforce a container's device rules (`device_rules_problem`), and the
container cgroup's one source of truth: the spec's `linux.resources`, written to config.json
and applied to the cgroup as is, at create and at UpdateContainerResources (fake v1 and v2
trees, no root)."""

from __future__ import annotations

import dataclasses
import errno
import json
from pathlib import Path
from typing import Any

import pytest

from cri_py.errors import FailedPrecondition, InvalidArgument
from cri_py.linux.cgroupfs import Cgroupfs, CgroupMode, Hierarchy
from cri_py.model.resources import CgroupSupport, Resources
from cri_py.oci.cgroups import shares_to_weight
from cri_py.runtime.cgroups import CgroupManager, device_rules_problem, update_container_resources
from cri_py.spec.build import SpecInputs, build_spec
from cri_py.spec.resources import linux_resources
from cri_py.store.atomic import write_json_atomic
from cri_py.store.codec import from_data


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


# --- one source of truth: the spec's linux.resources is what the cgroup gets ----------------

SPEC_REQUEST = (
    Path(__file__).parents[1] / "spec" / "golden" / "devices_with_cgroup_rules.request.json"
)
CGROUP = "/kubepods/pod1/cri-py-c1"


def fake_tree(root: Path, version: int, *v1_controllers: str) -> Cgroupfs:
    """A directory tree that looks enough like v1 hierarchies or a v2 mount for cgroup I/O."""
    root.mkdir(exist_ok=True)
    if version == 2:
        (root / "cgroup.subtree_control").write_text("")
        (root / "cgroup.controllers").write_text("cpu cpuset memory pids")
        for directory in (root / "kubepods", root / "kubepods" / "pod1"):
            directory.mkdir()
            (directory / "cgroup.subtree_control").write_text("")
        return Cgroupfs([Hierarchy(str(root), "/", frozenset(), 2)])
    hierarchies = []
    for name in v1_controllers:
        (root / name).mkdir()
        hierarchies.append(Hierarchy(str(root / name), "/", frozenset({name}), 1))
    return Cgroupfs(hierarchies)


def applied(fs: Cgroupfs) -> dict[str, int]:
    """The container cgroup's limits as read from its files, in OCI terms."""
    if fs.mode == CgroupMode.V2:
        quota, period = fs.read(CGROUP, "", "cpu.max").split()
        return {
            "cpu.weight": int(fs.read(CGROUP, "", "cpu.weight")),
            "cpu.quota": -1 if quota == "max" else int(quota),
            "cpu.period": int(period),
            "memory.limit": int(fs.read(CGROUP, "", "memory.max")),
            "pids.limit": int(fs.read(CGROUP, "", "pids.max")),
        }
    return {
        "cpu.weight": shares_to_weight(int(fs.read(CGROUP, "cpu", "cpu.shares"))),
        "cpu.quota": int(fs.read(CGROUP, "cpu", "cpu.cfs_quota_us")),
        "cpu.period": int(fs.read(CGROUP, "cpu", "cpu.cfs_period_us")),
        "memory.limit": int(fs.read(CGROUP, "memory", "memory.limit_in_bytes")),
        "pids.limit": int(fs.read(CGROUP, "pids", "pids.max")),
    }


def written(bundle: Path) -> dict[str, Any]:
    resources: dict[str, Any] = json.loads((bundle / "config.json").read_text())["linux"][
        "resources"
    ]
    return resources


def as_applied(resources: dict[str, Any]) -> dict[str, int]:
    """What a cgroup holding `resources` reads back as (a missing quota is "no limit")."""
    return {
        "cpu.weight": shares_to_weight(resources["cpu"]["shares"]),
        "cpu.quota": resources["cpu"].get("quota", -1),
        "cpu.period": resources["cpu"]["period"],
        "memory.limit": resources["memory"]["limit"],
        "pids.limit": resources["pids"]["limit"],
    }


def create_container(
    tmp_path: Path, fs: Cgroupfs, monkeypatch: pytest.MonkeyPatch
) -> tuple[CgroupManager, SpecInputs, Path, list[Any]]:
    """build_spec -> config.json -> the cgroup, as CreateContainer does them. The v2 device
    program is recorded instead of loaded (that needs root and a real cgroup)."""
    attached: list[Any] = []
    monkeypatch.setattr(
        "cri_py.runtime.cgroups.attach_device_filter",
        lambda directory, rules: attached.append(rules),
    )
    manager = CgroupManager(fs, pids_limit=1024)
    inputs = dataclasses.replace(
        from_data(SpecInputs, json.loads(SPEC_REQUEST.read_text())),
        cgroups_path=CGROUP,
        cgroup_support=manager.support,
    )
    spec = build_spec(inputs)
    bundle = tmp_path / "bundle"
    bundle.mkdir()
    write_json_atomic(bundle / "config.json", spec)
    manager.create(CGROUP, spec["linux"]["resources"])
    return manager, inputs, bundle, attached


@pytest.mark.parametrize("version", [1, 2])
def test_config_json_and_the_cgroup_agree_after_create_and_after_an_update(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch, version: int
) -> None:
    fs = fake_tree(tmp_path / "cg", version, "cpu", "memory", "pids", "devices")
    manager, inputs, bundle, attached = create_container(tmp_path, fs, monkeypatch)
    created = written(bundle)
    # kubelet's 500m / 64Mi, and the config's pids limit: in config.json and in the cgroup.
    assert (
        applied(fs)
        == as_applied(created)
        == {
            "cpu.weight": 20,
            "cpu.quota": 50_000,
            "cpu.period": 100_000,
            "memory.limit": 64 << 20,
            "pids.limit": 1024,
        }
    )
    if version == 2:
        assert attached == [created["devices"]]
    else:
        assert fs.read(CGROUP, "devices", "devices.deny") == "a *:* rwm"
        last = created["devices"][-1]
        assert fs.read(CGROUP, "devices", "devices.allow") == (
            f"{last['type']} {last['major']}:{last['minor']} {last['access']}"
        )

    update = Resources(cpu_quota=20_000, cpu_period=100_000, memory_limit_in_bytes=128 << 20)
    merged = update_container_resources(manager, CGROUP, bundle, inputs.config.resources, update)
    updated = written(bundle)
    assert (
        applied(fs)
        == as_applied(updated)
        == {
            "cpu.weight": 20,
            "cpu.quota": 20_000,
            "cpu.period": 100_000,
            "memory.limit": 128 << 20,
            "pids.limit": 1024,
        }
    )
    assert merged.memory_limit_in_bytes == 128 << 20 and merged.cpu_shares == 512
    assert updated["devices"] == created["devices"]
    assert len(attached) == (1 if version == 2 else 0)  # device rules are not re-applied

    # kubelet taking the CPU limit away: quota 0 with its period. Both say "no limit".
    no_limit = Resources(cpu_shares=512, cpu_quota=0, cpu_period=100_000)
    update_container_resources(manager, CGROUP, bundle, merged, no_limit)
    assert "quota" not in written(bundle)["cpu"]
    assert applied(fs)["cpu.quota"] == -1 == as_applied(written(bundle))["cpu.quota"]


@pytest.mark.parametrize("version", [1, 2])
def test_an_update_the_kernel_refuses_changes_neither_config_json_nor_the_cgroup(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch, version: int
) -> None:
    fs = fake_tree(tmp_path / "cg", version, "cpu", "memory", "pids", "devices")
    manager, inputs, bundle, _ = create_container(tmp_path, fs, monkeypatch)
    before_spec, before_cgroup = written(bundle), applied(fs)
    real_write = Cgroupfs.write

    def kernel_write(self: Cgroupfs, cgroup: str, writes: Any) -> None:
        writes = list(writes)
        if any(w.file.startswith("memory.") and w.value == str(8 << 20) for w in writes):
            raise OSError(errno.EBUSY, "memory in use above the new limit")
        real_write(self, cgroup, writes)

    monkeypatch.setattr(Cgroupfs, "write", kernel_write)
    shrink = Resources(cpu_quota=20_000, memory_limit_in_bytes=8 << 20)
    with pytest.raises(InvalidArgument):
        update_container_resources(manager, CGROUP, bundle, inputs.config.resources, shrink)
    assert written(bundle) == before_spec
    assert applied(fs) == before_cgroup


def test_no_hugetlb_controller_means_no_huge_page_limits_written_or_in_the_spec(
    tmp_path: Path,
) -> None:
    fs = fake_tree(tmp_path, 1, "cpu", "memory", "pids")
    manager = CgroupManager(fs)
    assert not manager.support.hugetlb
    kubelet = Resources(memory_limit_in_bytes=64 << 20, hugepage_limits={"2MB": 0, "1GB": 0})
    resources = linux_resources(kubelet, manager.support)
    assert "hugepageLimits" not in resources
    manager.create(CGROUP, resources)
    assert fs.read(CGROUP, "memory", "memory.limit_in_bytes") == str(64 << 20)
    assert not list(tmp_path.rglob("hugetlb.*"))
    # A spec that carries them anyway was not written for this node: refused, not half-applied.
    with pytest.raises(FailedPrecondition, match="hugetlb"):
        manager.create(CGROUP + "x", linux_resources(kubelet))


def test_a_hugetlb_controller_gets_the_specs_huge_page_limits(tmp_path: Path) -> None:
    fs = fake_tree(tmp_path, 1, "memory", "hugetlb")
    manager = CgroupManager(fs)
    resources = linux_resources(Resources(hugepage_limits={"2MB": 4 << 20}), manager.support)
    manager.create(CGROUP, resources)
    assert resources["hugepageLimits"] == [{"pageSize": "2MB", "limit": 4 << 20}]
    assert fs.read(CGROUP, "hugetlb", "hugetlb.2MB.limit_in_bytes") == str(4 << 20)


def test_a_v2_node_without_hugetlb_leaves_kubelets_limits_out(tmp_path: Path) -> None:
    # kubelet sends them for every page size the kernel has; the controller may not exist.
    manager = CgroupManager(fake_tree(tmp_path, 2))
    assert manager.support == CgroupSupport(pids_limit=0, hugetlb=False)
    (tmp_path / "cgroup.controllers").write_text("cpu memory hugetlb pids")
    assert CgroupManager(manager.fs).support.hugetlb


def test_a_setup_process_moves_itself_by_the_v1_tasks_files_and_the_v2_procs_file() -> None:
    # v1: "0" in `tasks` moves the (single-threaded) setup process without the kernel's
    # threadgroup lock, which made every CreateContainer wait an RCU grace period.
    hybrid = manager(v1("cpu"), v1("memory"))
    assert hybrid.procs_files("/kubepods/c1") == [
        "/sys/fs/cgroup/cpu/kubepods/c1/tasks",
        "/sys/fs/cgroup/memory/kubepods/c1/tasks",
    ]
    unified = manager(Hierarchy("/sys/fs/cgroup", "/", frozenset(), 2))
    assert unified.procs_files("/kubepods/c1") == ["/sys/fs/cgroup/kubepods/c1/cgroup.procs"]
