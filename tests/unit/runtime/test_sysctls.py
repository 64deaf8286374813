"""Which sysctls a pod may set."""

from __future__ import annotations

import pytest

from cri_py.errors import InvalidArgument
from cri_py.model.sandbox import NamespaceMode, NamespaceOptions
from cri_py.runtime.sysctls import namespace_of, validate_sysctls

POD = NamespaceOptions()


@pytest.mark.parametrize(
    ("name", "kind"),
    [
        ("net.ipv4.ip_unprivileged_port_start", "net"),
        ("net/ipv4/tcp_syncookies", "net"),
        ("kernel.shm_rmid_forced", "ipc"),
        ("kernel.msgmax", "ipc"),
        ("fs.mqueue.msg_max", "ipc"),
        ("kernel.domainname", "uts"),
        ("kernel.pid_max", None),
        ("vm.swappiness", None),
        ("fs.file-max", None),
    ],
)
def test_namespace_of(name: str, kind: str | None) -> None:
    assert namespace_of(name) == kind


def test_namespaced_sysctls_are_accepted() -> None:
    validate_sysctls({"net.core.somaxconn": "1024", "kernel.shmmni": "4096"}, POD)


def test_node_wide_sysctl_is_invalid_argument() -> None:
    with pytest.raises(InvalidArgument, match=r"kernel\.pid_max is not namespaced"):
        validate_sysctls({"kernel.pid_max": "4096"}, POD)


def test_net_sysctl_with_host_network_is_invalid_argument() -> None:
    host_net = NamespaceOptions(network=NamespaceMode.NODE)
    with pytest.raises(InvalidArgument, match="shares the host's"):
        validate_sysctls({"net.core.somaxconn": "1"}, host_net)
    validate_sysctls({"kernel.shmmni": "1"}, host_net)


@pytest.mark.parametrize(
    "name", ["net/../../kernel/pid_max", "net..x", "net.ipv4 x", "", "net.core.somaxconn\n"]
)
def test_malformed_names_are_invalid_argument(name: str) -> None:
    with pytest.raises(InvalidArgument):
        validate_sysctls({name: "1"}, POD)


def test_multi_line_value_is_invalid_argument() -> None:
    with pytest.raises(InvalidArgument, match="single line"):
        validate_sysctls({"net.core.somaxconn": "1\n2"}, POD)
