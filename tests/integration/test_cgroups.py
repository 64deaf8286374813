"""Container cgroups on this host's real hierarchies (cgroup v1 on our machines).

Every test works under its own parent `/cri-py-tests/<random>` and removes it, pass or fail;
no other cgroup is touched.
"""

from __future__ import annotations

import contextlib
import os
import secrets
import subprocess
import sys
from collections.abc import Iterator
from typing import Any

import pytest

from cri_py.errors import InvalidArgument
from cri_py.linux.cgroupfs import Cgroupfs, CgroupMode
from cri_py.model.resources import Resources
from cri_py.runtime.cgroups import CgroupManager, container_cgroup
from cri_py.spec.resources import linux_resources
from tests.host_kind import skip_host_kind

from .conftest import needs_root

pytestmark = needs_root


def spec_resources(manager: CgroupManager, resources: Resources) -> dict[str, Any]:
    """What a container's spec holds for these CRI values on this node: what the cgroup gets."""
    return linux_resources(resources, manager.support)


@pytest.fixture
def parent() -> Iterator[tuple[CgroupManager, str]]:
    fs = Cgroupfs.from_host()
    if fs.mode == CgroupMode.V2:
        skip_host_kind("cgroup-v2", "this test proves cgroup v1; v2 is covered by golden tests")
    parent = f"/cri-py-tests/{secrets.token_hex(4)}"
    manager = CgroupManager(fs)
    try:
        yield manager, parent
    finally:
        for directory in fs.dirs(parent):
            if directory.is_dir():
                for child in directory.iterdir():
                    if child.is_dir():
                        os.rmdir(child)
                os.rmdir(directory)
        for directory in fs.dirs("/cri-py-tests"):
            with contextlib.suppress(OSError):  # another test's parent may still be there
                os.rmdir(directory)


def test_kubelet_500m_64mi_reads_back_exactly(parent: tuple[CgroupManager, str]) -> None:
    manager, base = parent
    cgroup = container_cgroup(base, "c1")
    manager.create(
        cgroup,
        spec_resources(
            manager,
            Resources(
                cpu_shares=512, cpu_quota=50000, cpu_period=100000, memory_limit_in_bytes=67108864
            ),
        ),
    )
    fs = manager.fs
    assert fs.read(cgroup, "cpu", "cpu.shares") == "512"
    assert fs.read(cgroup, "cpu", "cpu.cfs_quota_us") == "50000"
    assert fs.read(cgroup, "cpu", "cpu.cfs_period_us") == "100000"
    assert fs.read(cgroup, "memory", "memory.limit_in_bytes") == "67108864"
    manager.remove(cgroup)
    assert not fs.exists(cgroup)


def test_kubelet_hugepage_limits_without_hugetlb_controller_are_dropped(
    parent: tuple[CgroupManager, str],
) -> None:
    # kubelet sends a 0 limit per huge page size the kernel has, even with no hugetlb
    # controller mounted (as on our machines); the container must still be created.
    manager, base = parent
    if "hugetlb" in manager.fs.controllers():
        skip_host_kind("hugetlb-mounted", "the limits are applied, nothing to drop")
    cgroup = container_cgroup(base, "huge")
    manager.create(
        cgroup,
        spec_resources(
            manager,
            Resources(memory_limit_in_bytes=64 << 20, hugepage_limits={"2MB": 0, "1GB": 0}),
        ),
    )
    assert manager.fs.read(cgroup, "memory", "memory.limit_in_bytes") == str(64 << 20)
    manager.remove(cgroup)


def test_seed_example_4mib_limit(parent: tuple[CgroupManager, str]) -> None:
    manager, base = parent
    cgroup = container_cgroup(base, "seed")
    manager.create(cgroup, spec_resources(manager, Resources(memory_limit_in_bytes=4 << 20)))
    assert manager.fs.read(cgroup, "memory", "memory.limit_in_bytes") == "4194304"
    manager.remove(cgroup)


def test_update_changes_live_values_and_failure_changes_nothing(
    parent: tuple[CgroupManager, str],
) -> None:
    manager, base = parent
    cgroup = container_cgroup(base, "upd")
    manager.create(
        cgroup, spec_resources(manager, Resources(cpu_shares=512, memory_limit_in_bytes=64 << 20))
    )
    manager.update(
        cgroup,
        spec_resources(
            manager,
            Resources(
                cpu_shares=1024,
                cpu_quota=20000,
                cpu_period=100000,
                memory_limit_in_bytes=128 << 20,
            ),
        ),
    )
    fs = manager.fs
    assert fs.read(cgroup, "cpu", "cpu.shares") == "1024"
    assert fs.read(cgroup, "cpu", "cpu.cfs_quota_us") == "20000"
    assert fs.read(cgroup, "memory", "memory.limit_in_bytes") == str(128 << 20)
    # cpuset.cpus beyond the machine's CPUs fails after the cpu writes succeeded: all undone.
    with pytest.raises((InvalidArgument, OSError)):
        manager.update(
            cgroup, spec_resources(manager, Resources(cpu_shares=256, cpuset_cpus="0-4095"))
        )
    assert fs.read(cgroup, "cpu", "cpu.shares") == "1024"
    manager.remove(cgroup)


def test_remove_waits_for_an_exiting_task(parent: tuple[CgroupManager, str]) -> None:
    manager, base = parent
    cgroup = container_cgroup(base, "busy")
    manager.create(cgroup, spec_resources(manager, Resources(memory_limit_in_bytes=64 << 20)))
    child = subprocess.Popen([sys.executable, "-c", "import time; time.sleep(30)"])
    try:
        manager.add_process(cgroup, child.pid)
        assert child.pid in manager.fs.pids(cgroup)
    finally:
        child.kill()
        child.wait()
    manager.remove(cgroup)
    assert not manager.fs.exists(cgroup)
