"""The launch plan: mount options to flags, namespaces to join, users resolved in the rootfs."""

from __future__ import annotations

import pytest

from cri_py.oci import plan as p
from cri_py.oci.plan import (
    DeviceStep,
    PlanError,
    User,
    build_plan,
    device_step,
    executable_candidates,
    mount_step,
)

SPEC = {
    "process": {"args": ["sh"], "env": ["PATH=/bin"], "cwd": "/", "user": {"uid": 0, "gid": 0}},
    "root": {"path": "/r"},
    "mounts": [
        {"destination": "/proc", "type": "proc", "source": "proc", "options": ["nosuid"]},
        {"destination": "/data", "type": "bind", "source": "/d",
         "options": ["rbind", "rslave", "ro"]},
    ],
    "linux": {
        "namespaces": [
            {"type": "pid", "path": "/p/pid"},
            {"type": "network", "path": "/p/net"},
            {"type": "mount"},
        ]
    },
}  # fmt: skip


def test_read_only_bind_mount_needs_a_remount_and_keeps_its_propagation() -> None:
    step = mount_step(SPEC["mounts"][1])  # type: ignore[index]
    assert step.is_bind and step.fstype == ""
    assert step.flags == p.MS_BIND | p.MS_REC | p.MS_RDONLY
    assert step.remount_flags == p.MS_REMOUNT | p.MS_BIND | p.MS_RDONLY
    assert step.propagation == p.MS_SLAVE | p.MS_REC


def test_plain_bind_mount_needs_no_remount() -> None:
    step = mount_step(
        {"destination": "/x", "type": "bind", "source": "/y", "options": ["rbind", "rw"]}
    )
    assert step.remount_flags == 0


def test_unknown_options_become_filesystem_data() -> None:
    step = mount_step(
        {"destination": "/dev", "type": "tmpfs", "source": "tmpfs",
         "options": ["nosuid", "strictatime", "mode=755", "size=65536k"]}
    )  # fmt: skip
    assert step.flags == p.MS_NOSUID | p.MS_STRICTATIME
    assert step.data == "mode=755,size=65536k"


def test_relative_destination_is_refused() -> None:
    with pytest.raises(PlanError):
        mount_step({"destination": "data", "type": "bind", "source": "/d"})


def test_plan_joins_pid_last_and_mounts_proc_after_pivot() -> None:
    plan = build_plan(SPEC)
    assert plan.join == (("network", "/p/net"), ("pid", "/p/pid"))
    assert plan.new_mount_ns and not plan.new_pid_ns and plan.forks_for_pid
    assert [m.destination for m in plan.late_mounts] == ["/proc"]
    assert [m.destination for m in plan.mounts] == ["/data"]


def test_plan_refuses_namespaces_only_a_sandbox_may_create() -> None:
    spec = {**SPEC, "linux": {"namespaces": [{"type": "network"}]}}
    with pytest.raises(PlanError, match="network"):
        build_plan(spec)


PASSWD = (
    "root:x:0:0:root:/root:/bin/sh\nnobody:x:65534:65534:nobody:/:/bin/false\nwww:x:33:33::/:\n"
)
GROUP = "root:x:0:\nwheel:x:10:root,www\nwww:x:33:\nstaff:x:50:www\n"


@pytest.mark.parametrize(
    ("user", "expected"),
    [
        (User(), User(0, 0, (0, 10))),
        (User(username="nobody"), User(65534, 65534, (65534,))),
        (User(username="www"), User(33, 33, (33, 10, 50))),
        (User(username="33"), User(33, 33, (33, 10, 50))),
        (User(username="1234"), User(1234, 0, (0,))),
        (User(username="www:staff"), User(33, 50, (50, 10))),
        (User(username="www:7"), User(33, 7, (7, 10, 50))),
        (User(1000, 3000, (5,)), User(1000, 3000, (3000, 5))),
        (User(username="33", additional_gids=(1234,)), User(33, 33, (33, 1234, 10, 50))),
    ],
)
def test_resolve_user_lists_the_primary_requested_and_image_groups(
    user: User, expected: User
) -> None:
    assert p.resolve_user(user, PASSWD, GROUP) == expected


def test_resolve_user_strict_policy_leaves_out_the_image_groups() -> None:
    user = User(username="33", additional_gids=(1234,), merge_image_groups=False)
    assert p.resolve_user(user, PASSWD, GROUP).additional_gids == (33, 1234)


def test_plan_reads_the_strict_groups_policy_annotation() -> None:
    spec = {**SPEC, "annotations": {p.SUPPLEMENTAL_GROUPS_POLICY_ANNOTATION: "Strict"}}
    assert not build_plan(spec).user.merge_image_groups
    assert build_plan(SPEC).user.merge_image_groups


def test_plan_carries_capabilities_no_new_privs_and_seccomp() -> None:
    spec = {
        **SPEC,
        "process": {
            **SPEC["process"],
            "capabilities": {"bounding": ["CAP_KILL"], "effective": ["CAP_KILL"]},
            "noNewPrivileges": True,
        },
        "linux": {"seccomp": {"defaultAction": "SCMP_ACT_ALLOW", "syscalls": []}},
    }
    security = build_plan(spec).security
    assert security.capabilities is not None and security.capabilities.bounding == {5}
    assert security.no_new_privileges
    assert security.seccomp is not None and security.seccomp.rules == ()
    assert build_plan(SPEC).security == p.Security()


def test_plan_refuses_unknown_capabilities_and_seccomp_actions() -> None:
    bad_cap = {**SPEC, "process": {**SPEC["process"], "capabilities": {"bounding": ["CAP_X"]}}}
    with pytest.raises(PlanError, match="CAP_X"):
        build_plan(bad_cap)
    bad_action = {**SPEC, "linux": {"seccomp": {"defaultAction": "SCMP_ACT_NOTIFY"}}}
    with pytest.raises(PlanError, match="NOTIFY"):
        build_plan(bad_action)


@pytest.mark.parametrize("username", ["ghost", "www:nogroup"])
def test_resolve_user_refuses_unknown_names(username: str) -> None:
    with pytest.raises(PlanError):
        p.resolve_user(User(username=username), PASSWD, GROUP)


def test_executable_candidates_follow_the_container_path() -> None:
    assert executable_candidates("sh", "/usr/bin:/bin/") == ["/usr/bin/sh", "/bin/sh"]
    assert executable_candidates("./run", "/bin") == ["./run"]
    assert executable_candidates("sh", None)[0] == "/usr/local/sbin/sh"


def test_rro_is_a_flag_not_filesystem_data() -> None:
    step = mount_step(
        {"destination": "/d", "type": "bind", "source": "/s", "options": ["rbind", "ro", "rro"]}
    )
    assert step.recursive_readonly
    assert step.data == ""


def test_image_volume_sub_path_is_read_from_the_mount() -> None:
    step = mount_step(
        {
            "destination": "/mnt/etc",
            "type": "overlay",
            "source": "overlay",
            "options": ["ro", "lowerdir=/a:/b"],
            "imageSubPath": "etc",
        }
    )
    assert (step.fstype, step.sub_path, step.data) == ("overlay", "etc", "lowerdir=/a:/b")


def test_devices_are_planned_and_bad_ones_refused() -> None:
    device = {"path": "/dev/fuse", "type": "c", "major": 10, "minor": 229, "fileMode": 0o666}
    assert device_step(device) == DeviceStep("/dev/fuse", "c", 10, 229, 0o666)
    with pytest.raises(PlanError):
        device_step({**device, "path": "/dev/../etc/x"})
    with pytest.raises(PlanError):
        device_step({**device, "type": "z"})


MAPPINGS = [{"containerID": 0, "hostID": 100000, "size": 65536}]
USERNS_SPEC = {
    **SPEC,
    "mounts": [
        {"destination": "/dev", "type": "tmpfs", "source": "tmpfs", "options": ["mode=755"]},
        {"destination": "/dev/pts", "type": "devpts", "source": "devpts",
         "options": ["newinstance", "gid=5"]},
        {"destination": "/data", "type": "bind", "source": "/d", "options": ["rbind"],
         "uidMappings": MAPPINGS, "gidMappings": MAPPINGS},
    ],
    "linux": {
        "namespaces": [
            {"type": "network", "path": "/p/net"},
            {"type": "user", "path": "/p/user"},
            {"type": "mount"},
        ],
        "uidMappings": MAPPINGS,
        "gidMappings": MAPPINGS,
    },
}  # fmt: skip


def test_user_namespace_is_joined_apart_from_the_others_with_its_mappings() -> None:
    plan = build_plan(USERNS_SPEC)
    assert plan.join == (("network", "/p/net"),)
    assert plan.user_namespace == "/p/user"
    assert plan.uid_mappings == plan.gid_mappings == ((0, 100000, 65536),)


def test_user_namespace_mounts_name_host_owners_and_idmap_binds() -> None:
    dev, pts, data = build_plan(USERNS_SPEC).mounts
    # A tmpfs made by the host's root is the container root's; devpts's tty group shifted.
    assert dev.data == "mode=755,uid=100000,gid=100000"
    assert pts.data == "newinstance,gid=100005"
    assert data.idmap and data.is_bind


def test_idmapped_mount_with_other_mappings_than_the_containers_is_refused() -> None:
    other = [{"containerID": 0, "hostID": 300000, "size": 65536}]
    spec = {**USERNS_SPEC, "mounts": [{**USERNS_SPEC["mounts"][2], "uidMappings": other}]}  # type: ignore[index, dict-item]
    with pytest.raises(PlanError, match="only the container's own user namespace"):
        build_plan(spec)
    without_userns = {**SPEC, "mounts": [USERNS_SPEC["mounts"][2]]}  # type: ignore[index]
    with pytest.raises(PlanError, match="only the container's own user namespace"):
        build_plan(without_userns)


def test_user_namespace_without_mappings_is_refused() -> None:
    linux = {**USERNS_SPEC["linux"], "uidMappings": []}  # type: ignore[dict-item]
    with pytest.raises(PlanError, match="uidMappings and gidMappings"):
        build_plan({**USERNS_SPEC, "linux": linux})


def test_host_id_shifts_inside_the_range_and_refuses_outside() -> None:
    ranges = ((0, 100000, 10),)
    assert p.host_id(ranges, 0) == 100000
    assert p.host_id(ranges, 9) == 100009
    with pytest.raises(PlanError, match="ID 10 is not mapped"):
        p.host_id(ranges, 10)


def test_idmapped_overlay_stacks_staged_layers_and_keeps_the_upper_dir() -> None:
    step = mount_step(
        {
            "destination": "/r",
            "type": "overlay",
            "source": "overlay",
            "options": ["lowerdir=/l/top:/l/base", "upperdir=/c/upper", "workdir=/c/work"],
        }
    )
    layers, staged, upper = p.idmapped_overlay(step, "/c/idmapped/rootfs")
    assert layers == (("/l/top", "/c/idmapped/rootfs/0"), ("/l/base", "/c/idmapped/rootfs/1"))
    assert staged.data == (
        "lowerdir=/c/idmapped/rootfs/0:/c/idmapped/rootfs/1,upperdir=/c/upper,workdir=/c/work"
    )
    assert upper == "/c/upper"
    # An image volume's overlay has no upper dir: nothing to hand to the container's root.
    volume = mount_step({"destination": "/v", "type": "overlay", "options": ["ro", "lowerdir=/a"]})
    assert p.idmapped_overlay(volume, "/s")[2] == ""


def test_home_comes_from_passwd_when_the_env_has_none() -> None:
    # runc's rule (found by the node e2e suite: images that set no HOME had none at all).
    passwd = "root:x:0:0:root:/root:/bin/sh\napp:x:1000:1000::/home/app:/bin/sh\nnohome:x:7:7:::\n"
    assert p.with_home(("PATH=/bin",), 0, passwd) == ("PATH=/bin", "HOME=/root")
    assert p.with_home((), 1000, passwd) == ("HOME=/home/app",)
    assert p.with_home((), 7, passwd) == ("HOME=/",)  # an empty home field
    assert p.with_home((), 4242, passwd) == ("HOME=/",)  # a uid the image does not list
    assert p.with_home(("HOME=/data",), 0, passwd) == ("HOME=/data",)  # the client's wins
    assert p.with_home(("HOME=",), 0, passwd) == ("HOME=",)
