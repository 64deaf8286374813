#!/usr/bin/env python3
"""`make test-faults`: pod lifecycles from concurrent clients while the daemon is SIGKILLed.

Several client threads each run pod lifecycles (RunPodSandbox, CreateContainer,
StartContainer, ExecSync, StopContainer, RemoveContainer, StopPodSandbox, RemovePodSandbox)
against one daemon, retrying through UNAVAILABLE the way kubelet does (a lost answer is found
again by listing, by the object's metadata). Meanwhile the daemon is killed with SIGKILL at
seeded random points (in its start-up, or amid the calls after a drawn number of completed
lifecycles) and restarted at once. After the run: every pod a client was told
exists is listed (or its client removed it), every container reported running is running and
answers exec, and the leak checker finds nothing, with the kept pods alive and once they are
removed. Needs root and the lab registry (make registry images).

Own state root (a temp dir), bridge cri-pyf0 (10.90.0.0/24), cgroup parent /cri-py-tests/faults.
"""

from __future__ import annotations

import argparse
import contextlib
import math
import os
import random
import shutil
import signal
import subprocess
import sys
import tempfile
import threading
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import TypeVar

import grpc
import yaml

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

from cri_py.api import api_pb2 as pb  # noqa: E402
from cri_py.api import api_pb2_grpc as pb_grpc  # noqa: E402
from cri_py.config import Config, parse_layers  # noqa: E402
from cri_py.linux import syscalls  # noqa: E402
from cri_py.linux.cgroupfs import Cgroupfs  # noqa: E402
from cri_py.linux.mountinfo import mount_points  # noqa: E402
from cri_py.runtime.leaks import Leak, find_leaks  # noqa: E402

BUSYBOX = "registry.k8s.io/e2e-test-images/busybox:1.29-2"
BRIDGE = "cri-pyf0"
SUBNET = "10.90.0.0/24"
CGROUP_PARENT = "/cri-py-tests/faults"
RPC_TIMEOUT = 30.0
# Give up on one RPC after this long of retrying (the daemon is down ~1 s per kill).
RETRY_SECONDS = 120.0
# Transport-level failures: the daemon died (or was not up yet) under the call.
RETRYABLE = (grpc.StatusCode.UNAVAILABLE, grpc.StatusCode.DEADLINE_EXCEEDED)

T = TypeVar("T")


def config_yaml() -> str:
    return (
        (ROOT / "e2e" / "lab-config.yaml").read_text()
        + f"network:\n  bridge: {BRIDGE}\n  subnet: {SUBNET}\n  cni_conf_dir: /nonexistent\n"
        + f"cgroups:\n  default_parent: {CGROUP_PARENT}\n  shim_cgroup: {CGROUP_PARENT}/shims\n"
    )


class Daemon:
    """One `cri-py serve` at a time under `base`; killed and restarted by the killer."""

    def __init__(self, base: Path) -> None:
        self.base = base
        self.config_file = base / "config.yaml"
        self.config_file.write_text(config_yaml())
        self.root_dir = base / "root"
        self.run_dir = base / "run"
        self.socket = self.run_dir / "cri-py.sock"
        self.log_file = base / "daemon.log"
        self.process: subprocess.Popen[bytes] | None = None
        self.starts = 0

    @property
    def address(self) -> str:
        return f"unix://{self.socket}"

    def config(self) -> Config:
        """The daemon's effective config, as `cri-py debug leaks` would load it."""
        overrides = {
            "root_dir": str(self.root_dir),
            "run_dir": str(self.run_dir),
            "socket": str(self.socket),
        }
        return parse_layers(
            [("faults", yaml.safe_load(self.config_file.read_text())), ("flags", overrides)]
        )

    def start(self) -> None:
        args = [
            sys.executable,
            "-m",
            "cri_py.cli",
            "serve",
            "--config",
            str(self.config_file),
            "--config-dir",
            str(self.base / "config.d"),
            "--root-dir",
            str(self.root_dir),
            "--run-dir",
            str(self.run_dir),
            "--socket",
            str(self.socket),
            "--log-level",
            "info",
        ]
        with self.log_file.open("ab") as out:
            out.write(f"--- start {self.starts} ---\n".encode())
            out.flush()
            self.process = subprocess.Popen(args, stdout=out, stderr=subprocess.STDOUT, cwd=ROOT)
        self.starts += 1

    def kill(self) -> None:
        if self.process is not None and self.process.poll() is None:
            self.process.send_signal(signal.SIGKILL)
            self.process.wait(30)

    def stop(self) -> None:
        if self.process is not None and self.process.poll() is None:
            self.process.send_signal(signal.SIGTERM)
            try:
                self.process.wait(30)
            except subprocess.TimeoutExpired:
                self.kill()

    def wait_serving(self, timeout: float = 60.0) -> None:
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            assert self.process is not None
            if self.process.poll() is not None:
                raise RuntimeError(f"daemon exited {self.process.returncode}; see {self.log_file}")
            with contextlib.suppress(grpc.RpcError):
                with grpc.insecure_channel(self.address) as channel:
                    pb_grpc.RuntimeServiceStub(channel).Version(pb.VersionRequest(), timeout=1)
                return
            time.sleep(0.1)
        raise RuntimeError(f"daemon did not serve within {timeout}s; see {self.log_file}")


@dataclass
class Outcome:
    """What the clients were told, and what went wrong."""

    lifecycles: int = 0
    retries: int = 0
    adopted: int = 0  # answers lost to a kill, found again by listing
    kept_pods: dict[str, str] = field(default_factory=dict)  # sandbox ID -> container ID
    created_pods: set[str] = field(default_factory=set)
    removed_pods: set[str] = field(default_factory=set)
    failures: list[str] = field(default_factory=list)
    lock: threading.Lock = field(default_factory=threading.Lock)

    def fail(self, message: str) -> None:
        with self.lock:
            self.failures.append(message)
        print(f"FAILURE: {message}", flush=True)


class Client:
    """One kubelet-like client: retries through the daemon's deaths, a fresh channel each time
    (gRPC's reconnect backoff would otherwise grow to minutes)."""

    def __init__(self, daemon: Daemon, outcome: Outcome, name: str) -> None:
        self.daemon = daemon
        self.outcome = outcome
        self.name = name

    def call(self, what: str, rpc: Callable[[pb_grpc.RuntimeServiceStub], T]) -> T:
        deadline = time.monotonic() + RETRY_SECONDS
        while True:
            try:
                with grpc.insecure_channel(self.daemon.address) as channel:
                    return rpc(pb_grpc.RuntimeServiceStub(channel))
            except grpc.RpcError as e:
                code = e.code()  # type: ignore[attr-defined]
                if code not in RETRYABLE or time.monotonic() > deadline:
                    raise
            with self.outcome.lock:
                self.outcome.retries += 1
            time.sleep(0.2)

    def run_pod(self, config: pb.PodSandboxConfig) -> str:
        request = pb.RunPodSandboxRequest(config=config)
        try:
            return self.call(
                "RunPodSandbox", lambda s: s.RunPodSandbox(request, timeout=RPC_TIMEOUT)
            ).pod_sandbox_id
        except grpc.RpcError as e:
            if e.code() != grpc.StatusCode.ALREADY_EXISTS:  # type: ignore[attr-defined]
                raise
        # An earlier try got through before the daemon died: find it as kubelet does.
        listed = self.call(
            "ListPodSandbox",
            lambda s: s.ListPodSandbox(pb.ListPodSandboxRequest(), timeout=RPC_TIMEOUT),
        ).items
        m = config.metadata
        for pod in listed:
            pm = pod.metadata
            if (pm.name, pm.uid, pm.namespace, pm.attempt) == (m.name, m.uid, m.namespace, 0):
                with self.outcome.lock:
                    self.outcome.adopted += 1
                return str(pod.id)
        raise AssertionError(f"pod {m.name}: name already used, yet no such pod is listed")

    def create(self, sandbox_id: str, sandbox: pb.PodSandboxConfig) -> str:
        config = pb.ContainerConfig(
            metadata=pb.ContainerMetadata(name="main"),
            image=pb.ImageSpec(image=BUSYBOX),
            command=["sleep", "3600"],
            log_path="main.log",
        )
        request = pb.CreateContainerRequest(
            pod_sandbox_id=sandbox_id, config=config, sandbox_config=sandbox
        )
        try:
            return self.call(
                "CreateContainer", lambda s: s.CreateContainer(request, timeout=RPC_TIMEOUT)
            ).container_id
        except grpc.RpcError as e:
            if e.code() != grpc.StatusCode.ALREADY_EXISTS:  # type: ignore[attr-defined]
                raise
        listed = self.call(
            "ListContainers",
            lambda s: s.ListContainers(
                pb.ListContainersRequest(filter=pb.ContainerFilter(pod_sandbox_id=sandbox_id)),
                timeout=RPC_TIMEOUT,
            ),
        ).containers
        for container in listed:
            if container.metadata.name == "main":
                with self.outcome.lock:
                    self.outcome.adopted += 1
                return str(container.id)
        raise AssertionError(f"pod {sandbox_id}: container name used, yet none is listed")

    def start(self, container_id: str) -> None:
        request = pb.StartContainerRequest(container_id=container_id)
        try:
            self.call("StartContainer", lambda s: s.StartContainer(request, timeout=RPC_TIMEOUT))
            return
        except grpc.RpcError as e:
            if e.code() != grpc.StatusCode.FAILED_PRECONDITION:  # type: ignore[attr-defined]
                raise
            details = e.details()  # type: ignore[attr-defined]
        # An earlier try started it before the daemon died: it must be running now.
        state = self.container_state(container_id)
        if state != pb.CONTAINER_RUNNING:
            raise AssertionError(
                f"container {container_id}: start refused ({details}) and it is "
                f"{pb.ContainerState.Name(state)}"
            )

    def container_state(self, container_id: str) -> int:
        request = pb.ContainerStatusRequest(container_id=container_id)
        return int(
            self.call(
                "ContainerStatus", lambda s: s.ContainerStatus(request, timeout=RPC_TIMEOUT)
            ).status.state
        )

    def exec(self, container_id: str) -> None:
        request = pb.ExecSyncRequest(container_id=container_id, cmd=["echo", "alive"], timeout=10)
        answer = self.call("ExecSync", lambda s: s.ExecSync(request, timeout=RPC_TIMEOUT))
        if answer.exit_code != 0 or answer.stdout != b"alive\n":
            raise AssertionError(f"exec in {container_id}: {answer.exit_code} {answer.stdout!r}")

    def remove_pod(self, sandbox_id: str, container_id: str) -> None:
        self.call(
            "StopContainer",
            lambda s: s.StopContainer(
                pb.StopContainerRequest(container_id=container_id, timeout=0), timeout=RPC_TIMEOUT
            ),
        )
        self.call(
            "RemoveContainer",
            lambda s: s.RemoveContainer(
                pb.RemoveContainerRequest(container_id=container_id), timeout=RPC_TIMEOUT
            ),
        )
        self.call(
            "StopPodSandbox",
            lambda s: s.StopPodSandbox(
                pb.StopPodSandboxRequest(pod_sandbox_id=sandbox_id), timeout=RPC_TIMEOUT
            ),
        )
        self.call(
            "RemovePodSandbox",
            lambda s: s.RemovePodSandbox(
                pb.RemovePodSandboxRequest(pod_sandbox_id=sandbox_id), timeout=RPC_TIMEOUT
            ),
        )

    def lifecycle(self, index: int, keep: bool) -> None:
        name = f"{self.name}-{index}"
        config = pb.PodSandboxConfig(
            metadata=pb.PodSandboxMetadata(name=name, uid=f"uid-{name}", namespace="faults"),
            hostname=name,
            log_directory=str(self.daemon.base / "logs" / name),
            labels={"suite": "faults"},
        )
        sandbox_id = self.run_pod(config)
        with self.outcome.lock:
            self.outcome.created_pods.add(sandbox_id)
        container_id = self.create(sandbox_id, config)
        self.start(container_id)
        self.exec(container_id)
        if keep:
            with self.outcome.lock:
                self.outcome.kept_pods[sandbox_id] = container_id
            return
        self.remove_pod(sandbox_id, container_id)
        with self.outcome.lock:
            self.outcome.removed_pods.add(sandbox_id)

    def run(self, indexes: list[int], keep: set[int], pace: Pace) -> None:
        for index in indexes:
            pace.wait_turn(self.outcome)
            try:
                self.lifecycle(index, index in keep)
            except (grpc.RpcError, AssertionError) as e:
                detail = e.details() if isinstance(e, grpc.RpcError) else str(e)  # type: ignore[attr-defined]
                code = e.code().name if isinstance(e, grpc.RpcError) else "assert"  # type: ignore[attr-defined]
                self.outcome.fail(f"{self.name} lifecycle {index}: {code}: {detail}")
                continue
            with self.outcome.lock:
                self.outcome.lifecycles += 1


class Pace:
    """Keeps the clients from running past the killer: a client starts no new lifecycle while
    the completed ones number `slack` or more past the point of the next kill still to be made.
    Without it a fast daemon finishes the run before the schedule's kills are all made (CI saw
    19 of 30 in a 36 s run); the slack keeps lifecycles in flight when a kill lands."""

    def __init__(self, slack: int) -> None:
        self.slack = slack
        self.next_point: float = 0
        self.changed = threading.Condition()

    def kill_at(self, point: float) -> None:
        with self.changed:
            self.next_point = point
            self.changed.notify_all()

    def wait_turn(self, outcome: Outcome) -> None:
        with self.changed:
            self.changed.wait_for(lambda: outcome.lifecycles < self.next_point + self.slack)


def killer(
    daemon: Daemon,
    rng: random.Random,
    stop: threading.Event,
    kills: list[str],
    outcome: Outcome,
    pace: Pace,
    count: int,
    lifecycles: int,
    early: float,
) -> None:
    """`count` SIGKILLs, each followed by an immediate restart. The schedule comes from the
    seeded `rng`: each kill either lands within 1.5 s of the previous restart (in start-up and
    recovery; with probability `early`), or 0.1-1.5 s after the daemon serves again once the
    clients have completed a drawn number of lifecycles. `pace` holds the clients back until
    each kill is made, so kills spread over the whole run however fast the machine is."""
    points = sorted(rng.randrange(max(1, lifecycles * 9 // 10)) for _ in range(count))
    try:
        for point in points:
            pace.kill_at(point)
            during_startup = rng.random() < early
            delay = rng.uniform(0.0, 1.5) if during_startup else rng.uniform(0.1, 1.5)
            if not during_startup:
                while outcome.lifecycles < point and not stop.is_set():
                    time.sleep(0.05)
                with contextlib.suppress(RuntimeError):
                    daemon.wait_serving()
            if stop.wait(delay):
                return
            daemon.kill()
            kills.append("startup" if during_startup else "serving")
            daemon.start()
    finally:
        pace.kill_at(math.inf)  # no kills left to wait for, or the killer failed


def verify_kept(daemon: Daemon, outcome: Outcome) -> None:
    """Every pod told created is listed unless its client removed it; kept containers run."""
    client = Client(daemon, outcome, "verify")
    pods = client.call(
        "ListPodSandbox",
        lambda s: s.ListPodSandbox(pb.ListPodSandboxRequest(), timeout=RPC_TIMEOUT),
    ).items
    listed = {p.id: p.state for p in pods}
    for sandbox_id in sorted(outcome.created_pods - outcome.removed_pods):
        if sandbox_id not in listed:
            outcome.fail(f"pod {sandbox_id} was reported created but is not listed")
    for sandbox_id in sorted(outcome.removed_pods):
        if sandbox_id in listed:
            outcome.fail(f"pod {sandbox_id} was removed but is still listed")
    for sandbox_id, container_id in sorted(outcome.kept_pods.items()):
        if listed.get(sandbox_id) != pb.SANDBOX_READY:
            outcome.fail(f"kept pod {sandbox_id} is not READY")
        state = client.container_state(container_id)
        if state != pb.CONTAINER_RUNNING:
            outcome.fail(f"container {container_id} reported running is {state}")
            continue
        try:
            client.exec(container_id)
        except (grpc.RpcError, AssertionError) as e:
            outcome.fail(f"exec in kept container {container_id}: {e}")
    stray = set(listed) - outcome.created_pods
    for sandbox_id in sorted(stray):
        outcome.fail(f"pod {sandbox_id} is listed but no client was told of it")


def check_leaks(daemon: Daemon, outcome: Outcome, when: str) -> list[Leak]:
    leaks = find_leaks(daemon.config())
    for leak in leaks:
        outcome.fail(f"leak {when}: {leak}")
    return leaks


def clean_up_by_hand(daemon: Daemon) -> None:
    """After a failed run: only what this run's state root and bridge hold."""
    base = str(daemon.base)
    for pid in filter(str.isdigit, os.listdir("/proc")):
        with contextlib.suppress(OSError):
            if base.encode() in Path(f"/proc/{pid}/cmdline").read_bytes():
                os.kill(int(pid), signal.SIGKILL)
    for point in sorted(mount_points(Path("/proc/self/mountinfo").read_text()), reverse=True):
        if point.startswith(base + "/"):
            with contextlib.suppress(OSError):
                syscalls.umount2(Path(point), syscalls.MNT_DETACH)
    with contextlib.suppress(OSError):
        for port in os.listdir(f"/sys/class/net/{BRIDGE}/brif"):
            subprocess.run(["ip", "link", "del", port], capture_output=True, check=False)
    with contextlib.suppress(OSError):
        fs = Cgroupfs.from_host()
        for directory in fs.dirs(CGROUP_PARENT):
            for top, dirs, _ in os.walk(directory, topdown=False):
                for name in dirs:  # a pod's cgroup holds its containers': leaves first
                    with contextlib.suppress(OSError):
                        os.rmdir(os.path.join(top, name))


def remove_cgroup_parent() -> None:
    with contextlib.suppress(OSError):
        fs = Cgroupfs.from_host()
        for cgroup in (f"{CGROUP_PARENT}/shims", CGROUP_PARENT, "/cri-py-tests"):
            for directory in fs.dirs(cgroup):
                with contextlib.suppress(OSError):
                    os.rmdir(directory)


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--lifecycles", type=int, default=200)
    parser.add_argument("--clients", type=int, default=4)
    parser.add_argument("--min-kills", type=int, default=20)
    parser.add_argument("--seed", type=int, default=None, help="default: a random one")
    parser.add_argument(
        "--kills", type=int, default=0, help="kills to make (default: 1.5 x --min-kills)"
    )
    parser.add_argument(
        "--keep-every",
        type=int,
        default=10,
        help="every Nth lifecycle leaves its pod running for the final checks",
    )
    parser.add_argument("--keep-state", action="store_true", help="leave the temp dir")
    parser.add_argument(
        "--early",
        type=float,
        default=0.25,
        help="share of kills made during the daemon's start-up and recovery",
    )
    args = parser.parse_args()
    if os.geteuid() != 0:
        print("test-faults needs root", file=sys.stderr)
        return 2
    seed = args.seed if args.seed is not None else random.SystemRandom().randrange(2**32)
    rng = random.Random(seed)
    print(f"seed {seed}", flush=True)
    base = Path(tempfile.mkdtemp(prefix="cri-py-faults-"))
    daemon = Daemon(base)
    outcome = Outcome()
    kills: list[str] = []
    started = time.monotonic()
    ok = False
    try:
        daemon.start()
        daemon.wait_serving()
        with grpc.insecure_channel(daemon.address) as channel:
            pb_grpc.ImageServiceStub(channel).PullImage(
                pb.PullImageRequest(image=pb.ImageSpec(image=BUSYBOX)), timeout=120
            )
        # Lifecycles dealt round-robin; which are kept is part of the seeded schedule.
        keep = {i for i in range(args.lifecycles) if rng.randrange(args.keep_every) == 0}
        pace = Pace(slack=2 * args.clients)
        clients = [
            threading.Thread(
                target=Client(daemon, outcome, f"c{n}").run,
                args=(list(range(n, args.lifecycles, args.clients)), keep, pace),
                daemon=True,
            )
            for n in range(args.clients)
        ]
        stop = threading.Event()
        kill_thread = threading.Thread(
            target=killer,
            args=(
                daemon,
                random.Random(rng.random()),
                stop,
                kills,
                outcome,
                pace,
                args.kills or args.min_kills * 3 // 2,
                args.lifecycles,
                args.early,
            ),
            daemon=True,
        )
        kill_thread.start()
        for thread in clients:
            thread.start()
        for thread in clients:
            thread.join()
        stop.set()
        kill_thread.join()
        daemon.wait_serving()
        verify_kept(daemon, outcome)
        leaks = check_leaks(daemon, outcome, "with the kept pods running")
        for sandbox_id, container_id in outcome.kept_pods.items():
            Client(daemon, outcome, "cleanup").remove_pod(sandbox_id, container_id)
        leaks += check_leaks(daemon, outcome, "after removing every pod")
        daemon.stop()
        leaks += check_leaks(daemon, outcome, "after the daemon stopped")
        duration = time.monotonic() - started
        print(
            f"seed {seed}: {outcome.lifecycles}/{args.lifecycles} lifecycles, "
            f"{len(kills)} daemon kills ({kills.count('startup')} in start-up), "
            f"{outcome.retries} retried RPCs, "
            f"{outcome.adopted} lost answers found by listing, {len(outcome.kept_pods)} pods "
            f"kept through the run, {len(leaks)} leaks, {duration:.0f} s",
            flush=True,
        )
        if len(kills) < args.min_kills:
            outcome.fail(f"only {len(kills)} kills (wanted >= {args.min_kills})")
        if outcome.lifecycles < args.lifecycles:
            outcome.fail(f"only {outcome.lifecycles} of {args.lifecycles} lifecycles completed")
        ok = not outcome.failures
    finally:
        daemon.kill()
        if not ok:
            clean_up_by_hand(daemon)
        remove_cgroup_parent()
        subprocess.run(["ip", "link", "del", BRIDGE], capture_output=True, check=False)
        if args.keep_state or not ok:
            print(f"state kept in {base} (daemon log: {daemon.log_file})")
        else:
            shutil.rmtree(base, ignore_errors=True)
    for failure in outcome.failures:
        print(f"  {failure}")
    print("PASS" if ok else f"FAIL ({len(outcome.failures)} problems; seed {seed})")
    return 0 if ok else 1


if __name__ == "__main__":
    sys.exit(main())
