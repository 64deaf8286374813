"""Device rules the node cannot enforce: what an unprivileged container keeps, what is refused
(`cri_py.spec.devices.without_device_rules`), and the spec build that uses it."""

from __future__ import annotations

import pytest

from cri_py.errors import FailedPrecondition
from cri_py.oci.plan import MS_NODEV, mount_step
from cri_py.spec.capabilities import container_capabilities
from cri_py.spec.devices import DeviceNode, devices_unconfined, without_device_rules
from cri_py.spec.rootfs import overlay_mount

PROBLEM = "no devices controller is mounted on this cgroup v1 node"
FUSE = DeviceNode("/dev/fuse", "c", 10, 229, permissions="rw")


def test_only_unprivileged_containers_on_a_node_without_device_rules_are_unconfined() -> None:
    assert devices_unconfined(privileged=False, problem=PROBLEM)
    assert not devices_unconfined(privileged=True, problem=PROBLEM)
    assert not devices_unconfined(privileged=False, problem="")


def test_default_container_loses_mknod_from_every_set_and_keeps_the_rest() -> None:
    caps = container_capabilities([], [], ambient=["CAP_CHOWN"])
    result = without_device_rules("web", caps, set(), (FUSE,), PROBLEM)
    for key, values in result.items():
        assert "CAP_MKNOD" not in values
        assert values == [c for c in caps[key] if c != "CAP_MKNOD"]
    assert "CAP_MKNOD" in caps["bounding"]  # the input is not changed
    assert "CAP_CHOWN" in result["ambient"] and "CAP_SETUID" in result["bounding"]


@pytest.mark.parametrize(
    ("add", "requested", "refused"),
    [
        (["SYS_ADMIN"], {"CAP_SYS_ADMIN"}, "CAP_SYS_ADMIN"),
        (["ALL"], set(), "CAP_SYS_ADMIN"),  # ALL is not a name: bounding tells
        (["mknod"], {"CAP_MKNOD"}, "CAP_MKNOD"),
    ],
)
def test_capabilities_that_would_reach_every_device_are_refused(
    add: list[str], requested: set[str], refused: str
) -> None:
    caps = container_capabilities(add, [])
    with pytest.raises(FailedPrecondition) as caught:
        without_device_rules("web", caps, requested, (), PROBLEM)
    assert refused in str(caught.value) and PROBLEM in str(caught.value)
    assert "container web" in str(caught.value)


def test_mknod_asked_for_and_dropped_again_is_not_refused() -> None:
    caps = container_capabilities(["MKNOD"], ["MKNOD"])
    result = without_device_rules("web", caps, {"CAP_MKNOD"}, (), PROBLEM)
    assert "CAP_MKNOD" not in result["bounding"]


@pytest.mark.parametrize("permissions", ["r", "w", "rm"])
def test_a_device_granted_less_than_read_write_is_refused(permissions: str) -> None:
    disk = DeviceNode("/dev/xvdc", "b", 202, 32, permissions=permissions)
    with pytest.raises(FailedPrecondition) as caught:
        without_device_rules("web", container_capabilities([], []), set(), (disk,), PROBLEM)
    assert "/dev/xvdc" in str(caught.value) and PROBLEM in str(caught.value)


def test_the_rootfs_is_nodev_only_when_asked() -> None:
    plain = overlay_mount(["/l1", "/l2"], "/u", "/w", "/e")
    nodev = overlay_mount(["/l1", "/l2"], "/u", "/w", "/e", nodev=True)
    assert "nodev" not in plain["options"]
    assert nodev["options"] == [*plain["options"], "nodev"]
    # What the shim makes of it: a mount flag, not overlay data.
    step = mount_step({**nodev, "destination": "/rootfs"})
    assert step.flags & MS_NODEV and "nodev" not in step.data
    assert not mount_step({**plain, "destination": "/rootfs"}).flags & MS_NODEV
