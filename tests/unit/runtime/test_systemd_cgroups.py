"""The systemd cgroup driver against a fake systemd (a recording `SystemdClient` that makes
and removes unit cgroups in a fake v2 tree as systemd would): which units it starts with
which properties, the holder process that keeps a scope until removal, updates all
or nothing, removal leaving nothing, the shims' scope. No root, no D-Bus."""

from __future__ import annotations

import dataclasses
import os
import threading
import time
from collections.abc import Iterator, Sequence
from pathlib import Path
from types import SimpleNamespace
from typing import Any, cast

import pytest

from cri_py.config import parse_layers
from cri_py.errors import InvalidArgument
from cri_py.linux.cgroupfs import Cgroupfs, Hierarchy
from cri_py.linux.systemd import NO_SUCH_UNIT, UNIT_EXISTS, SystemdError
from cri_py.model.resources import Resources
from cri_py.model.sandbox import (
    NamespaceMode,
    NamespaceOptions,
    Phase,
    PodMetadata,
    SandboxConfig,
    SandboxRecord,
)
from cri_py.network.selector import NetworkSelector
from cri_py.oci.systemd import INFINITY, SHIM_SCOPE, Property, expand_slice
from cri_py.runtime.leaks import HostSnapshot, StoreSnapshot, compare
from cri_py.runtime.sandboxes import SandboxService
from cri_py.runtime.systemd_cgroups import SystemdCgroupManager, own_slice
from cri_py.store.sandboxes import SandboxStore

CID = "c0" * 32
SID = "5a" * 32


class FakeSystemd:
    """Units as systemd keeps them: name -> properties; a started unit's cgroup exists."""

    def __init__(self, root: Path) -> None:
        self.root = root
        self.units: dict[str, dict[str, Any]] = {}
        self.paths: dict[str, Path] = {}
        self.calls: list[tuple[str, str]] = []
        self.alive_at_start: list[bool] = []
        self.refuse_properties = False
        # Slices systemd loaded by itself for a unit started in them: active, and left so.
        self.implicit: set[str] = set()

    def version(self) -> int:
        return 252

    def _path(self, name: str, properties: dict[str, Any]) -> Path:
        if name.endswith(".slice"):
            return self.root / expand_slice(name).lstrip("/")
        return self.root / expand_slice(properties["Slice"]).lstrip("/") / name

    def start_transient_unit(self, name: str, properties: Sequence[Property]) -> None:
        self.calls.append(("start", name))
        if name in self.units:
            raise SystemdError("exists", UNIT_EXISTS)
        values = {p.name: p.value for p in properties}
        if "Slice" in values and values["Slice"] not in self.units:
            self.implicit.add(values["Slice"])
        for pid in values.get("PIDs", []):
            self.alive_at_start.append(Path(f"/proc/{pid}").exists())
        path = self._path(name, values)
        path.mkdir(parents=True, exist_ok=True)
        for ancestor in path.relative_to(self.root).parents:
            control = self.root / ancestor / "cgroup.subtree_control"
            if not control.exists():
                control.write_text("cpu memory pids")
        (path / "cgroup.procs").write_text("")
        (path / "cgroup.subtree_control").write_text("")
        self.units[name] = values
        self.paths[name] = path

    def stop_unit(self, name: str) -> bool:
        self.calls.append(("stop", name))
        if name not in self.units:
            return False
        del self.units[name]
        path = self.paths.pop(name)
        for child in path.iterdir():
            child.unlink()
        path.rmdir()
        return True

    def reset_failed_unit(self, name: str) -> None:
        self.calls.append(("reset", name))

    def set_unit_properties(self, name: str, properties: Sequence[Property]) -> None:
        self.calls.append(("set", name))
        if self.refuse_properties:
            raise SystemdError("refused", "org.freedesktop.DBus.Error.InvalidArgs")
        self.units[name].update({p.name: p.value for p in properties})

    def unit_property(self, name: str, interface: str, prop: str) -> Any:
        if name not in self.units:
            raise SystemdError("no such unit", NO_SUCH_UNIT)
        return self.units[name].get(prop, INFINITY)

    def active_state(self, name: str) -> str:
        return "active" if name in self.units or name in self.implicit else ""

    def attach_processes(self, name: str, pids: Sequence[int]) -> None:
        self.calls.append(("attach", name))
        self.units[name]["PIDs"] = [*self.units[name]["PIDs"], *pids]

    def list_units(self, patterns: Sequence[str]) -> list[tuple[str, str]]:
        return [(name, "active") for name in self.units]

    def list_unit_descriptions(self, patterns: Sequence[str]) -> list[tuple[str, str]]:
        return [(name, str(unit.get("Description", ""))) for name, unit in self.units.items()]


def command_line(pid: int) -> list[bytes]:
    """/proc/<pid>/cmdline, once it has one: Popen returns when the holder's execve has
    replaced its memory, a moment before the kernel has set its arguments up there."""
    deadline = time.monotonic() + 10
    while not (raw := Path(f"/proc/{pid}/cmdline").read_bytes()) and time.monotonic() < deadline:
        time.sleep(0.01)
    return raw.split(b"\0")


@pytest.fixture
def fake(tmp_path: Path) -> Iterator[tuple[SystemdCgroupManager, FakeSystemd]]:
    (tmp_path / "cgroup.subtree_control").write_text("")
    (tmp_path / "cgroup.controllers").write_text("cpu cpuset memory pids")
    fs = Cgroupfs([Hierarchy(str(tmp_path), "/", frozenset(), 2)])
    systemd = FakeSystemd(tmp_path)
    manager = SystemdCgroupManager(fs, systemd, default_slice="cri-py.slice")  # type: ignore[arg-type]
    yield manager, systemd
    for cgroup in list(manager._holders):  # what a test left running (no real cgroup held it)
        manager._end_holder(cgroup)


LIMITS = {"cpu": {"shares": 512, "quota": 50000, "period": 100000}, "memory": {"limit": 1 << 26}}


def test_container_scope_lives_in_the_pod_slice_kubelet_names(fake: Any) -> None:
    manager, _ = fake
    cgroup = manager.container_cgroup("kubepods-burstable-pod12_34.slice", CID, "/cri-py")
    assert cgroup == (
        "/kubepods.slice/kubepods-burstable.slice/kubepods-burstable-pod12_34.slice"
        f"/cri-py-{CID}.scope"
    )
    assert manager.container_cgroup("/test.slice", CID, "") == f"/test.slice/cri-py-{CID}.scope"
    pod = manager.pod_cgroup("/cri-py", SID)
    assert pod == f"/cri.slice/cri-py.slice/cri-py-pod_{SID}.slice"
    assert manager.container_cgroup(pod, CID, "") == f"{pod}/cri-py-{CID}.scope"
    with pytest.raises(InvalidArgument, match="not a systemd slice"):
        manager.check_parent("/kubepods/burstable/pod1234")


def test_create_starts_a_delegated_scope_held_until_removal(fake: Any) -> None:
    manager, systemd = fake
    cgroup = f"/test.slice/cri-py-{CID}.scope"
    manager.create(cgroup, LIMITS)
    unit = systemd.units[f"cri-py-{CID}.scope"]
    assert unit["Delegate"] is True and unit["Slice"] == "test.slice"
    assert unit["CPUWeight"] == 20 and unit["MemoryMax"] == 1 << 26
    assert unit["CPUQuotaPerSecUSec"] == 500_000 and unit["CPUQuotaPeriodUSec"] == 100_000
    assert systemd.alive_at_start == [True]
    # The files hold the cgroupfs translation's exact values too.
    directory = systemd.paths[f"cri-py-{CID}.scope"]
    assert (directory / "cpu.max").read_text() == "50000 100000"
    assert (directory / "memory.max").read_text() == str(1 << 26)
    (holder,) = unit["PIDs"]
    assert command_line(holder)[:2] == [
        b"cri-py-scope-holder",
        b"infinity",
    ]
    manager.remove(cgroup)
    assert not Path(f"/proc/{holder}").exists()


def test_a_refused_file_write_leaves_no_unit_and_no_holder(fake: Any) -> None:
    manager, systemd = fake
    cgroup = f"/test.slice/cri-py-{CID}.scope"
    bad = {"unified": {"memory.high": "1"}}
    # A directory where the file should be: the write fails as a kernel refusal would.
    (systemd.root / "test.slice" / f"cri-py-{CID}.scope" / "memory.high").mkdir(parents=True)
    with pytest.raises(OSError):
        manager.create(cgroup, bad)
    assert systemd.units == {}
    assert ("stop", f"cri-py-{CID}.scope") in systemd.calls
    assert manager._holders == {}


def test_update_sets_properties_then_files_and_undoes_both_on_refusal(fake: Any) -> None:
    manager, systemd = fake
    cgroup = f"/test.slice/cri-py-{CID}.scope"
    manager.create(cgroup, LIMITS)
    manager.update(cgroup, {"memory": {"limit": 1 << 27}})
    assert systemd.units[f"cri-py-{CID}.scope"]["MemoryMax"] == 1 << 27
    directory = systemd.paths[f"cri-py-{CID}.scope"]
    assert (directory / "memory.max").read_text() == str(1 << 27)
    (directory / "pids.max").mkdir()  # the kernel refuses this one
    with pytest.raises(OSError):
        manager.update(cgroup, {"memory": {"limit": 1 << 28}, "pids": {"limit": 10}})
    assert systemd.units[f"cri-py-{CID}.scope"]["MemoryMax"] == 1 << 27
    assert systemd.units[f"cri-py-{CID}.scope"]["TasksMax"] == INFINITY
    assert (directory / "memory.max").read_text() == str(1 << 27)


def test_update_refused_by_systemd_changes_no_file(fake: Any) -> None:
    manager, systemd = fake
    cgroup = f"/test.slice/cri-py-{CID}.scope"
    manager.create(cgroup, LIMITS)
    systemd.refuse_properties = True
    with pytest.raises(InvalidArgument):
        manager.update(cgroup, {"memory": {"limit": 1 << 27}})
    directory = systemd.paths[f"cri-py-{CID}.scope"]
    assert (directory / "memory.max").read_text() == str(1 << 26)


def test_update_of_a_gone_unit_says_so(fake: Any) -> None:
    manager, _ = fake
    with pytest.raises(FileNotFoundError):
        manager.update(f"/test.slice/cri-py-{CID}.scope", LIMITS)


def test_remove_stops_the_unit_and_leaves_nothing(fake: Any) -> None:
    manager, systemd = fake
    cgroup = f"/test.slice/cri-py-{CID}.scope"
    manager.create(cgroup, LIMITS)
    manager.remove(cgroup)
    assert systemd.units == {}
    assert not (systemd.root / "test.slice" / f"cri-py-{CID}.scope").exists()
    assert manager._holders == {}


def test_a_pod_without_parent_gets_a_slice_with_its_limits(fake: Any) -> None:
    manager, systemd = fake
    pod = manager.pod_cgroup("/cri-py", SID)
    manager.create(pod, LIMITS)
    unit = systemd.units[f"cri-py-pod_{SID}.slice"]
    assert "PIDs" not in unit and unit["MemoryMax"] == 1 << 26
    manager.remove(pod)
    assert systemd.units == {}


def test_only_cri_py_units_are_made_or_removed(fake: Any) -> None:
    manager, systemd = fake
    with pytest.raises(InvalidArgument):
        manager.remove("/kubepods.slice/kubepods-burstable.slice")
    with pytest.raises(InvalidArgument):
        manager.create("/system.slice/ssh.service", {})
    assert systemd.calls == []


def test_a_leftover_unit_of_the_same_name_is_replaced(fake: Any) -> None:
    manager, systemd = fake
    pod = manager.pod_cgroup("", SID)
    manager.create(pod, {})
    manager.create(pod, LIMITS)
    assert systemd.units[f"cri-py-pod_{SID}.slice"]["MemoryMax"] == 1 << 26
    assert [c for c in systemd.calls if c[0] in ("start", "stop")] == [
        ("start", f"cri-py-pod_{SID}.slice"),
        ("start", f"cri-py-pod_{SID}.slice"),
        ("stop", f"cri-py-pod_{SID}.slice"),
        ("start", f"cri-py-pod_{SID}.slice"),
    ]


def test_shims_share_one_scope_in_the_daemons_slice(fake: Any) -> None:
    manager, systemd = fake
    manager.join_shim_cgroup("/cri-py-shims", os.getpid())
    manager.join_shim_cgroup("/cri-py-shims", 1)
    assert systemd.units[SHIM_SCOPE]["PIDs"] == [os.getpid(), 1]
    assert systemd.units[SHIM_SCOPE]["Delegate"] is False
    assert ("attach", SHIM_SCOPE) in systemd.calls


def test_own_slice_reads_the_daemons_unit() -> None:
    assert own_slice("0::/system.slice/cri-py.service\n") == "system.slice"
    assert own_slice("1:name=systemd:/user.slice/user-0.slice/session-3.scope\n") == "user-0.slice"
    assert own_slice("0::/init.scope\n") == "system.slice"


def test_a_unit_no_record_names_is_a_leak() -> None:
    host = HostSnapshot(units=frozenset({f"cri-py-{CID}.scope", f"cri-py-pod_{SID}.slice"}))
    leaks = compare(host, StoreSnapshot())
    assert {(leak.kind, leak.path) for leak in leaks} == {
        ("unit", f"cri-py-pod_{SID}.slice"),
        ("unit", f"cri-py-{CID}.scope"),
    }


# --- the parent slice a sandbox names, when systemd has none --------------------------------

SID2 = "6b" * 32


def _starts_and_stops(systemd: FakeSystemd, unit: str) -> list[str]:
    return [kind for kind, name in systemd.calls if name == unit and kind in ("start", "stop")]


def test_a_missing_parent_slice_is_made_with_the_pods_limits_and_removed_by_its_pod(
    fake: Any,
) -> None:
    manager, systemd = fake
    assert manager.make_parent("/test.slice", LIMITS, SID) == "test.slice"
    unit = systemd.units["test.slice"]
    assert unit["Description"] == "cri-py pod parent slice test.slice"
    assert "PIDs" not in unit and "Slice" not in unit
    assert unit["MemoryMax"] == 1 << 26 and unit["CPUWeight"] == 20
    assert unit["CPUQuotaPerSecUSec"] == 500_000
    directory = systemd.root / "test.slice"
    assert (directory / "cpu.max").read_text() == "50000 100000"
    assert (directory / "memory.max").read_text() == str(1 << 26)
    # Its containers' scopes go in it; once they and the pod are gone, so is the slice.
    scope = manager.container_cgroup("/test.slice", CID, "")
    manager.create(scope, {})
    manager.remove(scope)
    manager.release_parent("test.slice", SID)
    assert systemd.units == {} and not directory.exists()
    assert _starts_and_stops(systemd, "test.slice") == ["start", "stop"]


def test_a_slice_that_exists_is_kubelets_and_never_touched(fake: Any) -> None:
    manager, systemd = fake
    # kubelet made its pod slice with the pod's limits before RunPodSandbox.
    kubelet = "kubepods-besteffort-pod12_34.slice"
    systemd.start_transient_unit(kubelet, [Property("MemoryMax", "t", 1 << 30)])
    # And a slice systemd loaded by itself when a unit started in it (someone else's).
    systemd.start_transient_unit(
        "other.scope", [Property("Slice", "s", "implicit.slice"), Property("PIDs", "au", [])]
    )
    systemd.calls.clear()
    assert manager.make_parent(kubelet, LIMITS, SID) == ""
    assert manager.make_parent("implicit.slice", LIMITS, SID) == ""
    assert systemd.calls == []
    assert systemd.units[kubelet]["MemoryMax"] == 1 << 30
    # A slice named by a record that cri-py did not make is never released either: the
    # sandbox service records only what make_parent returned; system slices are refused.
    assert manager.make_parent("-.slice", LIMITS, SID) == ""
    assert manager.make_parent(f"cri-py-pod_{SID}.slice", LIMITS, SID) == ""


@pytest.mark.parametrize("first", [SID, SID2])
def test_a_made_slice_shared_by_two_pods_goes_with_the_last_one(fake: Any, first: str) -> None:
    manager, systemd = fake
    assert manager.make_parent("/test.slice", LIMITS, SID) == "test.slice"
    # critest gives every pod the same parent: the second pod uses the slice made for the first.
    assert manager.make_parent("/test.slice", {"memory": {"limit": 1 << 20}}, SID2) == "test.slice"
    assert _starts_and_stops(systemd, "test.slice") == ["start"]
    assert systemd.units["test.slice"]["MemoryMax"] == 1 << 26
    second = SID2 if first == SID else SID
    manager.release_parent("test.slice", first)
    assert "test.slice" in systemd.units
    manager.release_parent("test.slice", second)
    assert "test.slice" not in systemd.units
    assert not (systemd.root / "test.slice").exists()
    manager.release_parent("test.slice", second)  # a repeated RemovePodSandbox
    assert _starts_and_stops(systemd, "test.slice") == ["start", "stop"]


def test_a_made_slice_with_someone_elses_unit_in_it_is_left(fake: Any) -> None:
    manager, systemd = fake
    manager.make_parent("/test.slice", LIMITS, SID)
    systemd.start_transient_unit(
        "foreign.scope", [Property("Slice", "s", "test.slice"), Property("PIDs", "au", [])]
    )
    manager.release_parent("test.slice", SID)
    assert "test.slice" in systemd.units and "foreign.scope" in systemd.units
    assert _starts_and_stops(systemd, "test.slice") == ["start"]


def test_a_made_slice_takes_the_pods_new_limits(fake: Any) -> None:
    manager, systemd = fake
    made = manager.make_parent("/test.slice", LIMITS, SID)
    manager.update(manager.parent_cgroup(made), {"memory": {"limit": 1 << 27}})
    assert systemd.units["test.slice"]["MemoryMax"] == 1 << 27
    assert (systemd.root / "test.slice" / "memory.max").read_text() == str(1 << 27)


def test_a_failed_leftover_is_reset_and_made_again(fake: Any) -> None:
    manager, systemd = fake
    systemd.active_state = lambda name: "failed" if name == "test.slice" else ""
    assert manager.make_parent("/test.slice", LIMITS, SID) == "test.slice"
    assert ("reset", "test.slice") in systemd.calls


def test_a_slice_with_a_unit_file_is_left_to_systemd(fake: Any) -> None:
    manager, systemd = fake

    def exists(name: str, properties: Sequence[Property]) -> None:
        raise SystemdError("unit exists", UNIT_EXISTS)

    systemd.start_transient_unit = exists
    assert manager.make_parent("/test.slice", LIMITS, SID) == ""
    assert manager._made == {}  # not cri-py's: no pod records it, none releases it


def test_after_a_restart_the_recorded_users_keep_the_slice(fake: Any, tmp_path: Path) -> None:
    manager, systemd = fake
    manager.make_parent("/test.slice", LIMITS, SID)
    manager.make_parent("/test.slice", LIMITS, SID2)
    # The daemon restarts: a new manager learns the users from the sandbox records.
    fs = Cgroupfs([Hierarchy(str(tmp_path), "/", frozenset(), 2)])
    again = SystemdCgroupManager(fs, systemd)  # type: ignore[arg-type]
    again.adopt_parent("test.slice", SID)
    again.adopt_parent("test.slice", SID2)
    assert again.make_parent("/test.slice", LIMITS, "7c" * 32) == "test.slice"
    again.release_parent("test.slice", SID)
    again.release_parent("test.slice", "7c" * 32)
    assert "test.slice" in systemd.units
    again.release_parent("test.slice", SID2)
    assert "test.slice" not in systemd.units


def test_a_made_slice_no_record_names_is_a_leak() -> None:
    host = HostSnapshot(parent_slices=frozenset({"test.slice", "critest.slice"}))
    record = SandboxRecord(
        SID,
        SandboxConfig(PodMetadata("p", "u", "ns"), cgroup_parent="/test.slice"),
        0,
        made_parent="test.slice",
    )
    leaks = compare(host, StoreSnapshot(sandboxes={SID: record}))
    assert [(leak.kind, leak.path) for leak in leaks] == [("unit", "critest.slice")]


def test_the_sandbox_service_recovers_updates_and_releases_made_slices(
    fake: Any, tmp_path: Path
) -> None:
    """Through SandboxService: after a restart the records name the users of the slice; a
    half-built pod rolled back leaves it to the others; the update sizes it; the last
    RemovePodSandbox stops it."""
    manager, systemd = fake
    config = parse_layers(
        [("test", {"root_dir": str(tmp_path / "root"), "run_dir": str(tmp_path / "run")})]
    )
    store = SandboxStore(tmp_path / "root" / "sandboxes")
    made = manager.make_parent("/test.slice", LIMITS, SID)
    node = NamespaceOptions(
        network=NamespaceMode.NODE, pid=NamespaceMode.NODE, ipc=NamespaceMode.NODE
    )
    pod = SandboxConfig(PodMetadata("p", "u", "ns"), namespaces=node, cgroup_parent="/test.slice")
    half = "7c" * 32
    for sandbox_id, phase in ((SID, Phase.CREATED), (SID2, Phase.STOPPED), (half, Phase.CREATING)):
        metadata = PodMetadata(sandbox_id[:8], sandbox_id, "ns")
        record = SandboxRecord(
            sandbox_id,
            dataclasses.replace(pod, metadata=metadata),
            0,
            phase=phase,
            network="",
            made_parent=made,
        )
        store.save(record)
    # The daemon restarts: a new manager, which knows the users from the records only.
    restarted = SystemdCgroupManager(manager.fs, systemd)  # type: ignore[arg-type]
    network = SimpleNamespace(allocations=SimpleNamespace(owned=dict))  # host-network pods
    service = SandboxService(config, cast(NetworkSelector, network), cgroups=restarted)
    service.recover()
    assert "test.slice" in systemd.units  # the half-built pod was not its last user
    service.update_resources(SID, Resources(memory_limit_in_bytes=1 << 27), Resources())
    assert systemd.units["test.slice"]["MemoryMax"] == 1 << 27
    assert (systemd.root / "test.slice" / "memory.max").read_text() == str(1 << 27)
    service.remove(SID)
    assert "test.slice" in systemd.units
    service.remove(SID2)
    assert "test.slice" not in systemd.units
    assert store.load_all() == []


def test_a_child_systemd_is_still_removing_does_not_keep_the_slice(fake: Any) -> None:
    manager, systemd = fake
    manager.make_parent("/test.slice", LIMITS, SID)
    dying = systemd.root / "test.slice" / f"cri-py-{CID}.scope"
    dying.mkdir()
    threading.Timer(0.2, dying.rmdir).start()
    manager.release_parent("test.slice", SID)
    assert "test.slice" not in systemd.units
