"""Containers against a real daemon and the lab registry: launch, logs, exec, stop, exit codes,
StartError, isolation, and nothing left behind.

The daemon pulls busybox from the local registry (`make registry images`) through the lab's
mirror config; the tests skip when that registry does not answer. Pods run on the test bridge
`cri-pyt1` (10.95.0.0/24), never on a real cri-py's.
"""

from __future__ import annotations

import contextlib
import json
import os
import re
import resource
import secrets
import socket
import time
from collections.abc import Iterator, Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from unittest import mock

import grpc
import pytest

from cri_py.api import api_pb2 as pb
from cri_py.linux.cgroupfs import Cgroupfs
from cri_py.linux.mountinfo import mount_points

from .conftest import Daemon, needs_root, start_daemon

pytestmark = needs_root

ROOT = Path(__file__).resolve().parents[2]
BUSYBOX = "registry.k8s.io/e2e-test-images/busybox:1.29-2"
# Containers' cgroups go under a parent of the tests' own, removed when the module ends.
CGROUP_PARENT = f"/cri-py-tests/{secrets.token_hex(4)}"
CONFIG = (
    (ROOT / "e2e" / "lab-config.yaml").read_text()
    + "network:\n  bridge: cri-pyt1\n  subnet: 10.95.0.0/24\n  cni_conf_dir: /nonexistent\n"
    + f"cgroups:\n  default_parent: {CGROUP_PARENT}\n"
)


def remove_cgroup_parent(parent: str = CGROUP_PARENT) -> None:
    """A tests' parent and anything left in it (a failed test's; pod cgroups nest), deepest
    first, in every hierarchy; then /cri-py-tests if nothing else is in it."""
    fs = Cgroupfs.from_host()
    for directory in fs.dirs(parent):
        for path, _, _ in sorted(os.walk(directory), key=lambda entry: -len(entry[0])):
            with contextlib.suppress(OSError):
                os.rmdir(path)
    for directory in fs.dirs("/cri-py-tests"):
        with contextlib.suppress(OSError):  # another module's parent may be there
            os.rmdir(directory)


def registry_up() -> bool:
    with contextlib.suppress(OSError), socket.create_connection(("127.0.0.1", 5000), 1):
        return True
    return False


@dataclass
class Lab:
    daemon: Daemon
    logs: Path
    pods: list[str] = field(default_factory=list)
    configs: dict[str, pb.PodSandboxConfig] = field(default_factory=dict)

    def run_pod(
        self,
        name: str,
        pid_mode: int = 1,
        *,
        privileged: bool = False,
        dns: pb.DNSConfig | None = None,
        namespace: str = "test",
    ) -> str:
        config = pb.PodSandboxConfig(
            metadata=pb.PodSandboxMetadata(name=name, uid=f"uid-{name}", namespace=namespace),
            hostname=f"{name}-host",
            log_directory=str(self.logs / name),
            dns_config=dns,
            linux=pb.LinuxPodSandboxConfig(
                security_context=pb.LinuxSandboxSecurityContext(
                    namespace_options=pb.NamespaceOption(pid=pid_mode),  # type: ignore[arg-type]
                    privileged=privileged,
                )
            ),
        )
        return self.run_config(config)

    def run_config(self, config: pb.PodSandboxConfig) -> str:
        """RunPodSandbox with `config`; the pod is recorded for removal and for its config."""
        sandbox_id = (
            self.daemon.runtime()
            .RunPodSandbox(pb.RunPodSandboxRequest(config=config), timeout=30)
            .pod_sandbox_id
        )
        self.pods.append(sandbox_id)
        self.configs[sandbox_id] = config
        return sandbox_id

    def create(self, sandbox_id: str, name: str, command: list[str], pid_mode: int = 1) -> str:
        config = pb.ContainerConfig(
            metadata=pb.ContainerMetadata(name=name),
            image=pb.ImageSpec(image=BUSYBOX),
            command=command,
            log_path=f"{name}.log",
            labels={"test": name},
            linux=pb.LinuxContainerConfig(
                security_context=pb.LinuxContainerSecurityContext(
                    namespace_options=pb.NamespaceOption(pid=pid_mode)  # type: ignore[arg-type]
                )
            ),
        )
        return (
            self.daemon.runtime()
            .CreateContainer(
                pb.CreateContainerRequest(
                    pod_sandbox_id=sandbox_id,
                    config=config,
                    sandbox_config=self.configs[sandbox_id],
                ),
                timeout=30,
            )
            .container_id
        )

    def start(self, container_id: str) -> None:
        self.daemon.runtime().StartContainer(
            pb.StartContainerRequest(container_id=container_id), timeout=30
        )

    def status(self, container_id: str) -> pb.ContainerStatus:
        return (
            self.daemon.runtime()
            .ContainerStatus(pb.ContainerStatusRequest(container_id=container_id), timeout=10)
            .status
        )

    def wait_exited(self, container_id: str, timeout: float = 10) -> pb.ContainerStatus:
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            status = self.status(container_id)
            if status.state == pb.CONTAINER_EXITED:
                return status
            time.sleep(0.05)
        raise AssertionError(f"container {container_id} did not exit within {timeout}s")

    def exec(self, container_id: str, *cmd: str, timeout: int = 10) -> pb.ExecSyncResponse:
        return self.daemon.runtime().ExecSync(
            pb.ExecSyncRequest(container_id=container_id, cmd=list(cmd), timeout=timeout),
            timeout=timeout + 10,
        )

    def remove_pod(self, sandbox_id: str) -> None:
        rt = self.daemon.runtime()
        rt.StopPodSandbox(pb.StopPodSandboxRequest(pod_sandbox_id=sandbox_id), timeout=30)
        rt.RemovePodSandbox(pb.RemovePodSandboxRequest(pod_sandbox_id=sandbox_id), timeout=30)

    def leftovers(self) -> list[str]:
        found = []
        base = str(self.daemon.root_dir.parent)
        found += [m for m in mount_points(Path("/proc/self/mountinfo").read_text()) if base in m]
        containers = self.daemon.root_dir / "containers"
        if containers.exists():
            found += [str(p) for p in containers.iterdir()]
        sandboxes = self.daemon.run_dir / "sandboxes"
        if sandboxes.exists():
            found += [str(p) for p in sandboxes.iterdir()]
        for pid in filter(str.isdigit, os.listdir("/proc")):
            with contextlib.suppress(OSError):
                cmdline = Path(f"/proc/{pid}/cmdline").read_bytes()
                if b"cri_py.shim" in cmdline and base.encode() in cmdline:
                    found.append(f"shim pid {pid}")
        return found


@contextlib.contextmanager
def open_lab(
    base: Path,
    config: str,
    env: Mapping[str, str] | None = None,
    cgroup_parent: str = CGROUP_PARENT,
    pass_fds: Sequence[int] = (),
) -> Iterator[Lab]:
    """A daemon with busybox pulled (its environment plus `env`); on the way out every pod
    the tests made is removed, the daemon stopped and `cgroup_parent` (the config's) cleared,
    even after a failure."""
    if not registry_up():
        pytest.skip("the lab registry on 127.0.0.1:5000 is not running (make registry images)")
    with mock.patch.dict(os.environ, env or {}):
        daemon = start_daemon(base / "daemon", config, pass_fds=pass_fds)
    lab = Lab(daemon, base / "logs")
    try:
        daemon.images().PullImage(
            pb.PullImageRequest(image=pb.ImageSpec(image=BUSYBOX)), timeout=120
        )
        yield lab
    finally:
        for sandbox_id in lab.pods:
            with contextlib.suppress(grpc.RpcError):
                lab.remove_pod(sandbox_id)
        daemon.stop()
        lab.daemon.stop()  # a test may have restarted it
        remove_cgroup_parent(cgroup_parent)


@pytest.fixture(scope="module")
def lab(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Lab]:
    with open_lab(tmp_path_factory.mktemp("containers"), CONFIG) as opened:
        yield opened


def read_log(lab: Lab, sandbox_id: str, name: str) -> list[tuple[str, str, str]]:
    path = Path(lab.configs[sandbox_id].log_directory) / f"{name}.log"
    records = []
    for line in path.read_text().splitlines():
        _, stream, tag, text = line.split(" ", 3)
        records.append((stream, tag, text))
    return records


def test_container_runs_with_its_own_pid_namespace_rootfs_and_the_pods_hostname(lab: Lab) -> None:
    pod = lab.run_pod("basic")
    script = (
        "cat /proc/1/cmdline | tr '\\0' ' '; echo; hostname; ls /; "
        "echo to-stderr >&2; cat /proc/self/mountinfo | wc -l; exit 7"
    )
    cid = lab.create(pod, "basic", ["sh", "-c", script])
    assert lab.status(cid).state == pb.CONTAINER_CREATED
    lab.start(cid)
    status = lab.wait_exited(cid)
    assert (status.exit_code, status.reason) == (7, "Error")
    assert status.started_at <= status.finished_at
    assert status.log_path == str(Path(lab.configs[pod].log_directory) / "basic.log")
    assert status.image_ref.startswith("sha256:") and status.image_id == status.image_ref
    lines = read_log(lab, pod, "basic")
    texts = [text for stream, _, text in lines if stream == "stdout"]
    assert texts[0] == f"sh -c {script} "
    assert texts[1] == "basic-host"
    assert {"bin", "etc", "proc", "dev", "sys"} <= set(texts[2:-1])
    # A handful of container mounts, none of the host's many.
    assert int(texts[-1]) < 30
    assert ("stderr", "F", "to-stderr") in lines
    lab.remove_pod(pod)


def _cgroups_naming(*ids: str) -> list[str]:
    """Directories under the tests' cgroup parent, in any hierarchy, that name one of `ids`."""
    found = []
    for directory in Cgroupfs.from_host().dirs(CGROUP_PARENT):
        for path, _, _ in os.walk(directory):
            if any(i in os.path.basename(path) for i in ids):
                found.append(path)
    return found


def test_removing_an_exited_container_then_its_pod_at_once_leaves_nothing(lab: Lab) -> None:
    pod = lab.run_pod("quick-removal")
    cid = lab.create(pod, "quick", ["true"])
    lab.start(cid)
    lab.wait_exited(cid)
    assert _cgroups_naming(cid)
    rt = lab.daemon.runtime()
    rt.RemoveContainer(pb.RemoveContainerRequest(container_id=cid), timeout=30)
    # At the answer, what a client can see is done: the container is not found, not listed,
    # its name is free, its dir has left the records.
    with pytest.raises(grpc.RpcError) as caught:
        lab.status(cid)
    assert caught.value.code() == grpc.StatusCode.NOT_FOUND
    listed = rt.ListContainers(pb.ListContainersRequest(), timeout=10).containers
    assert cid not in [c.id for c in listed]
    assert not (lab.daemon.root_dir / "containers" / cid).exists()
    again = lab.create(pod, "quick", ["sleep", "1000"])  # never started: RemovePodSandbox's
    # The pod's stop and removal right after wait for what the removal left to do (the
    # shim's forget, the cgroup): nothing of either container or the pod is left.
    lab.remove_pod(pod)
    assert _cgroups_naming(cid, again, pod) == []
    assert list((lab.daemon.root_dir / "removing" / "containers").iterdir()) == []
    images_json = lab.daemon.root_dir / "images" / "images.json"
    deadline = time.monotonic() + 10
    while {cid, again} & set(json.loads(images_json.read_text())["leases"]):
        assert time.monotonic() < deadline, "a removed container's lease stayed"
        time.sleep(0.01)


def test_exec_stop_and_remove_of_a_long_running_container(lab: Lab) -> None:
    pod = lab.run_pod("longrun")
    cid = lab.create(pod, "sleeper", ["sleep", "1000"])
    lab.start(cid)
    assert lab.status(cid).state == pb.CONTAINER_RUNNING
    reply = lab.exec(cid, "echo", "hi")
    assert (reply.stdout, reply.stderr, reply.exit_code) == (b"hi\n", b"", 0)
    assert lab.exec(cid, "sh", "-c", "exit 4").exit_code == 4
    assert lab.exec(cid, "no-such-command").exit_code == 127
    assert lab.exec(cid, "cat", "/proc/1/cmdline").stdout == b"sleep\x001000\x00"
    with pytest.raises(grpc.RpcError) as caught:
        lab.exec(cid, "sleep", "4321", timeout=1)
    assert caught.value.code() == grpc.StatusCode.DEADLINE_EXCEEDED
    assert b"4321" not in lab.exec(cid, "ps").stdout  # the timed-out process is gone
    rt = lab.daemon.runtime()
    started = time.monotonic()
    # PID 1 ignores SIGTERM it has no handler for: SIGKILL after the timeout.
    rt.StopContainer(pb.StopContainerRequest(container_id=cid, timeout=1), timeout=30)
    assert time.monotonic() - started < 5
    status = lab.status(cid)
    assert (status.state, status.exit_code, status.reason) == (pb.CONTAINER_EXITED, 137, "Error")
    rt.StopContainer(pb.StopContainerRequest(container_id=cid, timeout=1), timeout=30)
    rt.StopContainer(pb.StopContainerRequest(container_id="f" * 64, timeout=1), timeout=30)
    rt.RemoveContainer(pb.RemoveContainerRequest(container_id=cid), timeout=30)
    rt.RemoveContainer(pb.RemoveContainerRequest(container_id=cid), timeout=30)
    with pytest.raises(grpc.RpcError) as caught:
        lab.status(cid)
    assert caught.value.code() == grpc.StatusCode.NOT_FOUND
    assert (Path(lab.configs[pod].log_directory) / "sleeper.log").exists()  # the log stays
    # Its image lease is released right after the answer, not waited for: soon no lease
    # names it (a lease left behind would keep the image's layers on disk for ever).
    images_json = lab.daemon.root_dir / "images" / "images.json"
    deadline = time.monotonic() + 10
    while cid in json.loads(images_json.read_text())["leases"]:
        assert time.monotonic() < deadline, "the removed container's lease stayed"
        time.sleep(0.01)
    lab.remove_pod(pod)


def test_long_execs_do_not_hold_up_other_calls(lab: Lab) -> None:
    """The node e2e "PreStop hooks don't exit" spec: looping PreStop hooks are ExecSyncs that
    last until their container is killed. Twenty of them at once (more than the CPUs + 4
    threads asyncio gives by default) must not queue a StopContainer of another container: it
    comes back while every exec is still running."""
    pod = lab.run_pod("busy-execs")
    looping = lab.create(pod, "looping", ["sleep", "1000"])
    other = lab.create(pod, "other", ["sleep", "1000"])
    lab.start(looping)
    lab.start(other)
    rt = lab.daemon.runtime()
    execs = [
        rt.ExecSync.future(
            pb.ExecSyncRequest(container_id=looping, cmd=["sleep", "20"], timeout=60), timeout=90
        )
        for _ in range(20)
    ]
    try:
        deadline = time.monotonic() + 10
        while b"sleep 20" not in lab.exec(looping, "ps").stdout and time.monotonic() < deadline:
            time.sleep(0.1)
        rt.StopContainer(pb.StopContainerRequest(container_id=other, timeout=0), timeout=30)
        assert lab.status(other).state == pb.CONTAINER_EXITED
        assert not [e for e in execs if e.done()], "the stop waited for the execs"
    finally:
        rt.StopContainer(pb.StopContainerRequest(container_id=looping, timeout=0), timeout=30)
        for e in execs:
            e.exception()  # ended with their container
        lab.remove_pod(pod)


def test_a_daemon_holding_more_than_1024_descriptors_runs_a_pods_life(tmp_path: Path) -> None:
    """select() takes descriptors below 1024 only; with ~500 pods the daemon holds more, and
    RunPodSandbox failed with "filedescriptor out of range in select()" (make bench's scale
    scenario). Here the daemon inherits 1100 open descriptors, so every one it opens is past
    1024: a pod's whole life, an exec and the shim's stop must still work."""
    soft, hard = resource.getrlimit(resource.RLIMIT_NOFILE)
    resource.setrlimit(resource.RLIMIT_NOFILE, (max(soft, min(hard, 8192)), hard))
    held = [os.open(os.devnull, os.O_RDONLY) for _ in range(1100)]
    try:
        assert max(held) >= 1100
        with open_lab(tmp_path, CONFIG, pass_fds=held) as many:
            sandbox_id = many.run_pod("many-fds")
            container_id = many.create(sandbox_id, "c", ["sh", "-c", "echo up; sleep 1000"])
            many.start(container_id)
            assert many.status(container_id).state == pb.CONTAINER_RUNNING
            assert many.exec(container_id, "true").exit_code == 0
            many.remove_pod(sandbox_id)
            many.pods.remove(sandbox_id)
            assert many.leftovers() == []
    finally:
        for fd in held:
            os.close(fd)
        resource.setrlimit(resource.RLIMIT_NOFILE, (soft, hard))


def test_missing_binary_fails_start_with_start_error(lab: Lab) -> None:
    pod = lab.run_pod("missing")
    cid = lab.create(pod, "missing", ["no-such-binary"])
    with pytest.raises(grpc.RpcError) as caught:
        lab.start(cid)
    assert "no-such-binary" in (caught.value.details() or "")
    status = lab.status(cid)
    assert (status.state, status.exit_code, status.reason) == (
        pb.CONTAINER_EXITED,
        128,
        "StartError",
    )
    assert "executable file not found" in status.message
    lab.remove_pod(pod)


def test_two_containers_share_the_network_but_not_their_processes(lab: Lab) -> None:
    pod = lab.run_pod("pair")
    server = lab.create(pod, "server", ["sh", "-c", "echo pong | nc -l -p 8080; sleep 1000"])
    client = lab.create(pod, "client", ["sleep", "1000"])
    lab.start(server)
    lab.start(client)
    processes = lab.exec(client, "ps").stdout
    assert b"nc -l" not in processes and processes.count(b"\n") == 3  # header, sleep, ps
    connect = "for i in 1 2 3 4 5; do nc 127.0.0.1 8080 && break; sleep 0.2; done"
    reply = lab.exec(client, "sh", "-c", connect)
    assert reply.stdout == b"pong\n"
    rt = lab.daemon.runtime()
    listed = rt.ListContainers(
        pb.ListContainersRequest(
            filter=pb.ContainerFilter(pod_sandbox_id=pod, label_selector={"test": "client"})
        )
    ).containers
    assert [c.id for c in listed] == [client]
    # Stopping the pod stops its containers, with their exits recorded.
    rt.StopPodSandbox(pb.StopPodSandboxRequest(pod_sandbox_id=pod), timeout=30)
    assert lab.status(server).state == pb.CONTAINER_EXITED
    assert lab.status(client).exit_code == 137
    rt.RemovePodSandbox(pb.RemovePodSandboxRequest(pod_sandbox_id=pod), timeout=30)
    assert rt.ListContainers(pb.ListContainersRequest()).containers == []


def test_long_log_lines_are_split_and_nothing_is_lost(lab: Lab) -> None:
    pod = lab.run_pod("chatty")
    # 40 lines of 50000 bytes each: each becomes 3 partial lines and one full line.
    script = (
        "i=0; while [ $i -lt 40 ]; do head -c 50000 /dev/zero | tr '\\0' x; echo; i=$((i+1)); done"
    )
    cid = lab.create(pod, "chatty", ["sh", "-c", script])
    lab.start(cid)
    assert lab.wait_exited(cid).exit_code == 0
    lines = read_log(lab, pod, "chatty")
    assert all(len(text) <= 16 * 1024 for _, _, text in lines)
    assert [tag for _, tag, _ in lines] == ["P", "P", "P", "F"] * 40
    assert sum(len(text) for _, _, text in lines) == 40 * 50000
    lab.remove_pod(pod)


def test_100_mb_of_long_lines_parse_in_cri_format_with_nothing_lost(lab: Lab) -> None:
    pod = lab.run_pod("flood")
    lines_wanted, width = 2000, 50_000  # 100 MB of output in lines longer than 16 KiB
    script = (
        f"i=0; while [ $i -lt {lines_wanted} ]; do head -c {width} /dev/zero | tr '\\0' y; "
        "echo; i=$((i+1)); done"
    )
    cid = lab.create(pod, "flood", ["sh", "-c", script])
    lab.start(cid)
    assert lab.wait_exited(cid, timeout=300).exit_code == 0
    path = Path(lab.configs[pod].log_directory) / "flood.log"
    total = full_lines = 0
    # Go's RFC3339Nano, as kubelet parses it: trailing zeros of the fraction are dropped.
    stamp = re.compile(r"^\d{4}-\d\d-\d\dT\d\d:\d\d:\d\d(\.\d{1,9})?(Z|[+-]\d\d:\d\d)$")
    with path.open("rb") as log_file:
        for raw in log_file:
            timestamp, stream, tag, text = raw.rstrip(b"\n").split(b" ", 3)
            assert stamp.match(timestamp.decode()), timestamp
            assert (stream, tag in (b"P", b"F")) == (b"stdout", True)
            assert len(text) <= 16 * 1024
            assert text.strip(b"y") == b""
            total += len(text)
            full_lines += tag == b"F"
    assert (total, full_lines) == (lines_wanted * width, lines_wanted)
    lab.remove_pod(pod)


def test_nothing_is_left_behind(lab: Lab) -> None:
    # Runs last in this module: every test above removed its pods.
    assert lab.leftovers() == []
