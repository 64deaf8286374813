"""A pod's network namespace made by the daemon (cri_py.linux.namespaces.new_netns)."""

from __future__ import annotations

import os
from pathlib import Path

import pytest

from cri_py.linux.namespaces import new_netns, run_in_netns, unpin_namespace

needs_root = pytest.mark.skipif(os.geteuid() != 0, reason="namespaces need root")
SYSCTL = Path("/proc/sys/net/ipv4/ip_unprivileged_port_start")


@needs_root
def test_a_new_netns_is_pinned_set_up_inside_and_leaves_the_caller_where_it_was(
    tmp_path: Path,
) -> None:
    ours = os.stat("/proc/thread-self/ns/net").st_ino
    host_value = SYSCTL.read_text()
    pin = tmp_path / "ns" / "net"
    pin.parent.mkdir()

    def inside() -> None:
        SYSCTL.write_text("81")

    new_netns(pin, inside)
    try:
        assert os.stat(pin).st_ino != ours
        assert os.stat("/proc/thread-self/ns/net").st_ino == ours
        assert SYSCTL.read_text() == host_value  # written in the new namespace only
        assert run_in_netns(pin, SYSCTL.read_text).strip() == "81"
    finally:
        unpin_namespace(pin)
    assert not pin.exists()


@needs_root
def test_a_failure_inside_leaves_no_pin(tmp_path: Path) -> None:
    pin = tmp_path / "net"

    def refuse() -> None:
        raise OSError(22, "bad sysctl")

    with pytest.raises(OSError, match="bad sysctl"):
        new_netns(pin, refuse)
    assert not pin.exists()
