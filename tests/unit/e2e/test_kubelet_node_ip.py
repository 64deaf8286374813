"""e2e/kubelet_e2e.py gives kubelet --node-ip: without it standalone kubelet resolves its made-up
node name by DNS for every /stats/summary (and pod admission), and where DNS does not answer (a
lab node container) each lookup costs 10 s, longer than the scenario waits for a summary. The
address must be the one kubelet would fall back to itself: the first IPv4 address of the
interface the default route goes through, as `ip` reports them."""

from __future__ import annotations

import ipaddress
import json
import shutil
import subprocess
from pathlib import Path

import kubelet_e2e  # e2e/, put on the path by this directory's conftest
import pytest


def ip_json(*args: str) -> list[dict[str, object]]:
    result = subprocess.run(
        ["ip", "-json", *args], capture_output=True, text=True, check=True, timeout=10
    )
    parsed: list[dict[str, object]] = json.loads(result.stdout or "[]")
    return parsed


def expected_node_ip() -> str | None:
    for route in ip_json("-4", "route", "show", "default"):
        device = route.get("dev")
        if not isinstance(device, str):
            continue
        for link in ip_json("-4", "addr", "show", "dev", device):
            for info in link.get("addr_info", []):  # type: ignore[attr-defined]
                address = ipaddress.ip_address(info["local"])
                if not (address.is_loopback or address.is_link_local or address.is_multicast):
                    return str(address)
    return None


needs_ip = pytest.mark.skipif(shutil.which("ip") is None, reason="needs iproute2's ip")


@needs_ip
def test_node_ip_is_the_default_route_interface_address() -> None:
    assert kubelet_e2e.node_ip() == expected_node_ip()


@needs_ip
def test_kubelet_gets_the_node_ip(tmp_path: Path) -> None:
    expected = expected_node_ip()
    if expected is None:
        pytest.skip("this machine has no default IPv4 route")
    command = kubelet_e2e.kubelet_command(tmp_path)
    assert f"--node-ip={expected}" in command
    # still the node name the static pods' names carry
    assert f"--hostname-override={kubelet_e2e.NODE}" in command
    # kubelet refuses a loopback node IP (validateNodeIP)
    assert not ipaddress.ip_address(expected).is_loopback
