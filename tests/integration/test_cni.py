"""Pods on a CNI network against a real daemon and Debian's containernetworking-plugins.

The conflist uses its own bridge, `cri-pycni0` with 10.98.0.0/24, and keeps host-local's state
in the test's temp dir. What the plugins change on the host beyond a pod's lifetime is undone
by the module fixture: the bridge, the iptables chains portmap creates (only those that did
not exist before) and net.ipv4.ip_forward (the bridge plugin turns it on for a gateway).
Traffic goes only to pod IPs on that bridge and to loopback.
"""

from __future__ import annotations

import json
import shlex
import shutil
import signal
import subprocess
import time
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import grpc
import pytest

from cri_py.api import api_pb2 as pb
from cri_py.linux.mountinfo import mount_points
from cri_py.linux.namespaces import run_in_netns

from ..unit.network.fake_cni import calls, install_fake_plugins
from .conftest import needs_root, start_daemon
from .test_sandboxes import Pods, ping, pod_config, round_trip, serve_in_pod

DEBIAN_PLUGINS = Path("/usr/lib/cni")
BRIDGE = "cri-pycni0"
NETWORK = "cri-py-cni-test"
SUBNET_PREFIX = "10.98.0."
IP_FORWARD = Path("/proc/sys/net/ipv4/ip_forward")
TABLES = ("nat", "filter", "mangle")

pytestmark = [
    needs_root,
    pytest.mark.skipif(
        not (DEBIAN_PLUGINS / "bridge").exists(),
        reason="needs containernetworking-plugins (apt-get install containernetworking-plugins)",
    ),
    pytest.mark.skipif(shutil.which("iptables") is None, reason="needs iptables (portmap)"),
]


def iptables_rules(table: str) -> list[str]:
    out = subprocess.run(
        ["iptables", "-t", table, "-S"], check=True, capture_output=True, text=True
    ).stdout
    return out.splitlines()


def chains(table: str) -> set[str]:
    return {line.split()[1] for line in iptables_rules(table) if line.startswith("-N ")}


def remove_chains(table: str, names: set[str]) -> None:
    """Deletes the jumps into `names`, then the chains themselves (only these)."""
    for line in iptables_rules(table):
        words = shlex.split(line)
        if words[0] == "-A" and "-j" in words and words[words.index("-j") + 1] in names:
            subprocess.run(["iptables", "-t", table, "-D", *words[1:]], check=False)
    for name in names:
        subprocess.run(["iptables", "-t", table, "-F", name], check=False)
    for name in names:
        subprocess.run(["iptables", "-t", table, "-X", name], check=False)


@pytest.fixture(scope="module", autouse=True)
def host_state() -> Iterator[None]:
    """Puts back what the plugins change on the host beyond one pod."""
    before = {table: chains(table) for table in TABLES}
    forward = IP_FORWARD.read_text()
    try:
        yield
    finally:
        if Path(f"/sys/class/net/{BRIDGE}").exists():
            subprocess.run(["ip", "link", "del", BRIDGE], check=False)
        for table in TABLES:
            remove_chains(table, {c for c in chains(table) - before[table] if c.startswith("CNI-")})
        IP_FORWARD.write_text(forward)


@dataclass
class CniLab:
    base: Path
    conf_dir: Path
    bin_dir: Path  # fake plugins; Debian's come after it in cni_bin_dirs
    ipam_dir: Path
    pods: Pods

    def conflist(self, *extra: dict[str, Any], name: str = "10-test.conflist") -> Path:
        """bridge + host-local, portmap, loopback, then `extra` plugins."""
        document = {
            "cniVersion": "1.0.0",
            "name": NETWORK,
            "plugins": [
                {
                    "type": "bridge",
                    "bridge": BRIDGE,
                    "isGateway": True,
                    "ipMasq": False,
                    "ipam": {
                        "type": "host-local",
                        "ranges": [[{"subnet": "10.98.0.0/24"}]],
                        "dataDir": str(self.ipam_dir),
                    },
                },
                {"type": "portmap", "capabilities": {"portMappings": True}},
                {"type": "loopback"},
                *extra,
            ],
        }
        self.conf_dir.mkdir(exist_ok=True)
        path = self.conf_dir / name
        path.write_text(json.dumps(document))
        return path

    def allocated(self) -> dict[str, str]:
        """host-local's allocations: IP -> container ID."""
        directory = self.ipam_dir / NETWORK
        if not directory.is_dir():
            return {}
        return {
            p.name: p.read_text().split()[0]
            for p in directory.iterdir()
            if p.name.startswith(SUBNET_PREFIX)
        }

    def bridge_ports(self) -> list[str]:
        brif = Path(f"/sys/class/net/{BRIDGE}/brif")
        return sorted(p.name for p in brif.iterdir()) if brif.is_dir() else []

    def network_ready(self) -> pb.RuntimeCondition:
        status = self.pods.daemon.runtime().Status(pb.StatusRequest(), timeout=10).status
        return {c.type: c for c in status.conditions}["NetworkReady"]


def daemon_config(lab_base: Path, bridge: str = "cri-pyt0") -> str:
    return (
        "network:\n"
        f"  bridge: {bridge}\n"
        "  subnet: 10.99.0.0/24\n"
        f"  cni_conf_dir: {lab_base / 'net.d'}\n"
        f"  cni_bin_dirs: [{lab_base / 'bin'}, {DEBIAN_PLUGINS}]\n"
        "  cni_timeout_seconds: 3\n"
    )


@pytest.fixture
def lab(tmp_path: Path) -> Iterator[CniLab]:
    base = tmp_path / "cni"
    base.mkdir()
    install_fake_plugins(base / "bin", "fake-fail", "fake-hang")
    daemon = start_daemon(tmp_path / "daemon", daemon_config(base))
    state = CniLab(base, base / "net.d", base / "bin", base / "ipam", Pods(daemon))
    try:
        yield state
    finally:
        leaks = []
        try:
            for sandbox_id in state.pods.ids:
                state.pods.remove(sandbox_id)
                leaks += state.pods.leftovers(sandbox_id)
        except grpc.RpcError as e:
            leaks.append(f"cleanup RPCs failed: {e}")
        finally:
            leaks += [f"process {pid}" for pid in state.pods.stray_processes()]
            leaks += [f"allocated {ip}" for ip in state.allocated()]
            leaks += [f"bridge port {port}" for port in state.bridge_ports()]
            if leaks:
                state.pods.clean_up_by_hand()
            daemon = state.pods.daemon
            daemon.stop()
        assert not leaks, leaks


def nat_rules_for(ip: str) -> list[str]:
    return [line for line in iptables_rules("nat") if ip in line]


def test_cni_pod_lifecycle_with_host_port(lab: CniLab) -> None:
    lab.conflist()
    ready = lab.network_ready()
    assert ready.status is True, ready.message

    config = pod_config("cniweb")
    config.port_mappings.append(
        pb.PortMapping(protocol=pb.TCP, container_port=8080, host_port=18080, host_ip="127.0.0.1")
    )
    started = time.perf_counter()
    sandbox_id = lab.pods.run(config)
    print(f"RunPodSandbox on CNI took {(time.perf_counter() - started) * 1000:.0f} ms")
    status = lab.pods.status(sandbox_id).status
    ip = status.network.ip
    assert ip.startswith(SUBNET_PREFIX) and ip != f"{SUBNET_PREFIX}1", ip
    assert lab.allocated() == {ip: sandbox_id}
    assert len(lab.bridge_ports()) == 1
    info = lab.pods.info(sandbox_id)
    assert info["network"] == {"kind": "cni", "ip": ip, "additionalIps": []}
    files = lab.pods.daemon.root_dir / "sandboxes" / sandbox_id
    assert f"{ip}\tcniweb\n" in (files / "hosts").read_text()

    # The host reaches the pod on the bridge: ICMP, and TCP to a listener inside the pod.
    assert ping(ip)
    netns = str(info["namespaces"]["net"])  # type: ignore[index]
    lo_flags = run_in_netns(Path(netns), Path("/sys/class/net/lo/flags").read_text)
    assert int(lo_flags, 16) & 1, "lo is up in the pod"
    with serve_in_pod(netns, 8080) as listener:
        assert round_trip(listener, (ip, 8080)) == f"{SUBNET_PREFIX}1"
        # hostPort through portmap's DNAT, from loopback.
        assert nat_rules_for(ip), "portmap added its DNAT rules"
        round_trip(listener, ("127.0.0.1", 18080))

    lab.pods.stop(sandbox_id)
    # DEL ran: the address is back in host-local's pool, the veth and portmap's rules are gone.
    assert lab.allocated() == {}
    assert lab.bridge_ports() == []
    assert nat_rules_for(ip) == []
    assert not (files / "cni.json").exists()
    assert not ping(ip, timeout=0.5)
    lab.pods.stop(sandbox_id)  # idempotent
    lab.pods.remove(sandbox_id)
    assert lab.pods.leftovers(sandbox_id) == []


def test_conf_dir_changes_apply_without_restart(lab: CniLab) -> None:
    # No config yet: the built-in bridge serves new pods.
    first = lab.pods.run(pod_config("before"))
    assert lab.pods.info(first)["network"]["kind"] == "builtin"  # type: ignore[index]

    # A config whose plugin is not installed: not ready, and the reason names the plugin.
    lab.conflist({"type": "cri-py-absent"}, name="20-later.conflist")
    ready = lab.network_ready()
    assert ready.status is False and "plugin cri-py-absent not found" in ready.message
    with pytest.raises(grpc.RpcError) as excinfo:
        lab.pods.run(pod_config("refused"))
    assert excinfo.value.code() == grpc.StatusCode.UNAVAILABLE
    assert "cri-py-absent" in (excinfo.value.details() or "")

    # A usable one sorting first: ready, and the next pod is on CNI; the first one is untouched.
    lab.conflist(name="10-good.conflist")
    assert lab.network_ready().status is True
    second = lab.pods.run(pod_config("after"))
    assert lab.pods.info(second)["network"]["kind"] == "cni"  # type: ignore[index]
    assert lab.pods.status(second).status.network.ip.startswith(SUBNET_PREFIX)
    assert lab.pods.status(first).status.network.ip.startswith("10.99.0.")

    # The config goes away: the CNI pod is still torn down with the config it was set up with.
    for path in lab.conf_dir.iterdir():
        path.unlink()
    assert lab.network_ready().status is True  # the built-in bridge again
    lab.pods.stop(second)
    assert lab.allocated() == {} and lab.bridge_ports() == []


@pytest.mark.parametrize("behaviour", ["fail", "hang"])
def test_failing_plugin_leaves_nothing_behind(lab: CniLab, behaviour: str) -> None:
    lab.conflist(
        {"type": f"fake-{behaviour}", "log": str(lab.base / "calls.log"), "on": {"ADD": behaviour}}
    )
    started = time.monotonic()
    with pytest.raises(grpc.RpcError) as excinfo:
        lab.pods.run(pod_config(f"broken-{behaviour}"))
    elapsed = time.monotonic() - started
    details = excinfo.value.details() or ""
    # The node's plumbing failed, not the request: UNAVAILABLE, and kubelet retries.
    assert excinfo.value.code() == grpc.StatusCode.UNAVAILABLE, details
    assert f"fake-{behaviour} ADD failed" in details
    if behaviour == "hang":
        assert "did not finish within 3s and was killed" in details
        assert elapsed < 15
    # The plugins before it had run (an address was taken, a veth made): DEL undid them.
    assert lab.allocated() == {}
    assert lab.bridge_ports() == []
    daemon = lab.pods.daemon
    assert list((daemon.root_dir / "sandboxes").iterdir()) == []
    assert list((daemon.run_dir / "sandboxes").iterdir()) == []
    mounts = mount_points(Path("/proc/self/mountinfo").read_text())
    assert not [m for m in mounts if m.startswith(str(daemon.run_dir))]
    # The failing plugin got its DEL too, after its ADD.
    assert [c["command"] for c in calls(lab.base / "calls.log")] == ["ADD", "DEL"]


def test_a_failed_del_fails_the_stop_and_a_retry_releases_everything(lab: CniLab) -> None:
    log = lab.base / "calls.log"
    lab.conflist({"type": "fake-fail", "log": str(log), "on": {"DEL": "failonce"}})
    sandbox_id = lab.pods.run(pod_config("delonce"))
    ip = lab.pods.status(sandbox_id).status.network.ip
    assert lab.allocated() == {ip: sandbox_id}
    with pytest.raises(grpc.RpcError) as excinfo:
        lab.pods.stop(sandbox_id)
    assert "fake-fail DEL failed" in (excinfo.value.details() or "")
    assert lab.pods.status(sandbox_id).status.state == pb.SANDBOX_NOTREADY
    # kubelet retries: the DEL succeeds this time and the pod is released, shim and all.
    lab.pods.stop(sandbox_id)
    assert [c["command"] for c in calls(log)] == ["ADD", "DEL", "DEL"]
    assert lab.allocated() == {}
    assert lab.bridge_ports() == []
    assert lab.pods.status(sandbox_id).status.state == pb.SANDBOX_NOTREADY
    lab.pods.remove(sandbox_id)
    assert lab.pods.leftovers(sandbox_id) == []


def test_cni_pods_survive_a_daemon_restart_and_are_deleted_after(lab: CniLab) -> None:
    lab.conflist()
    ids = [lab.pods.run(pod_config(f"cnikeep-{i}")) for i in range(2)]
    ips = {i: lab.pods.status(i).status.network.ip for i in ids}
    assert lab.allocated() == {ip: i for i, ip in ips.items()}
    lab.pods.daemon.stop(signal.SIGKILL)
    # Meanwhile the config is gone: the pods still hold (and will free) their CNI addresses.
    (lab.conf_dir / "10-test.conflist").unlink()
    lab.pods.daemon = start_daemon(lab.pods.daemon.root_dir.parent, daemon_config(lab.base))
    for sandbox_id in ids:
        status = lab.pods.status(sandbox_id).status
        assert status.state == pb.SANDBOX_READY and status.network.ip == ips[sandbox_id]
        assert ping(ips[sandbox_id])
        lab.pods.stop(sandbox_id)
    assert lab.allocated() == {} and lab.bridge_ports() == []
