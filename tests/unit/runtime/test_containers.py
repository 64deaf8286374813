"""The pure rules of the container service: ListContainers filters, stop signals, validation."""

from __future__ import annotations

import signal

import pytest

from cri_py.errors import InvalidArgument
from cri_py.model.container import (
    ContainerConfig,
    ContainerFilter,
    ContainerMetadata,
    ContainerRecord,
    ContainerState,
    Device,
    Mount,
)
from cri_py.model.resources import Resources
from cri_py.model.sandbox import NamespaceMode
from cri_py.runtime.container_rules import (
    image_name,
    matches,
    resolve_devices,
    resolve_host_paths,
    stop_signal_number,
    validate_config,
)
from cri_py.spec.resources import merge_resources


def record(
    container_id: str, sandbox_id: str, state: ContainerState, **labels: str
) -> ContainerRecord:
    config = ContainerConfig(ContainerMetadata("c"), "busybox", labels=labels)
    return ContainerRecord(container_id, sandbox_id, config, 1, "sha256:x", state=state)


RUNNING = record("ab" * 32, "11" * 32, ContainerState.RUNNING, app="web", tier="front")
EXITED = record("cd" * 32, "22" * 32, ContainerState.EXITED, app="db")


@pytest.mark.parametrize(
    ("selector", "expected"),
    [
        (ContainerFilter(), [RUNNING, EXITED]),
        (ContainerFilter(id="abab"), [RUNNING]),
        (ContainerFilter(state=ContainerState.EXITED), [EXITED]),
        (ContainerFilter(sandbox_id="22"), [EXITED]),
        (ContainerFilter(labels={"app": "web"}), [RUNNING]),
        (ContainerFilter(labels={"app": "web", "tier": "back"}), []),
        (ContainerFilter(id="ab", state=ContainerState.EXITED), []),
    ],
)
def test_list_filter(selector: ContainerFilter, expected: list[ContainerRecord]) -> None:
    assert [r for r in (RUNNING, EXITED) if matches(r, selector)] == expected


@pytest.mark.parametrize(
    ("name", "number"),
    [("", signal.SIGTERM), ("SIGKILL", signal.SIGKILL), ("quit", signal.SIGQUIT), ("2", 2)],
)
def test_stop_signal_by_name(name: str, number: int) -> None:
    assert stop_signal_number(name) == number


def test_unknown_stop_signal_is_refused() -> None:
    with pytest.raises(InvalidArgument):
        stop_signal_number("SIGNOPE")


@pytest.mark.parametrize(
    "config",
    [
        ContainerConfig(ContainerMetadata(""), "busybox"),
        ContainerConfig(ContainerMetadata("c"), ""),
        ContainerConfig(ContainerMetadata("c"), "busybox", pid_mode=NamespaceMode.TARGET),
        # The shim creates the log file: it may not climb out of the pod's log directory.
        ContainerConfig(ContainerMetadata("c"), "busybox", log_path="../../etc/cron.d/x"),
        ContainerConfig(ContainerMetadata("c"), "busybox", log_path="c/../../x.log"),
        ContainerConfig(ContainerMetadata("c"), "busybox", log_path="/etc/passwd"),
        ContainerConfig(ContainerMetadata("c"), "busybox", log_path="c\x00.log"),
    ],
)
def test_invalid_configs(config: ContainerConfig) -> None:
    with pytest.raises(InvalidArgument):
        validate_config(config)


def test_an_update_keeps_what_it_leaves_unset() -> None:
    current = Resources(
        cpu_shares=512, memory_limit_in_bytes=64 << 20, hugepage_limits={"2MB": 1 << 21}
    )
    update = Resources(cpu_shares=1024, cpu_quota=20000, hugepage_limits={"1GB": 0})
    merged = merge_resources(current, update)
    assert merged == Resources(
        cpu_shares=1024,
        cpu_quota=20000,
        memory_limit_in_bytes=64 << 20,
        hugepage_limits={"2MB": 1 << 21, "1GB": 0},
    )


def test_nul_in_host_paths_is_invalid_argument() -> None:
    # Found by tests/integration/test_paths.py and the fuzz suite: ValueError (INTERNAL).
    config = ContainerConfig(ContainerMetadata("c"), "busybox", mounts=(Mount("/d", "/tmp\x00"),))
    with pytest.raises(InvalidArgument, match="host path"):
        resolve_host_paths(config)
    device = Device(container_path="/dev/x", host_path="/dev/null\x00", permissions="r")
    with pytest.raises(InvalidArgument):
        resolve_devices(ContainerConfig(ContainerMetadata("c"), "busybox", devices=(device,)))


IMAGE_ID = "sha256:" + "ab" * 32


@pytest.mark.parametrize(
    ("image", "user_specified", "expected"),
    [
        # kubelet: by ID, with the pod spec's name alongside.
        (IMAGE_ID, "busybox:1.37", "busybox:1.37"),
        # An ID alone (an older kubelet, crictl create with an ID): the image's first tag.
        (IMAGE_ID, "", "docker.io/library/busybox:1.37.0"),
        ("ab" * 32, "", "docker.io/library/busybox:1.37.0"),
        # A name is shown as given.
        ("busybox", "", "busybox"),
    ],
)
def test_status_shows_the_image_by_the_name_the_user_gave(
    image: str, user_specified: str, expected: str
) -> None:
    config = ContainerConfig(
        metadata=ContainerMetadata(name="c"), image=image, user_specified_image=user_specified
    )
    assert image_name(config, IMAGE_ID, ("docker.io/library/busybox:1.37.0",)) == expected


def test_an_untagged_image_by_id_stays_an_id() -> None:
    config = ContainerConfig(metadata=ContainerMetadata(name="c"), image=IMAGE_ID)
    assert image_name(config, IMAGE_ID, ()) == IMAGE_ID
