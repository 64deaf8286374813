"""CRI resources -> the spec's `linux.resources` -> cgroup files, golden-tested for v1 and v2
side by side: the same chain a container's create and update go through.

Each `golden/cgroups/<case>.resources.json` (a CRI LinuxContainerResources, snake_case, and
under "support" what the node adds or lacks: the config's pids limit, a hugetlb controller) has
`<case>.cgroups.json` beside it: the OCI `linux.resources`, the v1 writes and the v2 writes
made from that object (or the error each version gives). Regenerate after a deliberate change
with `CRI_PY_REGENERATE_GOLDEN=1 pytest tests/unit/oci` and read the diff.
"""

from __future__ import annotations

import json
import os
from pathlib import Path
from typing import Any

import pytest

from cri_py.errors import InvalidArgument
from cri_py.model.resources import CgroupSupport, Resources
from cri_py.oci.cgroups import (
    Write,
    read_limits,
    shares_to_weight,
    v1_writes,
    v2_controllers,
    v2_writes,
)
from cri_py.spec.resources import linux_resources

GOLDEN = Path(__file__).parent / "golden" / "cgroups"
REGENERATE = os.environ.get("CRI_PY_REGENERATE_GOLDEN") == "1"
CASES = sorted(p.name.removesuffix(".resources.json") for p in GOLDEN.glob("*.resources.json"))


def _writes(produce: Any) -> Any:
    try:
        return [
            f"{w.controller}:{w.file}={w.value}" if w.controller else f"{w.file}={w.value}"
            for w in produce()
        ]
    except InvalidArgument as e:
        return {"error": str(e)}


def render(resources: Resources, support: CgroupSupport) -> dict[str, Any]:
    oci = linux_resources(resources, support)
    return {
        "oci": oci,
        "v1": _writes(lambda: v1_writes(oci)),
        "v2": _writes(lambda: v2_writes(oci)),
    }


@pytest.mark.parametrize("case", CASES)
def test_golden(case: str) -> None:
    fields = json.loads((GOLDEN / f"{case}.resources.json").read_text())
    support = CgroupSupport(**fields.pop("support", {}))
    actual = render(Resources(**fields), support)
    expected_file = GOLDEN / f"{case}.cgroups.json"
    if REGENERATE:
        expected_file.write_text(json.dumps(actual, indent=2) + "\n")
    assert actual == json.loads(expected_file.read_text())


def test_enough_golden_cases() -> None:
    assert len(CASES) >= 12


def test_kubelet_500m_64mi_is_exact_on_v1() -> None:
    writes = v1_writes(
        linux_resources(
            Resources(
                cpu_shares=512,
                cpu_quota=50000,
                cpu_period=100000,
                memory_limit_in_bytes=64 * 1024 * 1024,
            )
        )
    )
    assert {w.file: w.value for w in writes} == {
        "cpu.shares": "512",
        "cpu.cfs_period_us": "100000",
        "cpu.cfs_quota_us": "50000",
        "memory.limit_in_bytes": "67108864",
    }


def test_memsw_first_only_when_the_new_limit_passes_the_current_memsw() -> None:
    r = linux_resources(Resources(memory_limit_in_bytes=200, memory_swap_limit_in_bytes=400))
    raise_order = [w.file for w in v1_writes(r, current_memsw_limit=100)]
    lower_order = [w.file for w in v1_writes(r, current_memsw_limit=1000)]
    new_cgroup = [w.file for w in v1_writes(r, current_memsw_limit=None)]
    assert raise_order == ["memory.memsw.limit_in_bytes", "memory.limit_in_bytes"]
    assert lower_order == new_cgroup == ["memory.limit_in_bytes", "memory.memsw.limit_in_bytes"]


@pytest.mark.parametrize(("shares", "weight"), [(2, 1), (262144, 10000), (1024, 39), (1, 1)])
def test_shares_to_weight_bounds(shares: int, weight: int) -> None:
    assert shares_to_weight(shares) == weight


@pytest.mark.parametrize(
    ("resources", "message"),
    [
        (Resources(cpu_period=10), "cpu_period must be between"),
        (Resources(cpu_quota=5), "cpu_quota must be at least"),
        (Resources(memory_limit_in_bytes=10, memory_swap_limit_in_bytes=5), "must not be below"),
        (Resources(cpuset_cpus="0-1;rm -rf"), "is not a list"),
        (Resources(hugepage_limits={"2M B": 1}), "page size"),
        (Resources(unified={"../memory.max": "1"}), "not a cgroup v2 file name"),
        (Resources(memory_limit_in_bytes=-1), "must not be negative"),
    ],
)
def test_bad_values_are_refused_before_a_spec_is_written(
    resources: Resources, message: str
) -> None:
    with pytest.raises(InvalidArgument, match=message):
        linux_resources(resources)


@pytest.mark.parametrize(
    ("resources", "message"),
    [
        ({"blockIO": {"weight": 10}}, "does not apply: blockIO"),
        ({"memory": {"limit": 1, "reservation": 1}}, "does not apply: memory.reservation"),
        ({"cpu": {"shares": "512"}}, "must be an integer"),
        ({"cpu": {"cpus": "0\n1"}}, "is not a list"),
        ({"hugepageLimits": [{"pageSize": "../2MB", "limit": 0}]}, "page size"),
        ({"unified": {"../../memory.max": "1"}}, "not a cgroup v2 file name"),
    ],
)
def test_a_spec_field_no_cgroup_write_applies_is_refused_not_ignored(
    resources: dict[str, Any], message: str
) -> None:
    # config.json must say what the cgroup gets: a limit cri-py would silently skip, or a
    # value that could name a file outside the cgroup, fails on both versions.
    for produce in (v1_writes, v2_writes):
        with pytest.raises(InvalidArgument, match=message):
            produce(resources)


def test_device_rules_are_not_limit_writes() -> None:
    # They are applied once, at create (cri_py.oci.devices / device_filter), never by an update.
    rules = {"devices": [{"allow": False, "access": "rwm"}], "pids": {"limit": 5}}
    assert read_limits(rules).pids == 5
    assert v1_writes(rules) == [Write("pids", "pids.max", "5")]
    assert v2_writes(rules) == [Write("", "pids.max", "5")]


def test_v2_controllers_to_enable() -> None:
    writes = [
        Write("", "cpu.max", "max 100000"),
        Write("", "memory.oom.group", "1"),
        Write("", "pids.max", "10"),
    ]
    assert v2_controllers(writes) == ["cpu", "memory", "pids"]
