"""The systemd driver's pure part: slice names and paths, unit names, and a spec's
`linux.resources` as unit properties on cgroup v1 and v2.

The property goldens reuse the cgroupfs goldens' inputs (`golden/cgroups/<case>.resources.json`,
the same chain: CRI resources -> `linux.resources`) and keep the properties beside them in
`golden/systemd/<case>.properties.json`, for v1 and v2 with systemd 252 (Debian 12) and 241 (no
CPUQuotaPeriodUSec, no AllowedCPUs). Regenerate after a deliberate change with
`CRI_PY_REGENERATE_GOLDEN=1 pytest tests/unit/oci` and read the diff.
"""

from __future__ import annotations

import json
import os
from pathlib import Path
from typing import Any

import pytest

from cri_py.errors import InvalidArgument
from cri_py.model.resources import CgroupSupport, Resources
from cri_py.oci.cgroups import v2_writes
from cri_py.oci.systemd import (
    INFINITY,
    Property,
    cpu_bits,
    device_properties,
    expand_slice,
    is_ours,
    parse_proc_devices,
    pod_slice_name,
    quota_per_second,
    resource_properties,
    scope_name,
    scope_properties,
    slice_name,
    unit_of,
)
from cri_py.spec.resources import linux_resources

INPUTS = Path(__file__).parent / "golden" / "cgroups"
GOLDEN = Path(__file__).parent / "golden" / "systemd"
REGENERATE = os.environ.get("CRI_PY_REGENERATE_GOLDEN") == "1"
CASES = sorted(p.name.removesuffix(".resources.json") for p in INPUTS.glob("*.resources.json"))


def _render(properties: list[Property]) -> dict[str, Any]:
    shown: dict[str, Any] = {}
    for p in properties:
        value = p.value.hex() if isinstance(p.value, bytes) else p.value
        shown[p.name] = f"{p.signature}:{'infinity' if value == INFINITY else value}"
    return shown


def _properties(oci: dict[str, Any], v2: bool, version: int) -> Any:
    try:
        return _render(resource_properties(oci, v2, version))
    except InvalidArgument as e:
        return {"error": str(e)}


@pytest.mark.parametrize("case", CASES)
def test_golden_properties(case: str) -> None:
    fields = json.loads((INPUTS / f"{case}.resources.json").read_text())
    support = CgroupSupport(**fields.pop("support", {}))
    oci = linux_resources(Resources(**fields), support)
    actual = {
        "v1": _properties(oci, False, 252),
        "v2": _properties(oci, True, 252),
        "v2-systemd-241": _properties(oci, True, 241),
    }
    expected_file = GOLDEN / f"{case}.properties.json"
    if REGENERATE:
        expected_file.write_text(json.dumps(actual, indent=2) + "\n")
    assert actual == json.loads(expected_file.read_text())


def test_expand_slice_follows_systemd_dashes() -> None:
    assert expand_slice("-.slice") == "/"
    assert expand_slice("test.slice") == "/test.slice"
    assert (
        expand_slice("kubepods-burstable-pod1234_5678.slice")
        == "/kubepods.slice/kubepods-burstable.slice/kubepods-burstable-pod1234_5678.slice"
    )


@pytest.mark.parametrize(
    "bad", ["", ".slice", "a.scope", "a/b.slice", "-a.slice", "a-.slice", "a--b.slice", "a b.slice"]
)
def test_expand_slice_refuses_what_systemd_refuses(bad: str) -> None:
    with pytest.raises(InvalidArgument):
        expand_slice(bad)


def test_slice_name_takes_kubelet_names_and_critest_paths() -> None:
    assert slice_name("kubepods-besteffort-podx.slice") == "kubepods-besteffort-podx.slice"
    assert slice_name("/test.slice") == "test.slice"  # critest's DefaultSystemdCgroupSlice
    assert slice_name("/kubepods.slice/kubepods-burstable.slice") == "kubepods-burstable.slice"


@pytest.mark.parametrize("bad", ["/kubepods/burstable/pod1", "/a.slice/b.slice", "/x/../a.slice"])
def test_slice_name_refuses_cgroupfs_paths_and_misplaced_slices(bad: str) -> None:
    with pytest.raises(InvalidArgument):
        slice_name(bad)


def test_unit_names_of_containers_and_pods() -> None:
    cid = "ab" * 32
    assert scope_name(cid) == f"cri-py-{cid}.scope"
    pod = pod_slice_name("cri-py.slice", cid)
    assert pod == f"cri-py-pod_{cid}.slice"
    assert expand_slice(pod) == f"/cri.slice/cri-py.slice/cri-py-pod_{cid}.slice"
    assert pod_slice_name("-.slice", cid) == f"pod_{cid}.slice"
    assert unit_of(f"/kubepods.slice/cri-py-{cid}.scope") == f"cri-py-{cid}.scope"
    with pytest.raises(InvalidArgument):
        scope_name("../../x")
    with pytest.raises(InvalidArgument):
        unit_of("/cri-py/cri-py-abc")


def test_only_our_units_are_ours() -> None:
    cid = "0f" * 32
    assert is_ours(f"/test.slice/cri-py-{cid}.scope")
    assert is_ours(f"/cri.slice/cri-py.slice/cri-py-pod_{cid}.slice")
    assert not is_ours("/kubepods.slice/kubepods-burstable-pod1234_5678.slice")
    assert not is_ours("/test.slice")
    assert not is_ours("/system.slice/containerd.service")
    assert not is_ours(f"/system.slice/cri-containerd-{cid}.scope")


def test_cpu_bits_are_little_endian_masks() -> None:
    assert cpu_bits("0") == b"\x01"
    assert cpu_bits("0-2,4") == b"\x17"
    assert cpu_bits("9") == b"\x00\x02"
    assert cpu_bits("") == b""
    with pytest.raises(InvalidArgument):
        cpu_bits("3-1")


def test_quota_rounds_up_to_systemds_percent_steps() -> None:
    # kubelet's 500m: 50000 per 100000 is 500 ms per second, exact.
    assert quota_per_second(50_000, 100_000) == 500_000
    # 15m: 1500 per 100000 is 15 ms per second; systemd keeps whole percents -> 20 ms.
    assert quota_per_second(1_500, 100_000) == 20_000
    assert quota_per_second(0, 100_000) == INFINITY
    assert quota_per_second(-1, 100_000) == INFINITY


def test_v2_unified_memory_high_becomes_a_property_and_stays_in_the_files() -> None:
    oci = {"memory": {"limit": 1 << 30}, "unified": {"memory.high": "536870912", "io.max": "x"}}
    properties = {p.name: p.value for p in resource_properties(oci, True, 252)}
    assert properties == {"MemoryMax": 1 << 30, "MemoryHigh": 536870912}
    files = {w.file for w in v2_writes(oci)}
    assert {"memory.max", "memory.high", "io.max"} <= files


def test_v1_device_rules_become_a_strict_allow_list() -> None:
    rules = [
        {"allow": False, "access": "rwm"},
        {"allow": True, "type": "c", "major": 1, "minor": 3, "access": "rwm"},
        {"allow": True, "type": "c", "major": 136, "minor": -1, "access": "rwm"},
        {"allow": True, "type": "c", "access": "m"},
        {"allow": True, "type": "b", "major": 7, "minor": 0, "access": "r"},
    ]
    names = parse_proc_devices("Character devices:\n  1 mem\n136 pts\n\nBlock devices:\n  7 loop\n")
    assert names == {("c", 1): "mem", ("c", 136): "pts", ("b", 7): "loop"}
    assert device_properties(rules, names) == [
        Property("DevicePolicy", "s", "strict"),
        Property(
            "DeviceAllow",
            "a(ss)",
            [
                ("/dev/char/1:3", "rwm"),
                ("char-pts", "rwm"),
                ("char-*", "m"),
                ("/dev/block/7:0", "r"),
            ],
        ),
    ]


def test_device_rules_systemd_cannot_say_are_left_to_the_files() -> None:
    deny_all = {"allow": False, "access": "rwm"}
    # A deny after allows, a major without a /proc/devices group, no leading deny-all.
    assert device_properties([deny_all, {"allow": False, "type": "c", "major": 1}], {}) is None
    assert device_properties([deny_all, {"allow": True, "type": "c", "major": 99}], {}) is None
    assert device_properties([{"allow": True, "type": "c", "major": 1, "minor": 3}], {}) is None
    assert device_properties([], {}) == []


def test_scope_is_delegated_and_holds_the_given_pids() -> None:
    properties = {p.name: (p.signature, p.value) for p in scope_properties("c", "x.slice", [42])}
    assert properties["Delegate"] == ("b", True)
    assert properties["Slice"] == ("s", "x.slice")
    assert properties["PIDs"] == ("au", [42])
    assert Property("Delegate", "b", True).as_dbus() == ("Delegate", ("b", True))
