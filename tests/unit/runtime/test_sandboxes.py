"""The pure rules of the sandbox service: config validation and ListPodSandbox filters."""

from __future__ import annotations

import dataclasses

import pytest

from cri_py.errors import InvalidArgument
from cri_py.model.sandbox import (
    NamespaceMode,
    NamespaceOptions,
    Phase,
    PodMetadata,
    PortMapping,
    SandboxConfig,
    SandboxFilter,
    SandboxRecord,
    SandboxState,
    SandboxView,
)
from cri_py.runtime.sandbox_rules import matches, validate_config


def config(**changes: object) -> SandboxConfig:
    base: dict[str, object] = {"metadata": PodMetadata("web", "uid-1", "default", 0)}
    base.update(changes)
    return SandboxConfig(**base)  # type: ignore[arg-type]


def view(sandbox_id: str, state: SandboxState, labels: dict[str, str]) -> SandboxView:
    record = SandboxRecord(sandbox_id, config(labels=labels), 1, Phase.CREATED)
    return SandboxView(record, state)


READY_WEB = view("ab" * 32, SandboxState.READY, {"app": "web", "tier": "front"})
STOPPED_DB = view("cd" * 32, SandboxState.NOTREADY, {"app": "db"})


@pytest.mark.parametrize(
    ("selector", "expected"),
    [
        (SandboxFilter(), [READY_WEB, STOPPED_DB]),
        (SandboxFilter(id="abab"), [READY_WEB]),
        (SandboxFilter(id="cd" * 32), [STOPPED_DB]),
        (SandboxFilter(state=SandboxState.NOTREADY), [STOPPED_DB]),
        (SandboxFilter(labels={"app": "web"}), [READY_WEB]),
        (SandboxFilter(labels={"app": "web", "tier": "back"}), []),
        (SandboxFilter(id="abab", state=SandboxState.NOTREADY), []),
    ],
)
def test_filters(selector: SandboxFilter, expected: list[SandboxView]) -> None:
    assert [v for v in (READY_WEB, STOPPED_DB) if matches(v, selector)] == expected


def test_metadata_needs_name_and_namespace() -> None:
    with pytest.raises(InvalidArgument, match="name and a namespace"):
        validate_config(config(metadata=PodMetadata("", "u", "default")))


def test_container_network_mode_is_refused_for_a_pod() -> None:
    options = NamespaceOptions(network=NamespaceMode.CONTAINER)
    with pytest.raises(InvalidArgument, match="network namespace mode"):
        validate_config(config(namespaces=options))


def test_node_wide_sysctl_is_refused() -> None:
    with pytest.raises(InvalidArgument, match="not namespaced"):
        validate_config(config(sysctls={"vm.swappiness": "1"}))


@pytest.mark.parametrize("log_directory", ["relative/logs", "/var/log/pods/../../../etc", "/x\x00"])
def test_log_directory_must_be_a_clean_absolute_path(log_directory: str) -> None:
    with pytest.raises(InvalidArgument, match="log directory"):
        validate_config(config(log_directory=log_directory))


@pytest.mark.parametrize("hostname", ["a\x00b", "a\nb", "é" * 40])
def test_hostname_the_kernel_would_refuse_is_invalid_argument(hostname: str) -> None:
    # Found by tests/integration/test_fuzz.py: the shim failed on them (INTERNAL).
    with pytest.raises(InvalidArgument, match="hostname"):
        validate_config(config(hostname=hostname))
    with pytest.raises(InvalidArgument, match="hostname"):
        validate_config(config(metadata=PodMetadata(hostname, "u", "default")))


@pytest.mark.parametrize("host_ip", ["\x8f/\u00be", "example.com", "10.0.0.300"])
def test_port_mapping_host_ip_must_be_an_address(host_ip: str) -> None:
    # Found by the fuzz suite: the hostPort relay resolved it as a name (an idna error, INTERNAL).
    mapping = PortMapping(container_port=80, host_port=8080, host_ip=host_ip)
    with pytest.raises(InvalidArgument, match="host_ip"):
        validate_config(config(port_mappings=(mapping,)))
    validate_config(config(port_mappings=(dataclasses.replace(mapping, host_ip="127.0.0.1"),)))
