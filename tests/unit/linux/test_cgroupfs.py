"""Finding cgroup hierarchies and doing cgroup I/O, against fake cgroup trees (no root)."""

from __future__ import annotations

import os
from pathlib import Path
from typing import Any

import pytest

from cri_py.errors import InvalidArgument
from cri_py.linux.cgroupfs import Cgroupfs, CgroupMode, Hierarchy, parse_mountinfo
from cri_py.model.resources import Resources
from cri_py.oci.cgroups import v2_writes
from cri_py.runtime.cgroups import CgroupManager, container_cgroup
from cri_py.spec.resources import linux_resources

# What our CI machines show: v1 controllers plus an empty cgroup2 mount (hybrid).
HYBRID = """\
31 23 0:28 / /sys/fs/cgroup rw,relatime - tmpfs tmpfs rw,mode=755
32 31 0:29 / /sys/fs/cgroup/cpu rw,relatime - cgroup cgroup rw,cpu
33 31 0:30 / /sys/fs/cgroup/cpuacct rw,relatime - cgroup cgroup rw,cpuacct
34 31 0:31 / /sys/fs/cgroup/cpuset rw,relatime - cgroup cgroup rw,cpuset,clone_children
35 31 0:32 / /sys/fs/cgroup/memory rw,relatime - cgroup cgroup rw,memory
39 31 0:36 / /sys/fs/cgroup/pids rw,relatime - cgroup cgroup rw,pids
40 31 0:37 / /sys/fs/cgroup/systemd rw,relatime - cgroup cgroup rw,xattr,name=systemd
41 31 0:38 / /sys/fs/cgroup/unified rw,relatime - cgroup2 cgroup2 rw
"""
V2 = "29 23 0:26 / /sys/fs/cgroup rw,nosuid - cgroup2 cgroup2 rw,nsdelegate,memory_recursiveprot\n"


def test_hybrid_host_is_detected_with_its_controllers() -> None:
    fs = Cgroupfs(parse_mountinfo(HYBRID))
    assert fs.mode == CgroupMode.HYBRID
    assert fs.controllers() == {"cpu", "cpuacct", "cpuset", "memory", "pids", "name=systemd"}


def test_paths_are_absolute_from_the_hierarchy_root_not_our_own_cgroup() -> None:
    fs = Cgroupfs(parse_mountinfo(HYBRID))
    assert fs.file("/kubepods/pod1/cri-py-a", "memory", "memory.limit_in_bytes") == Path(
        "/sys/fs/cgroup/memory/kubepods/pod1/cri-py-a/memory.limit_in_bytes"
    )


def test_a_mount_of_a_sub_tree_maps_paths_under_its_root() -> None:
    text = "40 31 0:32 /machine /cg/memory rw - cgroup cgroup rw,memory\n"
    fs = Cgroupfs(parse_mountinfo(text))
    assert fs.dirs("/machine/pod/cri-py-a") == [Path("/cg/memory/pod/cri-py-a")]
    with pytest.raises(InvalidArgument, match="outside"):
        fs.dirs("/elsewhere/cri-py-a")


@pytest.mark.parametrize("path", ["relative/x", "/a/../../etc", "/a/./b"])
def test_paths_that_could_climb_out_are_refused(path: str) -> None:
    fs = Cgroupfs(parse_mountinfo(V2))
    with pytest.raises(InvalidArgument):
        fs.dirs(path)


def test_container_cgroup_naming() -> None:
    assert container_cgroup("/kubepods/burstable/pod9", "abc") == (
        "/kubepods/burstable/pod9/cri-py-abc"
    )
    assert container_cgroup("", "abc") == "/cri-py/cri-py-abc"
    with pytest.raises(InvalidArgument):
        container_cgroup("/kubepods/../..", "abc")


def fake_v2_tree(root: Path) -> Cgroupfs:
    """A directory that looks enough like a cgroup2 mount for create/enable/write."""
    (root / "cgroup.subtree_control").write_text("")
    (root / "cgroup.controllers").write_text("cpu cpuset memory pids")
    return Cgroupfs([Hierarchy(str(root), "/", frozenset(), 2)])


def test_v2_golden_tree_for_kubelet_request(tmp_path: Path) -> None:
    fs = fake_v2_tree(tmp_path)
    manager = CgroupManager(fs, pids_limit=4096)
    # A real cgroupfs makes the control files itself; the fake gets them made for it.
    parent = tmp_path / "kubepods" / "pod1"
    parent.mkdir(parents=True)
    (tmp_path / "kubepods" / "cgroup.subtree_control").write_text("")
    (parent / "cgroup.subtree_control").write_text("")
    resources = Resources(
        cpu_shares=512,
        cpu_quota=50000,
        cpu_period=100000,
        memory_limit_in_bytes=64 * 1024 * 1024,
        unified={"memory.oom.group": "1"},
    )
    manager.create("/kubepods/pod1/cri-py-c1", linux_resources(resources, manager.support))
    leaf = parent / "cri-py-c1"
    files = {p.name: p.read_text() for p in sorted(leaf.iterdir())}
    assert files == {
        "cpu.weight": "20",
        "cpu.max": "50000 100000",
        "memory.max": "67108864",
        "pids.max": "4096",
        "memory.oom.group": "1",
    }
    # Every ancestor delegates the controllers the leaf uses, top down.
    for directory in (tmp_path, tmp_path / "kubepods", parent):
        enabled = (directory / "cgroup.subtree_control").read_text()
        assert enabled == "+cpu +memory +pids", directory
    assert [w.file for w in v2_writes(linux_resources(resources))][-1] == "memory.oom.group"


def test_create_tolerates_a_parent_made_concurrently(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    # Two pods under a parent that does not exist yet: both see it missing, one makes it
    # first, and the other must not fail with EEXIST (found by `make test-faults`).
    fs = fake_v2_tree(tmp_path)
    real_mkdir = Path.mkdir

    def racing_mkdir(self: Path, mode: int = 0o777, *args: object, **kwargs: object) -> None:
        if self == tmp_path / "shared":
            real_mkdir(self, mode)  # the other pod's create got there first
        real_mkdir(self, mode, *args, **kwargs)  # type: ignore[arg-type]

    monkeypatch.setattr(Path, "mkdir", racing_mkdir)
    fs.create("/shared/cri-py-a")
    assert (tmp_path / "shared" / "cri-py-a").is_dir()


def test_create_fills_a_cpuset_parent_a_concurrent_create_has_not_filled_yet(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    # cgroup v1 cpuset: a new cgroup has empty cpus/mems. Another pod's create made `shared`
    # but has not copied its parent's yet; ours must not make a child of it with none (the
    # kernel then refuses tasks with ENOSPC; found by `make test-faults`).
    fs = Cgroupfs([Hierarchy(str(tmp_path), "/", frozenset({"cpuset"}), 1)])
    real_mkdir = os.mkdir

    def kernel_mkdir(path: str | Path, mode: int = 0o777, **kwargs: Any) -> None:
        real_mkdir(path, mode, **kwargs)
        for name in ("cpuset.cpus", "cpuset.mems"):
            (Path(path) / name).write_text("\n")

    monkeypatch.setattr(os, "mkdir", kernel_mkdir)
    (tmp_path / "cpuset.cpus").write_text("0-3\n")
    (tmp_path / "cpuset.mems").write_text("0\n")
    (tmp_path / "shared").mkdir()  # the other create, half-way
    fs.create("/shared/cri-py-a")
    for directory in (tmp_path / "shared", tmp_path / "shared" / "cri-py-a"):
        assert (directory / "cpuset.cpus").read_text().strip() == "0-3"
        assert (directory / "cpuset.mems").read_text().strip() == "0"


def test_a_cgroup_someone_else_is_removing_is_empty_and_gone(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """ENODEV (kernfs: the directory is being removed, as systemd does with a scope that
    emptied) is no process left and nothing to rmdir, in every hierarchy: the removal goes on
    with the next hierarchies instead of leaving them."""
    import errno
    import os

    hierarchies = [
        Hierarchy(str(tmp_path / name), "/", frozenset({name}), 1) for name in ("cpu", "cpuset")
    ]
    fs = Cgroupfs(hierarchies)
    for directory in fs.dirs("/a/b"):
        directory.mkdir(parents=True)
    dying = fs.dirs("/a/b")[0]
    (dying / "cgroup.procs").mkdir()  # reading it fails; ENODEV stands in below
    real_read, real_rmdir = Path.read_text, os.rmdir

    def read_text(path: Path, *args: object, **kwargs: object) -> str:
        if path.parent == dying:
            raise OSError(errno.ENODEV, "No such device")
        return real_read(path, *args, **kwargs)  # type: ignore[arg-type]

    def rmdir(path: object) -> None:
        if Path(str(path)) == dying:
            raise OSError(errno.ENODEV, "No such device")
        real_rmdir(path)  # type: ignore[arg-type]

    monkeypatch.setattr(Path, "read_text", read_text)
    monkeypatch.setattr(os, "rmdir", rmdir)
    assert fs.pids("/a/b") == []
    fs.remove("/a/b")
    assert not fs.dirs("/a/b")[1].exists()
