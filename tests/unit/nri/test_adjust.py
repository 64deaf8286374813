"""NRI adjustments applied to a container's OCI spec: each field, removals, NRI's owner rules
between plugins, and what cri-py refuses rather than writes where nothing reads it."""

from __future__ import annotations

import copy
from typing import Any

import pytest

from cri_py.model.resources import Resources
from cri_py.nri import api_pb2 as api
from cri_py.nri.adjust import (
    AdjustmentError,
    Owners,
    apply_adjustment,
    model_resources,
    nri_resources,
    resources_from_model,
    spec_resources,
)

SPEC: dict[str, Any] = {
    "process": {
        "args": ["/pause"],
        "env": ["PATH=/bin", "KEEP=1", "DROP=1"],
        "rlimits": [{"type": "RLIMIT_NOFILE", "hard": 1024, "soft": 1024}],
    },
    "mounts": [
        {"destination": "/proc", "type": "proc", "source": "proc"},
        {"destination": "/etc/hosts", "type": "bind", "source": "/h", "options": ["rbind"]},
        {"destination": "/data", "type": "bind", "source": "/d", "options": ["rbind"]},
    ],
    "annotations": {"io.kubernetes.cri.container-type": "container", "gone": "x"},
    "linux": {
        "cgroupsPath": "/kubepods/pod1/c1",
        "resources": {
            "memory": {"limit": 100 << 20},
            "devices": [{"allow": False, "access": "rwm"}],
        },
    },
}


def adjusted(*adjustments: tuple[str, api.ContainerAdjustment], spec: Any = None) -> Any:
    result = copy.deepcopy(spec if spec is not None else SPEC)
    owners = Owners()
    for plugin, adjust in adjustments:
        apply_adjustment(result, adjust, plugin, owners)
    return result


def test_annotations_env_args_and_rlimits_are_set_and_removed_by_marker() -> None:
    adjust = api.ContainerAdjustment(
        annotations={"nri/added": "yes", "-gone": ""},
        env=[api.KeyValue(key="NEW", value="v"), api.KeyValue(key="-DROP")],
        args=["/bin/sh", "-c", "true"],
        rlimits=[api.POSIXRlimit(type="RLIMIT_NOFILE", hard=4096, soft=2048)],
    )
    spec = adjusted(("00-a", adjust))
    assert spec["annotations"] == {
        "io.kubernetes.cri.container-type": "container",
        "nri/added": "yes",
    }
    assert spec["process"]["env"] == ["PATH=/bin", "KEEP=1", "NEW=v"]
    assert spec["process"]["args"] == ["/bin/sh", "-c", "true"]
    assert spec["process"]["rlimits"] == [{"type": "RLIMIT_NOFILE", "hard": 4096, "soft": 2048}]
    assert SPEC["process"]["env"] == ["PATH=/bin", "KEEP=1", "DROP=1"]  # the input is untouched


def test_a_plugin_mount_replaces_one_at_its_destination_and_lands_after_its_parent() -> None:
    adjust = api.ContainerAdjustment(
        mounts=[
            api.Mount(
                destination="/data", type="bind", source="/plugin/d", options=["rbind", "ro"]
            ),
            api.Mount(destination="/etc/plugin/conf", type="tmpfs", source="tmpfs"),
            api.Mount(destination="-/etc/hosts"),
        ]
    )
    spec = adjusted(("00-a", adjust))
    assert [m["destination"] for m in spec["mounts"]] == ["/proc", "/data", "/etc/plugin/conf"]
    data = spec["mounts"][1]
    assert (data["source"], data["options"]) == ("/plugin/d", ["rbind", "ro"])


@pytest.mark.parametrize(
    "mount",
    [
        api.Mount(destination="relative", type="tmpfs", source="tmpfs"),
        api.Mount(destination="/a/../etc", type="tmpfs", source="tmpfs"),
        api.Mount(destination="/x", type="bind", source="relative/src"),
        api.Mount(destination="/x"),
    ],
)
def test_bad_mounts_are_refused(mount: api.Mount) -> None:
    with pytest.raises(AdjustmentError):
        adjusted(("00-a", api.ContainerAdjustment(mounts=[mount])))


def test_two_plugins_setting_the_same_entry_conflict_and_name_both() -> None:
    first = api.ContainerAdjustment(env=[api.KeyValue(key="X", value="1")])
    second = api.ContainerAdjustment(env=[api.KeyValue(key="X", value="2")])
    with pytest.raises(
        AdjustmentError, match=r"plugins '00-a' and '10-b' both tried to set env 'X'"
    ):
        adjusted(("00-a", first), ("10-b", second))
    # Different entries of the same field are fine, and so is one plugin setting twice.
    other = api.ContainerAdjustment(env=[api.KeyValue(key="Y", value="2")])
    spec = adjusted(("00-a", first), ("10-b", other), ("00-a", first))
    assert spec["process"]["env"][-2:] == ["Y=2", "X=1"]


@pytest.mark.parametrize(
    "make",
    [
        lambda a: a.linux.oom_score_adj.SetInParent() or setattr(a.linux.oom_score_adj, "value", 5),
        lambda a: setattr(a.linux, "cgroups_path", "/other"),
        lambda a: a.linux.resources.memory.limit.SetInParent(),
        lambda a: setattr(a.linux.resources.cpu, "cpus", "0"),
        lambda a: a.annotations.__setitem__("k", "v"),
        lambda a: a.mounts.add(destination="/m", type="tmpfs", source="tmpfs"),
        lambda a: a.linux.devices.add(path="/dev/x", type="c", major=1, minor=3),
        lambda a: a.rlimits.add(type="RLIMIT_CORE", hard=0, soft=0),
        lambda a: a.args.extend(["/bin/true"]),
    ],
)
def test_every_owned_field_conflicts_between_plugins(make: Any) -> None:
    adjust = api.ContainerAdjustment()
    make(adjust)
    with pytest.raises(AdjustmentError, match="both tried to set"):
        adjusted(("00-a", adjust), ("01-b", adjust))


def test_devices_get_their_node_and_an_allow_rule_and_lose_both_when_removed() -> None:
    add = api.ContainerAdjustment()
    device = add.linux.devices.add(path="/dev/fuse", type="c", major=10, minor=229)
    device.file_mode.value = 0o600
    device.uid.value = 1000
    spec = adjusted(("00-a", add))
    assert spec["linux"]["devices"] == [
        {
            "path": "/dev/fuse",
            "type": "c",
            "major": 10,
            "minor": 229,
            "fileMode": 0o600,
            "uid": 1000,
            "gid": 0,
        }
    ]
    assert {"allow": True, "type": "c", "major": 10, "minor": 229, "access": "rwm"} in spec[
        "linux"
    ]["resources"]["devices"]
    remove = api.ContainerAdjustment()
    remove.linux.devices.add(path="-/dev/fuse")
    spec = adjusted(("00-a", remove), spec=spec)
    assert spec["linux"]["devices"] == []
    assert spec["linux"]["resources"]["devices"] == [{"allow": False, "access": "rwm"}]


def test_a_privileged_containers_allow_all_rule_covers_plugin_devices() -> None:
    spec = copy.deepcopy(SPEC)
    spec["linux"]["resources"]["devices"] = [{"allow": True, "access": "rwm"}]
    add = api.ContainerAdjustment()
    add.linux.devices.add(path="/dev/fuse", type="c", major=10, minor=229)
    assert adjusted(("00-a", add), spec=spec)["linux"]["resources"]["devices"] == [
        {"allow": True, "access": "rwm"}
    ]


def test_bad_devices_are_refused() -> None:
    for path, kind in (("/dev/../etc/x", "c"), ("/dev/x", "z")):
        adjust = api.ContainerAdjustment()
        adjust.linux.devices.add(path=path, type=kind, major=1, minor=1)
        with pytest.raises(AdjustmentError):
            adjusted(("00-a", adjust))


def test_resources_cgroup_path_and_oom_score_go_into_the_spec() -> None:
    adjust = api.ContainerAdjustment()
    r = adjust.linux.resources
    r.memory.limit.value = 200 << 20
    r.memory.swap.value = 300 << 20
    r.cpu.shares.value = 512
    r.cpu.quota.value = 50000
    r.cpu.period.value = 100000
    r.cpu.cpus = "0-1"
    r.cpu.mems = "0"
    r.pids.limit = 99
    r.hugepage_limits.add(page_size="2MB", limit=4 << 20)
    r.unified["memory.high"] = "150000000"
    adjust.linux.cgroups_path = "/kubepods//pod2/c1/"
    adjust.linux.oom_score_adj.value = -500
    spec = adjusted(("00-a", adjust))
    assert spec["linux"]["resources"] == {
        "memory": {"limit": 200 << 20, "swap": 300 << 20},
        "cpu": {"shares": 512, "quota": 50000, "period": 100000, "cpus": "0-1", "mems": "0"},
        "pids": {"limit": 99},
        "hugepageLimits": [{"pageSize": "2MB", "limit": 4 << 20}],
        "unified": {"memory.high": "150000000"},
        "devices": [{"allow": False, "access": "rwm"}],
    }
    assert spec["linux"]["cgroupsPath"] == "/kubepods/pod2/c1"
    assert spec["process"]["oomScoreAdj"] == -500


def test_values_the_kernel_or_cri_py_cannot_take_are_refused() -> None:
    cases: list[api.ContainerAdjustment] = []
    for setter in (
        lambda a: setattr(a.linux.oom_score_adj, "value", 1001),
        lambda a: setattr(a.linux, "cgroups_path", "relative"),
        lambda a: a.rlimits.add(type="RLIMIT_NOFILE", hard=1, soft=2),
        lambda a: a.rlimits.add(type="NOFILE", hard=1, soft=1),
        lambda a: setattr(a.linux.resources.memory.reservation, "value", 1),
        lambda a: setattr(a.linux.resources.blockio_class, "value", "gold"),
        lambda a: a.linux.sysctl.__setitem__("net.ipv4.ip_forward", "1"),
        lambda a: a.linux.namespaces.add(type="network", path="/proc/1/ns/net"),
        lambda a: a.CDI_devices.add(name="vendor.com/gpu=0"),
        lambda a: a.hooks.prestart.add(path="relative/hook"),
        lambda a: a.hooks.poststop.add(path="/bin/hook", timeout=api.OptionalInt(value=0)),
        lambda a: a.hooks.poststart.add(path="/bin/hook", env=["NOEQUALS"]),
        lambda a: setattr(a.linux.io_priority, "priority", 1),
        lambda a: a.env.add(key="A=B", value="x"),
    ):
        adjust = api.ContainerAdjustment()
        setter(adjust)
        cases.append(adjust)
    for adjust in cases:
        with pytest.raises(AdjustmentError):
            adjusted(("00-a", adjust))


def test_unsupported_fields_are_named_in_the_refusal() -> None:
    adjust = api.ContainerAdjustment()
    adjust.linux.sysctl["kernel.x"] = "1"
    adjust.linux.io_priority.priority = 1
    with pytest.raises(AdjustmentError, match=r"I/O priority.*sysctls|sysctls.*I/O priority"):
        adjusted(("00-a", adjust))


def test_hooks_are_appended_after_the_specs_own_in_plugin_order() -> None:
    spec = copy.deepcopy(SPEC)
    spec["hooks"] = {"createRuntime": [{"path": "/spec/own"}]}
    first = api.ContainerAdjustment()
    first.hooks.create_runtime.add(path="/a/one", args=["one", "x"], env=["A=1"])
    first.hooks.poststop.add(path="/a/stop", timeout=api.OptionalInt(value=5))
    second = api.ContainerAdjustment()
    second.hooks.create_runtime.add(path="/b/two")
    second.hooks.start_container.add(path="/b/start")
    hooks = adjusted(("00-a", first), ("10-b", second), spec=spec)["hooks"]
    assert hooks == {
        "createRuntime": [
            {"path": "/spec/own"},
            {"path": "/a/one", "args": ["one", "x"], "env": ["A=1"]},
            {"path": "/b/two"},
        ],
        "poststop": [{"path": "/a/stop", "timeout": 5}],
        "startContainer": [{"path": "/b/start"}],
    }


def test_a_malformed_hook_is_refused_naming_the_plugin() -> None:
    adjust = api.ContainerAdjustment()
    adjust.hooks.prestart.add(path="/bin/ok")
    adjust.hooks.poststart.add(path="/bin/hook", timeout=api.OptionalInt(value=-1))
    with pytest.raises(AdjustmentError, match=r"plugin '00-a': OCI hook poststart\[0\]"):
        adjusted(("00-a", adjust))


def test_a_container_without_a_cgroup_cannot_have_its_resources_adjusted() -> None:
    spec = copy.deepcopy(SPEC)
    del spec["linux"]["resources"]
    adjust = api.ContainerAdjustment()
    adjust.linux.resources.cpu.shares.value = 2
    with pytest.raises(AdjustmentError, match="no cgroup"):
        adjusted(("00-a", adjust), spec=spec)


def test_seccomp_policy_becomes_the_specs_linux_seccomp() -> None:
    adjust = api.ContainerAdjustment()
    policy = adjust.linux.seccomp_policy
    policy.default_action = "SCMP_ACT_ALLOW"
    policy.architectures.append("SCMP_ARCH_X86_64")
    rule = policy.syscalls.add(names=["mkdir"], action="SCMP_ACT_ERRNO")
    rule.errno_ret.value = 1
    rule.args.add(index=1, value=0o777, value_two=0, op="SCMP_CMP_EQ")
    spec = adjusted(("00-a", adjust))
    assert spec["linux"]["seccomp"] == {
        "defaultAction": "SCMP_ACT_ALLOW",
        "architectures": ["SCMP_ARCH_X86_64"],
        "syscalls": [
            {
                "names": ["mkdir"],
                "action": "SCMP_ACT_ERRNO",
                "errnoRet": 1,
                "args": [{"index": 1, "value": 0o777, "valueTwo": 0, "op": "SCMP_CMP_EQ"}],
            }
        ],
    }
    bad = api.ContainerAdjustment()
    bad.linux.seccomp_policy.default_action = "SCMP_ACT_BOGUS"
    with pytest.raises(AdjustmentError, match="seccomp"):
        adjusted(("00-a", bad))
    flags = api.ContainerAdjustment()
    flags.linux.seccomp_policy.default_action = "SCMP_ACT_ALLOW"
    flags.linux.seccomp_policy.flags.append("SECCOMP_FILTER_FLAG_LOG")
    with pytest.raises(AdjustmentError, match="flags"):
        adjusted(("00-a", flags))


def test_resources_convert_between_nri_the_spec_and_the_cri_values() -> None:
    values = Resources(
        cpu_shares=256,
        cpu_quota=20000,
        cpu_period=100000,
        memory_limit_in_bytes=64 << 20,
        memory_swap_limit_in_bytes=128 << 20,
        cpuset_cpus="1",
        cpuset_mems="0",
        hugepage_limits={"2MB": 0},
        unified={"memory.high": "max"},
    )
    nri = resources_from_model(values)
    assert model_resources(nri) == values
    assert model_resources(nri_resources(spec_resources(nri))) == values
    assert not resources_from_model(Resources()).memory.HasField("limit")
    pids = api.LinuxResources()
    pids.pids.limit = 5
    with pytest.raises(AdjustmentError, match="pids"):
        model_resources(pids)
