"""The shim's spec file and sysctl paths."""

from __future__ import annotations

import pytest

from cri_py.shim.spec import ShimSpec, is_net_sysctl, sysctl_path


def test_spec_round_trips_through_json() -> None:
    spec = ShimSpec("a" * 64, hostname="web-0", new_pid=True, sysctls={"net.core.somaxconn": "1"})
    assert ShimSpec.from_json(spec.to_json()) == spec
    users = ShimSpec("b" * 64, uid_map="0 65536 65536\n", gid_map="0 1 2\n", user_pin="/p/user")
    assert ShimSpec.from_json(users.to_json()) == users
    joined = ShimSpec("c" * 64, new_net=False, net_path="/run/cri-py/sandboxes/c/ns/net")
    assert ShimSpec.from_json(joined.to_json()) == joined


@pytest.mark.parametrize(
    ("name", "path"),
    [
        ("net.ipv4.ip_forward", "/proc/sys/net/ipv4/ip_forward"),
        ("net/ipv4/ip_forward", "/proc/sys/net/ipv4/ip_forward"),
        ("net.ipv4.conf.eth0/1.rp_filter", "/proc/sys/net/ipv4/conf/eth0.1/rp_filter"),
        ("kernel.shm_rmid_forced", "/proc/sys/kernel/shm_rmid_forced"),
    ],
)
def test_sysctl_names_map_to_proc_sys_paths(name: str, path: str) -> None:
    assert sysctl_path(name) == path


@pytest.mark.parametrize(
    ("name", "net"),
    [
        ("net.ipv4.ip_unprivileged_port_start", True),
        ("net/core/somaxconn", True),
        ("kernel.shm_rmid_forced", False),
        ("fs.mqueue.msg_max", False),
        ("network.x", False),
    ],
)
def test_net_sysctls_are_told_from_the_ipc_ones(name: str, net: bool) -> None:
    # The net ones are written where the daemon makes the pod's network namespace.
    assert is_net_sysctl(name) is net
