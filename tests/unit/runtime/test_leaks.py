"""The leak checker's pure core: host snapshot vs store snapshot."""

from __future__ import annotations

import dataclasses
from pathlib import Path

import pytest

from cri_py.cli import main
from cri_py.model.container import ContainerConfig, ContainerMetadata, ContainerRecord
from cri_py.model.sandbox import Phase, PodMetadata, SandboxConfig, SandboxRecord, ShimInfo
from cri_py.runtime.leaks import HostSnapshot, Leak, StoreSnapshot, compare

S1 = "a" * 64
S2 = "b" * 64
C1 = "c" * 64
RUN = "/run/t/sandboxes"


def sandbox(sandbox_id: str, phase: Phase = Phase.CREATED, pid: int = 100) -> SandboxRecord:
    return SandboxRecord(
        id=sandbox_id,
        config=SandboxConfig(PodMetadata("p", "u", "ns")),
        created_at=1,
        phase=phase,
        shim=ShimInfo(pid, 1, pid + 1),
        namespaces={"net": f"{RUN}/{sandbox_id}/ns/net"},
        shm_path=f"{RUN}/{sandbox_id}/shm",
    )


def container(container_id: str, sandbox_id: str) -> ContainerRecord:
    return ContainerRecord(
        id=container_id,
        sandbox_id=sandbox_id,
        config=ContainerConfig(ContainerMetadata("c"), image="busybox"),
        created_at=1,
        image_id="sha256:x",
        cgroup=f"/cri-py/cri-py-{container_id}",
    )


def live_host(sandbox_id: str, pid: int = 100) -> HostSnapshot:
    """What a running sandbox with one container legitimately holds."""
    return HostSnapshot(
        mounts=frozenset({f"{RUN}/{sandbox_id}/ns/net", f"{RUN}/{sandbox_id}/shm"}),
        veths=frozenset({f"cri-py{sandbox_id[:9]}"}),
        cgroups=frozenset({f"/cri-py/cri-py-{C1}"}),
        shims={pid: sandbox_id, pid + 1: sandbox_id},
        run_dirs=frozenset({sandbox_id}),
        sandbox_dirs=frozenset({sandbox_id}),
        container_dirs=frozenset({C1}),
    )


def test_a_running_sandbox_and_its_container_are_no_leak() -> None:
    store = StoreSnapshot({S1: sandbox(S1)}, {C1: container(C1, S1)}, {"10.0.0.2": S1})
    assert compare(live_host(S1), store) == []


def test_a_starting_sandbox_accounts_for_what_it_holds_so_far() -> None:
    record = dataclasses.replace(sandbox(S1, Phase.CREATING), shim=None)
    store = StoreSnapshot({S1: record}, {C1: container(C1, S1)}, {"10.0.0.2": S1})
    assert compare(live_host(S1), store) == []


def test_everything_of_a_stopped_sandbox_but_its_dirs_is_a_leak() -> None:
    store = StoreSnapshot(
        {S1: sandbox(S1, Phase.STOPPED)}, {C1: container(C1, S1)}, {"10.0.0.2": S1}
    )
    kinds = [leak.kind for leak in compare(live_host(S1), store)]
    assert kinds == ["ip", "mount", "mount", "shim", "shim", "veth"]


def test_everything_without_a_record_is_a_leak() -> None:
    leaks = compare(live_host(S1), StoreSnapshot(allocations={"10.0.0.2": S1}))
    assert {leak.kind for leak in leaks} == {"mount", "veth", "ip", "cgroup", "shim", "dir"}
    assert Leak("dir", C1) in leaks and Leak("cgroup", f"/cri-py/cri-py-{C1}") in leaks
    assert "gone" in next(str(leak) for leak in leaks if leak.kind == "ip")


def test_a_second_shim_for_one_sandbox_is_a_leak_but_its_children_are_not() -> None:
    host = dataclasses.replace(
        live_host(S1), shims={100: S1, 101: S1, 200: S1, 555: S1}, parents={200: 100, 555: 1}
    )
    store = StoreSnapshot({S1: sandbox(S1)}, {C1: container(C1, S1)})
    assert compare(host, store) == [Leak("shim", "555")]


def test_other_links_and_cgroups_are_not_ours_to_report() -> None:
    host = HostSnapshot(
        veths=frozenset({"eth7", "cri-pyX"}), cgroups=frozenset({"/cri-py/cri-py-helper"})
    )
    assert compare(host, StoreSnapshot()) == []


def test_a_container_record_of_a_removed_sandbox_is_a_leak() -> None:
    host = HostSnapshot(container_dirs=frozenset({C1}))
    store = StoreSnapshot({S2: sandbox(S2, Phase.STOPPED)}, {C1: container(C1, S1)})
    assert compare(host, store) == [Leak("record", C1)]


def test_an_unfinished_removal_is_reported_once_not_as_its_cgroup_and_lease() -> None:
    # RemoveContainer answered, its cleanup (cgroup, lease) not done: the daemon is on it, or
    # died and its next start finishes it. Reported alone, as what it is.
    host = dataclasses.replace(live_host(S1), container_dirs=frozenset())
    store = StoreSnapshot(
        {S1: sandbox(S1)}, leases=frozenset({C1}), removing={C1: container(C1, S1)}
    )
    assert [(leak.kind, leak.path) for leak in compare(host, store)] == [("removal", C1)]


def test_a_layer_lease_without_its_container_is_a_leak() -> None:
    store = StoreSnapshot(
        {S1: sandbox(S1)},
        {C1: container(C1, S1)},
        leases=frozenset({C1, f"{C1}/image-volume/0", "d" * 64}),
    )
    assert compare(live_host(S1), store) == [Leak("lease", "d" * 64)]


def test_debug_leaks_command_prints_each_leak_and_exits_1(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    args = [
        "debug", "leaks", "--config", str(tmp_path / "none.yaml"),
        "--config-dir", str(tmp_path / "none.d"),
        "--root-dir", str(tmp_path / "root"), "--run-dir", str(tmp_path / "run"),
    ]  # fmt: skip
    assert main(args) == 0
    assert capsys.readouterr().out == "no leaks\n"
    (tmp_path / "root" / "containers" / C1).mkdir(parents=True)  # a dir with no record
    assert main(args) == 1
    assert capsys.readouterr().out == f"dir {C1}: container dir without a readable record\n"
