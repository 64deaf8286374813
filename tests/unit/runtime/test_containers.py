"""The pure rules of the container service: ListContainers filters, stop signals, validation."""

from __future__ import annotations

import signal

import pytest

from cri_py.errors import InvalidArgument
from cri_py.oci.cgroups import Resources
from cri_py.runtime.container_model import (
    ContainerConfig,
    ContainerFilter,
    ContainerMetadata,
    ContainerRecord,
    ContainerState,
)
from cri_py.runtime.containers import (
    matches,
    merge_resources,
    stop_signal_number,
    validate_config,
)
from cri_py.runtime.model import NamespaceMode


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
