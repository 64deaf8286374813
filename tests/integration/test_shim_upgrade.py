"""An in-place daemon upgrade: pods whose shim the previous release started keep working.

The previous release's `cri_py/` (commit 26f9c6f, the last before the shim protocol had
versions) is extracted from the repository's history and its daemon runs a pod and two
containers; it stops (its shims keep running, as under `KillMode=process`), this tree's daemon
starts on the same dirs, recovers, and must exec into, attach to, stop and remove what the old
shim holds, leaving nothing behind. Needs root and the lab registry, like test_containers.py.
"""

from __future__ import annotations

import contextlib
import os
import signal
import subprocess
import tarfile
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from unittest import mock

import grpc
import pytest

from cri_py.api import api_pb2 as pb
from cri_py.shim import protocol
from cri_py.shim.client import ShimClient, process_start_time

from .conftest import needs_root, start_daemon
from .test_containers import (
    BUSYBOX,
    CGROUP_PARENT,
    ROOT,
    Lab,
    registry_up,
    remove_cgroup_parent,
)
from .test_streaming import CRICTL, attach_and_detach, crictl, start_container

pytestmark = needs_root

# The previous release: its shims speak protocol version 1 and report no version.
PREVIOUS_RELEASE = "26f9c6f"


def lab_config() -> str:
    """The previous release's lab config (an older daemon refuses keys added since), with this
    test's network and cgroup parent; both daemons read it."""
    shown = subprocess.run(
        ["git", "-C", str(ROOT), "show", f"{PREVIOUS_RELEASE}:e2e/lab-config.yaml"],
        capture_output=True,
        check=False,
    )
    if shown.returncode != 0:
        pytest.fail(f"e2e/lab-config.yaml of {PREVIOUS_RELEASE}: {shown.stderr!r}", pytrace=False)
    return (
        shown.stdout.decode()
        + "network:\n  bridge: cri-pytu\n  subnet: 10.74.0.0/24\n  cni_conf_dir: /nonexistent\n"
        + f"cgroups:\n  default_parent: {CGROUP_PARENT}\n"
    )


def extract_previous_release(into: Path) -> Path:
    """The previous release's `cri_py/` under `into`; fails (never skips) without it."""
    archive = subprocess.run(
        ["git", "-C", str(ROOT), "archive", PREVIOUS_RELEASE, "cri_py"],
        capture_output=True,
        check=False,
    )
    if archive.returncode != 0:
        pytest.fail(
            f"commit {PREVIOUS_RELEASE} (the previous release) is not in {ROOT}'s history: "
            f"{archive.stderr.decode(errors='replace').strip()}; fetch the full history",
            pytrace=False,
        )
    into.mkdir(parents=True)
    archive_file = into.parent / "previous.tar"
    archive_file.write_bytes(archive.stdout)
    with tarfile.open(archive_file) as tar:
        tar.extractall(into, filter="data")
    assert (into / "cri_py" / "shim" / "main.py").is_file()
    return into


def shim_pids(base: Path) -> list[int]:
    found = []
    for pid in filter(str.isdigit, os.listdir("/proc")):
        with contextlib.suppress(OSError):
            cmdline = Path(f"/proc/{pid}/cmdline").read_bytes()
            if b"cri_py.shim" in cmdline and str(base).encode() in cmdline:
                found.append(int(pid))
    return found


def environ(pid: int) -> dict[str, str]:
    entries = Path(f"/proc/{pid}/environ").read_bytes().split(b"\0")
    return dict(e.decode().partition("=")[::2] for e in entries if e)


@dataclass
class Upgraded:
    lab: Lab
    pod: str
    sleeper: str
    shell: str
    shim_pid: int
    bundle: Path


@pytest.fixture(scope="module")
def upgraded(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Upgraded]:
    base = tmp_path_factory.mktemp("upgrade")
    old_tree = extract_previous_release(base / "previous")
    config = lab_config()
    if not registry_up():
        pytest.skip("the lab registry on 127.0.0.1:5000 is not running (make registry images)")
    # `python -m` puts the working dir first on sys.path: there, the old cri_py is imported.
    with mock.patch.dict(os.environ, {"PYTHONPATH": str(old_tree)}), contextlib.chdir(old_tree):
        old = start_daemon(base / "daemon", config)
    lab = Lab(old, base / "logs")
    try:
        old.images().PullImage(pb.PullImageRequest(image=pb.ImageSpec(image=BUSYBOX)), timeout=120)
        pod = lab.run_pod("upgrade")
        sleeper = start_container(lab, pod, "sleeper", ["sleep", "1000"])
        shell = start_container(lab, pod, "shell", ["sh"], stdin=True)
        bundle = old.run_dir / "sandboxes" / pod
        (shim_pid,) = shim_pids(bundle)
        # The old release's shim indeed: its code, and no protocol version in its answers.
        assert environ(shim_pid)["PYTHONPATH"] == str(old_tree)
        assert environ(old.process.pid).get("PYTHONPATH") == str(old_tree)
        assert ShimClient(bundle).version() == 1
        started = process_start_time(shim_pid)

        assert old.stop() == 0
        assert process_start_time(shim_pid) == started, "the shim must outlive the old daemon"
        assert "PYTHONPATH" not in os.environ
        lab.daemon = start_daemon(base / "daemon", config)
        assert "PYTHONPATH" not in environ(lab.daemon.process.pid)
        yield Upgraded(lab, pod, sleeper, shell, shim_pid, bundle)
    finally:
        for sandbox_id in lab.pods:
            with contextlib.suppress(grpc.RpcError):
                lab.remove_pod(sandbox_id)
        lab.daemon.stop()
        if old.process.poll() is None:
            old.stop()
        for pid in shim_pids(base):  # only after a failure: a shim no daemon could stop
            with contextlib.suppress(ProcessLookupError):
                os.kill(pid, signal.SIGKILL)
        remove_cgroup_parent()


def test_the_new_daemon_recovers_the_old_shims_pod_and_containers(upgraded: Upgraded) -> None:
    lab = upgraded.lab
    rt = lab.daemon.runtime()
    status = rt.PodSandboxStatus(pb.PodSandboxStatusRequest(pod_sandbox_id=upgraded.pod))
    assert status.status.state == pb.SANDBOX_READY
    for container_id in (upgraded.sleeper, upgraded.shell):
        assert lab.status(container_id).state == pb.CONTAINER_RUNNING
    assert shim_pids(upgraded.bundle) == [upgraded.shim_pid]
    assert ShimClient(upgraded.bundle).version() < protocol.PROTOCOL_VERSION
    # Recovery subscribed to it and noted the older protocol.
    assert "shim of another release" in lab.daemon.log()


def test_exec_sync_runs_in_a_container_of_the_old_shim(upgraded: Upgraded) -> None:
    lab = upgraded.lab
    done = lab.exec(upgraded.sleeper, "sh", "-c", "echo out-$((6*7)); echo err >&2; exit 3")
    assert (done.stdout, done.stderr, done.exit_code) == (b"out-42\n", b"err\n", 3)
    # In the container itself: its PID namespace, where sleep is PID 1.
    assert lab.exec(upgraded.sleeper, "cat", "/proc/1/cmdline").stdout == b"sleep\x001000\x00"
    with pytest.raises(grpc.RpcError) as excinfo:
        lab.exec(upgraded.sleeper, "sleep", "30", timeout=1)
    assert excinfo.value.code() == grpc.StatusCode.DEADLINE_EXCEEDED


def test_streaming_exec_attach_and_log_reopen_through_the_old_shim(upgraded: Upgraded) -> None:
    if not CRICTL.exists():
        pytest.skip(f"{CRICTL} not installed")
    lab = upgraded.lab
    done = crictl(lab, "exec", "-i", upgraded.sleeper, "sh", "-c", "cat; echo more", input=b"in\n")
    assert (done.returncode, done.stdout) == (0, b"in\nmore\n"), done.stderr
    command = [str(CRICTL), "--runtime-endpoint", lab.daemon.address, "attach", "-i"]
    attach_and_detach([*command, upgraded.shell])
    # kubelet's log rotation: the old shim reopens the log file it writes.
    log = Path(lab.configs[upgraded.pod].log_directory) / "shell.log"
    log.rename(log.with_suffix(".1"))
    lab.daemon.runtime().ReopenContainerLog(
        pb.ReopenContainerLogRequest(container_id=upgraded.shell), timeout=10
    )
    assert log.exists()
    assert lab.status(upgraded.shell).state == pb.CONTAINER_RUNNING


def test_stop_and_remove_of_the_old_shims_containers_and_pod_leave_nothing(
    upgraded: Upgraded,
) -> None:
    lab = upgraded.lab
    rt = lab.daemon.runtime()
    # sleep is its PID namespace's init: it ignores SIGTERM, so the stop ends in SIGKILL.
    rt.StopContainer(pb.StopContainerRequest(container_id=upgraded.sleeper, timeout=1), timeout=30)
    status = lab.status(upgraded.sleeper)
    assert (status.state, status.exit_code) == (pb.CONTAINER_EXITED, 137)
    rt.RemoveContainer(pb.RemoveContainerRequest(container_id=upgraded.sleeper), timeout=30)
    assert not (lab.daemon.root_dir / "containers" / upgraded.sleeper).exists()
    listed = rt.ListContainers(pb.ListContainersRequest(), timeout=10).containers
    assert [c.id for c in listed] == [upgraded.shell]
    rt.StopPodSandbox(pb.StopPodSandboxRequest(pod_sandbox_id=upgraded.pod), timeout=30)
    assert lab.status(upgraded.shell).state == pb.CONTAINER_EXITED
    assert process_start_time(upgraded.shim_pid) is None, "the old shim must be gone"
    rt.RemovePodSandbox(pb.RemovePodSandboxRequest(pod_sandbox_id=upgraded.pod), timeout=30)
    lab.pods.remove(upgraded.pod)
    assert rt.ListContainers(pb.ListContainersRequest(), timeout=10).containers == []
    assert lab.leftovers() == []
