"""Concurrency: 50 pods started at once, each with a running container, while a kubelet-style
poller lists pods, containers and their stats every second; then everything is removed and
nothing is left (no veth on the bridge, no cgroup under the tests' parent, no shim).

The daemon runs on its own bridge `cri-pyc0` (10.82.0.0/24) with its own cgroup parent.
"""

from __future__ import annotations

import contextlib
import ipaddress
import os
import secrets
import threading
import time
from collections.abc import Iterator
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

import grpc
import pytest

from cri_py.api import api_pb2 as pb
from cri_py.linux.cgroupfs import Cgroupfs

from .conftest import needs_root, start_daemon
from .test_containers import BUSYBOX, ROOT, Lab, registry_up

pytestmark = needs_root

PODS = 50
BRIDGE = "cri-pyc0"
SUBNET = ipaddress.ip_network("10.82.0.0/24")
CGROUP_PARENT = f"/cri-py-tests/concurrency-{secrets.token_hex(4)}"
CONFIG = (
    (ROOT / "e2e" / "lab-config.yaml").read_text()
    + f"network:\n  bridge: {BRIDGE}\n  subnet: {SUBNET}\n  cni_conf_dir: /nonexistent\n"
    + f"cgroups:\n  default_parent: {CGROUP_PARENT}\n"
)
# Generous: two shared cores start 50 shims and 50 containers at once.
CALL_TIMEOUT = 180


def cgroups_left() -> list[str]:
    return [
        str(child)
        for directory in Cgroupfs.from_host().dirs(CGROUP_PARENT)
        if directory.is_dir()
        for child in directory.iterdir()
        if child.is_dir()
    ]


def remove_cgroup_parent() -> None:
    """The tests' parent and what a failed test left in it (pod cgroups nest), deepest first."""
    for directory in Cgroupfs.from_host().dirs(CGROUP_PARENT):
        for path, _, _ in sorted(os.walk(directory), key=lambda e: -len(e[0])):
            with contextlib.suppress(OSError):
                os.rmdir(path)


def bridge_ports() -> list[str]:
    ports = Path(f"/sys/class/net/{BRIDGE}/brif")
    return sorted(os.listdir(ports)) if ports.is_dir() else []


@pytest.fixture(scope="module")
def lab(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Lab]:
    if not registry_up():
        pytest.skip("the lab registry on 127.0.0.1:5000 is not running (make registry images)")
    base = tmp_path_factory.mktemp("concurrency")
    daemon = start_daemon(base / "daemon", CONFIG, "--log-level", "info")
    lab = Lab(daemon, base / "logs")
    try:
        daemon.images().PullImage(
            pb.PullImageRequest(image=pb.ImageSpec(image=BUSYBOX)), timeout=120
        )
        yield lab
    finally:
        with contextlib.suppress(grpc.RpcError):
            for pod in daemon.runtime().ListPodSandbox(pb.ListPodSandboxRequest()).items:
                with contextlib.suppress(grpc.RpcError):
                    lab.remove_pod(pod.id)
        daemon.stop()
        remove_cgroup_parent()


class Poller(threading.Thread):
    """kubelet's relist and stats loops: the four List calls, once a second, over one channel."""

    def __init__(self, lab: Lab) -> None:
        super().__init__(daemon=True)
        self.rt = lab.daemon.runtime()
        self.stop = threading.Event()
        self.rounds = 0
        self.errors: list[str] = []

    def run(self) -> None:
        while not self.stop.is_set():
            for name, request in (
                ("ListPodSandbox", pb.ListPodSandboxRequest()),
                ("ListContainers", pb.ListContainersRequest()),
                ("ListContainerStats", pb.ListContainerStatsRequest()),
                ("ListPodSandboxStats", pb.ListPodSandboxStatsRequest()),
            ):
                try:
                    getattr(self.rt, name)(request, timeout=30)
                except grpc.RpcError as e:
                    self.errors.append(f"{name}: {e.code().name} {e.details()}")
            self.rounds += 1
            self.stop.wait(1.0)


def start_pod(lab: Lab, index: int) -> tuple[str, str]:
    rt = lab.daemon.runtime()
    name = f"conc-{index}"
    config = pb.PodSandboxConfig(
        metadata=pb.PodSandboxMetadata(name=name, uid=f"uid-{name}", namespace="concurrency"),
        hostname=name,
        log_directory=str(lab.logs / name),
    )
    pod = rt.RunPodSandbox(pb.RunPodSandboxRequest(config=config), timeout=CALL_TIMEOUT)
    container = rt.CreateContainer(
        pb.CreateContainerRequest(
            pod_sandbox_id=pod.pod_sandbox_id,
            config=pb.ContainerConfig(
                metadata=pb.ContainerMetadata(name="sleeper"),
                image=pb.ImageSpec(image=BUSYBOX),
                command=["sleep", "100000"],
                log_path="sleeper.log",
            ),
            sandbox_config=config,
        ),
        timeout=CALL_TIMEOUT,
    )
    rt.StartContainer(
        pb.StartContainerRequest(container_id=container.container_id), timeout=CALL_TIMEOUT
    )
    return pod.pod_sandbox_id, container.container_id


def remove_pod(lab: Lab, sandbox_id: str) -> None:
    rt = lab.daemon.runtime()
    rt.StopPodSandbox(pb.StopPodSandboxRequest(pod_sandbox_id=sandbox_id), timeout=CALL_TIMEOUT)
    rt.RemovePodSandbox(pb.RemovePodSandboxRequest(pod_sandbox_id=sandbox_id), timeout=CALL_TIMEOUT)


def test_50_pods_start_at_once_with_distinct_ips_under_polling_and_leave_nothing(
    lab: Lab,
) -> None:
    rt = lab.daemon.runtime()
    poller = Poller(lab)
    poller.start()
    try:
        started = time.monotonic()
        with ThreadPoolExecutor(max_workers=PODS) as pool:
            results = list(pool.map(lambda i: start_pod(lab, i), range(PODS)))
        wall = time.monotonic() - started
        print(f"\n{PODS} x (RunPodSandbox + CreateContainer + StartContainer): {wall:.1f}s")
        lab.pods.extend(pod for pod, _ in results)

        ips = [
            rt.PodSandboxStatus(pb.PodSandboxStatusRequest(pod_sandbox_id=pod)).status.network.ip
            for pod, _ in results
        ]
        assert len(set(ips)) == PODS, ips
        assert all(ipaddress.ip_address(ip) in SUBNET for ip in ips), ips
        states = {c.id: c.state for c in rt.ListContainers(pb.ListContainersRequest()).containers}
        assert [states[cid] for _, cid in results] == [pb.CONTAINER_RUNNING] * PODS
        assert len(bridge_ports()) == PODS
        assert len(rt.ListContainerStats(pb.ListContainerStatsRequest()).stats) == PODS

        with ThreadPoolExecutor(max_workers=PODS) as pool:
            list(pool.map(lambda pod: remove_pod(lab, pod), [pod for pod, _ in results]))
        lab.pods.clear()
    finally:
        poller.stop.set()
        poller.join(timeout=60)
    assert poller.errors == []
    assert poller.rounds >= 2
    assert rt.ListPodSandbox(pb.ListPodSandboxRequest()).items == []
    assert rt.ListContainers(pb.ListContainersRequest()).containers == []
    assert bridge_ports() == []
    assert cgroups_left() == []
    assert lab.leftovers() == []
