"""Pod sandboxes against a real daemon: namespaces, pins, the built-in bridge, leaks, restarts.

The daemons here use their own bridge, `cri-pyt0` with 10.99.0.0/24, so they never touch a real
cri-py's `cri-py0`. That bridge is created once and left in place between tests (it is cheap and
holds nothing); every per-pod veth, pin, mount, shim and address must be gone after each test,
which the `pods` fixture checks and, on failure, cleans up by hand (only what the test made).
"""

from __future__ import annotations

import contextlib
import json
import os
import signal
import socket
import struct
import time
from collections.abc import Iterator
from dataclasses import dataclass, field
from pathlib import Path

import grpc
import pytest

from cri_py.api import api_pb2 as pb
from cri_py.linux.mountinfo import mount_points
from cri_py.linux.namespaces import run_in_netns, unpin_namespace
from cri_py.network.bridge import veth_name
from cri_py.shim.client import process_start_time

from .conftest import Daemon, needs_root, start_daemon

pytestmark = needs_root

BRIDGE = "cri-pyt0"
SUBNET_PREFIX = "10.99.0."
CONFIG = f"network:\n  bridge: {BRIDGE}\n  subnet: 10.99.0.0/24\n  cni_conf_dir: /nonexistent\n"


def pod_config(name: str, **linux: object) -> pb.PodSandboxConfig:
    return pb.PodSandboxConfig(
        metadata=pb.PodSandboxMetadata(name=name, uid=f"uid-{name}", namespace="test", attempt=0),
        hostname=name,
        labels={"app": name, "suite": "sandboxes"},
        annotations={"note": f"pod {name}"},
        linux=pb.LinuxPodSandboxConfig(**linux),  # type: ignore[arg-type]
    )


def ping(ip: str, timeout: float = 2.0) -> bool:
    """One ICMP echo from the host to `ip` (raw socket: no ping binary needed)."""

    def checksum(data: bytes) -> int:
        total = sum(struct.unpack(f"!{len(data) // 2}H", data))
        total = (total >> 16) + (total & 0xFFFF)
        return ~(total + (total >> 16)) & 0xFFFF

    ident = os.getpid() & 0xFFFF
    payload = b"cri-py-test!"
    header = struct.pack("!BBHHH", 8, 0, 0, ident, 1)
    packet = struct.pack("!BBHHH", 8, 0, checksum(header + payload), ident, 1) + payload
    with socket.socket(socket.AF_INET, socket.SOCK_RAW, socket.IPPROTO_ICMP) as s:
        s.settimeout(timeout)
        s.sendto(packet, (ip, 0))
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            try:
                data, (source, _) = s.recvfrom(1024)
            except TimeoutError:
                return False
            offset = (data[0] & 0xF) * 4
            kind, _, _, reply_id, _ = struct.unpack("!BBHHH", data[offset : offset + 8])
            if source == ip and kind == 0 and reply_id == ident:
                return True
    return False


@dataclass
class Pods:
    """Runs pods through the daemon, remembering what to clean up by hand if the test fails."""

    daemon: Daemon
    ids: list[str] = field(default_factory=list)
    shims: dict[str, tuple[int, int]] = field(default_factory=dict)  # id -> (pid, start time)

    def run(self, config: pb.PodSandboxConfig) -> str:
        sandbox_id = (
            self.daemon.runtime()
            .RunPodSandbox(pb.RunPodSandboxRequest(config=config), timeout=30)
            .pod_sandbox_id
        )
        self.ids.append(sandbox_id)
        info = self.info(sandbox_id)
        self.shims[sandbox_id] = (info["pid"], process_start_time(info["pid"]) or -1)
        return sandbox_id

    def status(self, sandbox_id: str, verbose: bool = False) -> pb.PodSandboxStatusResponse:
        return self.daemon.runtime().PodSandboxStatus(
            pb.PodSandboxStatusRequest(pod_sandbox_id=sandbox_id, verbose=verbose), timeout=10
        )

    def info(self, sandbox_id: str) -> dict[str, object]:
        info: dict[str, object] = json.loads(self.status(sandbox_id, verbose=True).info["info"])
        return info

    def stop(self, sandbox_id: str) -> None:
        self.daemon.runtime().StopPodSandbox(
            pb.StopPodSandboxRequest(pod_sandbox_id=sandbox_id), timeout=30
        )

    def remove(self, sandbox_id: str) -> None:
        self.daemon.runtime().RemovePodSandbox(
            pb.RemovePodSandboxRequest(pod_sandbox_id=sandbox_id), timeout=30
        )

    def shim_alive(self, sandbox_id: str) -> bool:
        pid, start = self.shims[sandbox_id]
        return process_start_time(pid) == start

    def leftovers(self, sandbox_id: str) -> list[str]:
        """Everything of this pod still on the host (empty when it is fully removed)."""
        found = []
        mounts = mount_points(Path("/proc/self/mountinfo").read_text())
        found += [f"mount {m}" for m in mounts if sandbox_id in m]
        if Path(f"/sys/class/net/{veth_name(sandbox_id)}").exists():
            found.append(f"veth {veth_name(sandbox_id)}")
        if sandbox_id in self.shims and self.shim_alive(sandbox_id):
            found.append(f"shim pid {self.shims[sandbox_id][0]}")
        allocations = self.daemon.root_dir / "network" / "allocations.json"
        if allocations.exists() and sandbox_id in allocations.read_text():
            found.append("allocated IP")
        for directory in (self.daemon.root_dir / "sandboxes", self.daemon.run_dir / "sandboxes"):
            if (directory / sandbox_id).exists():
                found.append(f"dir {directory / sandbox_id}")
        return found

    def stray_processes(self) -> list[int]:
        """Shims (or their pod-init) started for this test's run dir that are still running."""
        marker = f"{self.daemon.run_dir}/sandboxes/".encode()
        found = []
        for proc in Path("/proc").iterdir():
            if proc.name.isdigit():
                with contextlib.suppress(OSError):
                    if marker in (proc / "cmdline").read_bytes():
                        found.append(int(proc.name))
        return found

    def clean_up_by_hand(self) -> None:
        """Last resort when the RPCs failed: only PIDs, mounts and links this test made."""
        for pid in self.stray_processes():
            with contextlib.suppress(ProcessLookupError):
                os.kill(pid, signal.SIGKILL)
        for sandbox_id in self.ids:
            if sandbox_id in self.shims and self.shim_alive(sandbox_id):
                with contextlib.suppress(ProcessLookupError):
                    os.kill(self.shims[sandbox_id][0], signal.SIGKILL)
            mounts = mount_points(Path("/proc/self/mountinfo").read_text())
            for m in sorted(mounts, reverse=True):
                if sandbox_id in m and m.startswith(str(self.daemon.run_dir)):
                    unpin_namespace(Path(m))
            if Path(f"/sys/class/net/{veth_name(sandbox_id)}").exists():
                os.system(f"ip link del {veth_name(sandbox_id)}")


@pytest.fixture
def pods(tmp_path: Path) -> Iterator[Pods]:
    daemon = start_daemon(tmp_path / "daemon", CONFIG)
    state = Pods(daemon)
    try:
        yield state
    finally:
        leaks = []
        try:
            for sandbox_id in state.ids:
                state.remove(sandbox_id)
                leaks += state.leftovers(sandbox_id)
        except grpc.RpcError:
            leaks.append("cleanup RPCs failed")
        finally:
            leaks += [f"process {pid}" for pid in state.stray_processes()]
            if leaks:
                state.clean_up_by_hand()
            state.daemon.stop()
        assert not leaks, leaks


def test_network_is_ready_with_the_builtin_bridge(pods: Pods) -> None:
    status = pods.daemon.runtime().Status(pb.StatusRequest(), timeout=10).status
    network = {c.type: c for c in status.conditions}["NetworkReady"]
    assert network.status is True, network.message


def test_pod_lifecycle_leaves_nothing_behind(pods: Pods) -> None:
    config = pod_config("web", sysctls={"net.ipv4.ip_unprivileged_port_start": "80"})
    config.dns_config.CopyFrom(pb.DNSConfig(servers=["10.96.0.10"], options=["ndots:5"]))
    started = time.perf_counter()
    sandbox_id = pods.run(config)
    print(f"RunPodSandbox took {(time.perf_counter() - started) * 1000:.0f} ms")

    status = pods.status(sandbox_id).status
    assert status.state == pb.SANDBOX_READY
    assert status.network.ip.startswith(SUBNET_PREFIX)
    assert dict(status.labels) == {"app": "web", "suite": "sandboxes"}
    assert dict(status.annotations) == {"note": "pod web"}
    assert ping(status.network.ip)

    info = pods.info(sandbox_id)
    pins = info["namespaces"]
    assert isinstance(pins, dict) and set(pins) == {"net", "ipc", "uts", "pid"}
    pid = info["pid"]
    for kind, path in pins.items():
        target = info["initPid"] if kind == "pid" else pid
        assert os.stat(path).st_ino == os.stat(f"/proc/{target}/ns/{kind}").st_ino
        assert os.stat(path).st_ino != os.stat(f"/proc/self/ns/{kind}").st_ino
    netns = pins["net"]
    sysctl = Path("/proc/sys/net/ipv4/ip_unprivileged_port_start")
    assert run_in_netns(Path(str(netns)), sysctl.read_text).strip() == "80"
    assert Path(str(netns)).exists()
    files = pods.daemon.root_dir / "sandboxes" / sandbox_id
    assert (files / "hostname").read_text() == "web\n"
    assert (files / "resolv.conf").read_text() == "nameserver 10.96.0.10\noptions ndots:5\n"
    assert f"{status.network.ip}\tweb\n" in (files / "hosts").read_text()
    assert str(info["shmPath"]) in mount_points(Path("/proc/self/mountinfo").read_text())

    listed = (
        pods.daemon.runtime()
        .ListPodSandbox(
            pb.ListPodSandboxRequest(
                filter=pb.PodSandboxFilter(
                    id=sandbox_id[:12],
                    state=pb.PodSandboxStateValue(state=pb.SANDBOX_READY),
                    label_selector={"app": "web"},
                )
            ),
            timeout=10,
        )
        .items
    )
    assert [p.id for p in listed] == [sandbox_id]

    pods.stop(sandbox_id)
    pods.stop(sandbox_id)  # idempotent
    assert pods.status(sandbox_id).status.state == pb.SANDBOX_NOTREADY
    assert not pods.shim_alive(sandbox_id)
    assert not ping(status.network.ip, timeout=0.5)
    left = pods.leftovers(sandbox_id)
    assert all(item.startswith("dir ") for item in left), left

    pods.remove(sandbox_id)
    pods.remove(sandbox_id)  # idempotent
    assert pods.leftovers(sandbox_id) == []
    with pytest.raises(grpc.RpcError) as excinfo:
        pods.status(sandbox_id)
    assert excinfo.value.code() == grpc.StatusCode.NOT_FOUND


def test_stop_and_remove_of_unknown_ids_are_ok(pods: Pods) -> None:
    pods.stop("f" * 64)
    pods.remove("f" * 64)


def test_same_metadata_twice_is_already_exists_naming_the_first(pods: Pods) -> None:
    first = pods.run(pod_config("dup"))
    with pytest.raises(grpc.RpcError) as excinfo:
        pods.run(pod_config("dup"))
    assert excinfo.value.code() == grpc.StatusCode.ALREADY_EXISTS
    assert first in (excinfo.value.details() or "")


@pytest.mark.parametrize(
    ("request_", "code"),
    [
        (pb.RunPodSandboxRequest(config=pod_config("h"), runtime_handler="kata"), "INVALID"),
        (
            pb.RunPodSandboxRequest(config=pod_config("s", sysctls={"vm.swappiness": "1"})),
            "INVALID",
        ),
        (
            pb.RunPodSandboxRequest(
                config=pod_config("bad", sysctls={"net.ipv4.ip_unprivileged_port_start": "x"})
            ),
            "INTERNAL",
        ),
    ],
)
def test_failed_run_leaves_nothing_behind(
    pods: Pods, request_: pb.RunPodSandboxRequest, code: str
) -> None:
    with pytest.raises(grpc.RpcError) as excinfo:
        pods.daemon.runtime().RunPodSandbox(request_, timeout=30)
    assert excinfo.value.code().name.startswith(code), excinfo.value.details()
    assert list((pods.daemon.root_dir / "sandboxes").iterdir()) == []
    assert list((pods.daemon.run_dir / "sandboxes").iterdir()) == []
    mounts = mount_points(Path("/proc/self/mountinfo").read_text())
    assert not [m for m in mounts if m.startswith(str(pods.daemon.run_dir))]
    allocations = pods.daemon.root_dir / "network" / "allocations.json"
    assert not allocations.exists() or json.loads(allocations.read_text())["allocations"] == {}
    # The name is free again.
    pods.run(pod_config(request_.config.metadata.name))


def test_host_namespaces_are_shared_when_asked(pods: Pods) -> None:
    options = pb.NamespaceOption(network=pb.NODE, ipc=pb.NODE, pid=pb.CONTAINER)
    config = pod_config(
        "hostnet",
        security_context=pb.LinuxSandboxSecurityContext(namespace_options=options),
    )
    sandbox_id = pods.run(config)
    status = pods.status(sandbox_id).status
    assert status.state == pb.SANDBOX_READY and status.network.ip == ""
    info = pods.info(sandbox_id)
    assert info["namespaces"] == {} and info["shmPath"] == "/dev/shm"
    for kind in ("net", "ipc", "uts", "pid"):
        assert (
            os.stat(f"/proc/{info['pid']}/ns/{kind}").st_ino
            == os.stat(f"/proc/self/ns/{kind}").st_ino
        )
    assert info["hostname"] == os.uname().nodename


def wait_for(predicate: object, timeout: float = 10.0) -> None:
    deadline = time.monotonic() + timeout
    while not predicate():  # type: ignore[operator]
        if time.monotonic() > deadline:
            raise AssertionError(f"condition not met within {timeout}s")
        time.sleep(0.05)


def test_dead_shim_makes_the_pod_notready_and_stop_still_cleans_up(pods: Pods) -> None:
    sandbox_id = pods.run(pod_config("victim"))
    os.kill(pods.shims[sandbox_id][0], signal.SIGKILL)
    wait_for(lambda: pods.status(sandbox_id).status.state == pb.SANDBOX_NOTREADY)
    pods.stop(sandbox_id)
    assert not Path(f"/sys/class/net/{veth_name(sandbox_id)}").exists()


def test_sigkilled_daemon_restarts_with_pods_ready_and_same_ips(pods: Pods) -> None:
    ids = [pods.run(pod_config(f"keep-{i}")) for i in range(5)]
    ips = {i: pods.status(i).status.network.ip for i in ids}
    assert len(set(ips.values())) == 5
    pods.daemon.stop(signal.SIGKILL)
    base = pods.daemon.root_dir.parent
    pods.daemon = start_daemon(base, CONFIG)
    listed = pods.daemon.runtime().ListPodSandbox(pb.ListPodSandboxRequest(), timeout=10).items
    assert {p.id: p.state for p in listed} == {i: pb.SANDBOX_READY for i in ids}
    for sandbox_id in ids:
        assert pods.shim_alive(sandbox_id), "the shim must survive the daemon"
        assert pods.status(sandbox_id).status.network.ip == ips[sandbox_id]
        assert ping(ips[sandbox_id])
    new = pods.run(pod_config("after-restart"))
    assert pods.status(new).status.network.ip not in ips.values()


def serve_in_pod(netns: str, port: int) -> socket.socket:
    """A TCP listener on all of the pod's addresses (the socket stays in the pod's netns)."""
    return run_in_netns(Path(netns), lambda: socket.create_server(("0.0.0.0", port)))


def round_trip(listener: socket.socket, address: tuple[str, int]) -> str:
    """Connects to `address`, which must reach `listener`; returns the peer the pod saw."""
    listener.settimeout(5)
    with socket.create_connection(address, timeout=5) as client:
        server, peer = listener.accept()
        with server:
            server.sendall(b"hello from the pod")
            assert client.recv(100) == b"hello from the pod"
    return str(peer[0])


def test_builtin_network_serves_host_ports_until_the_pod_stops(pods: Pods) -> None:
    config = pod_config("web")
    config.port_mappings.add(container_port=8080, host_port=18181, host_ip="127.0.0.1")
    sandbox_id = pods.run(config)
    # The port is taken while the pod lives: a second pod asking for it fails cleanly.
    clash = pod_config("web-clash")
    clash.port_mappings.add(container_port=8080, host_port=18181, host_ip="127.0.0.1")
    with pytest.raises(grpc.RpcError) as excinfo:
        pods.run(clash)
    assert "hostPort 127.0.0.1:18181" in (excinfo.value.details() or "")
    netns = str(pods.daemon.run_dir / "sandboxes" / sandbox_id / "ns" / "net")
    with serve_in_pod(netns, 8080) as listener:
        # The pod sees the relay's connection from the bridge address.
        assert round_trip(listener, ("127.0.0.1", 18181)) == "10.99.0.1"
        pods.stop(sandbox_id)
        with pytest.raises(OSError):
            socket.create_connection(("127.0.0.1", 18181), timeout=2).close()


def template_pids(daemon: Daemon) -> list[int]:
    """The shim templates this daemon started, in order (from its log)."""
    found = []
    for line in daemon.log().splitlines():
        if "shim template ready" in line:
            found.append(int(line.split(" pid=")[1].split()[0]))
    return found


def stat_fields(pid: int | str) -> list[str] | None:
    """/proc/<pid>/stat after the command name (state first, then the parent's PID); None
    when the process is gone."""
    try:
        stat = Path(f"/proc/{pid}/stat").read_text()
    except OSError:
        return None
    return stat[stat.rindex(")") + 2 :].split()


def running(pid: int) -> bool:
    fields = stat_fields(pid)
    return fields is not None and fields[0] not in "ZX"


def spares(template: int) -> list[int]:
    """The template's children that still show its command line: the next shim, waiting."""
    found = []
    for name in filter(str.isdigit, os.listdir("/proc")):
        with contextlib.suppress(OSError):
            cmdline = Path(f"/proc/{name}/cmdline").read_bytes().rstrip(b"\0")
            state, parent = (stat_fields(name) or ["X", "0"])[:2]
            waiting = state not in "ZX" and cmdline.endswith(b"cri_py.shim.zygote")
            if waiting and int(parent) == template:
                found.append(int(name))
    return found


def test_a_killed_spare_shim_is_replaced_and_goes_with_its_template(pods: Pods) -> None:
    """The template forks each pod's shim ahead of its request. A spare killed while it
    waits costs nothing but a fork: the next pod starts. A spare never outlives its template."""
    first = pods.run(pod_config("spare-first"))
    [template] = template_pids(pods.daemon)
    wait_for(lambda: len(spares(template)) == 1)
    [spare] = spares(template)
    os.kill(spare, signal.SIGKILL)
    wait_for(lambda: not running(spare))
    second = pods.run(pod_config("spare-second"))
    assert pods.status(second).status.state == pb.SANDBOX_READY
    assert spare not in (pods.shims[first][0], pods.shims[second][0])
    wait_for(lambda: len(spares(template)) == 1)
    [spare] = spares(template)
    os.kill(template, signal.SIGKILL)
    wait_for(lambda: not running(spare))
    assert pods.shim_alive(first) and pods.shim_alive(second)


def test_shims_are_forked_from_a_template_that_may_die(pods: Pods) -> None:
    first = pods.run(pod_config("forked"))
    shim_pid = pods.shims[first][0]
    cmdline = Path(f"/proc/{shim_pid}/cmdline").read_bytes().rstrip(b"\0").split(b"\0")
    # Shown as an exec'd shim would be: found by its bundle path like any other.
    assert cmdline[-3:] == [
        b"-m",
        b"cri_py.shim",
        str(pods.daemon.run_dir / "sandboxes" / first).encode(),
    ]
    [template] = template_pids(pods.daemon)
    assert (
        Path(f"/proc/{template}/cmdline").read_bytes().rstrip(b"\0").endswith(b"cri_py.shim.zygote")
    )
    os.kill(template, signal.SIGKILL)
    wait_for(lambda: process_start_time(template) is None)
    assert pods.shim_alive(first)  # the pod's shim outlives the template that forked it
    second = pods.run(pod_config("after-template"))
    assert pods.status(second).status.state == pb.SANDBOX_READY
    assert pods.status(first).status.state == pb.SANDBOX_READY
    assert len(template_pids(pods.daemon)) == 2  # a new template took over
