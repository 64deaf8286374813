"""CRI benchmark: cri-py, and with `--compare containerd` containerd, same machine, same run.

Talks CRI v1 over each runtime's socket with cri-py's generated stubs, alternating the runtime
that goes first every round so that machine noise hits both alike. What it measures (each
latency as min / p50 / p90 / max; the cri-py/containerd ratio is of p50):

- each call of a pod's life with the image cached: RunPodSandbox, CreateContainer,
  StartContainer, StopContainer, RemoveContainer, StopPodSandbox, RemovePodSandbox; the pod
  plus a running container from scratch (Run + Create + Start) and the whole life;
- 10 and 50 pods (each with one container) started in parallel: wall time until all run;
- ListPodSandbox / ListContainers / ContainerStatus with 100 pods present;
- ExecSync round trip (`true` in a running container);
- PullImage of a multi-layer image into a cold store (removed before each pull);
- memory: daemon RSS idle and with 10 / 50 pods; PSS of every runtime process but the daemon
  (shims and what they forked, e.g. pause; cri-py's shim template) per running pod; the
  containers' own processes are not counted;
- CPU time of the daemon and its shims (and what they ran: runc, CNI plugins) per pod life,
  from cpuacct cgroups the bench puts them in;
- scale: pods grow to 1, 10, 50, 100, 250, 500 in each runtime (one runtime at a time); at
  each N, RunPodSandbox of a pod more, ListPodSandbox / ListContainers, daemon RSS and PSS per
  pod (plotted against N in scale.png);
- critest's own benchmarks (`critest -benchmark`, bench/critest_bench.py), once per round:
  pod, container and image lifecycles call by call, image listing, a pod with a running
  container from scratch.

Writes <out>/results.json, results.md and latency.png; prints the markdown table.

Usage (as root): .venv/bin/python bench/compare.py [--compare containerd] [--rounds N]
Needs the lab registry (`make registry images`) and critest (`make tools-cri`); for containerd,
`apt-get install containerd runc` (bench/apt-packages.txt). Every process it starts is stopped
by PID at the end, and its mounts, netns, bridge, cgroups and state dirs are removed.
"""

from __future__ import annotations

import argparse
import contextlib
import datetime
import os
import secrets
import sys
import time
from collections.abc import Callable
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

import grpc

sys.path.insert(0, str(Path(__file__).resolve().parent))

import critest_bench
import report
from runtimes import (
    PAUSE_IMAGE,
    Containerd,
    CriPy,
    Runtime,
    cleanup_host,
    netns_names,
    rss_kb,
    smaps_kb,
    write_cni_conflist,
)

from cri_py.api import api_pb2 as pb
from cri_py.api import api_pb2_grpc as pb_grpc

BUSYBOX = "registry.k8s.io/e2e-test-images/busybox:1.29-2"
PULL_IMAGE = "registry.k8s.io/e2e-test-images/nginx:1.14-2"
# Exits on SIGTERM (as PID 1 the shell has no default handler), so StopContainer is a real stop.
# The pod's UID follows as $0, so the bench can find the shell and wait for its trap.
SCRIPT = "trap 'exit 0' TERM; sleep 100000 & wait"
SIGTERM_BIT = 1 << 14  # SIGTERM (15) in /proc/<pid>/status SigCgt


def wait_trap(marker: str, timeout: float = 10.0) -> None:
    """Until the container's shell has its SIGTERM trap: a stop sent before it would be
    ignored (PID 1) and wait out the stop timeout. Not timed."""
    deadline = time.monotonic() + timeout
    needle = f"{SCRIPT}\0{marker}\0".encode()
    while time.monotonic() < deadline:
        for entry in os.listdir("/proc"):
            if not entry.isdigit():
                continue
            try:
                if Path(f"/proc/{entry}/cmdline").read_bytes().endswith(needle):
                    status = Path(f"/proc/{entry}/status").read_text()
                    caught = int(status.split("SigCgt:")[1].split()[0], 16)
                    if caught & SIGTERM_BIT:
                        return
            except (OSError, IndexError, ValueError):
                continue
        time.sleep(0.005)


TIMEOUT = 120

Samples = dict[str, dict[str, list[float]]]  # measure -> runtime -> values
SCENARIOS = ("life", "exec", "pull", "parallel", "lists", "critest", "scale")
# Pods present at each step of the scale scenario (kubelet's maxPods is 110, 250 on big nodes).
SCALE_LEVELS = (1, 10, 50, 100, 250, 500)


class Bench:
    def __init__(self, runtimes: list[Runtime], rounds: int, tag: str) -> None:
        self.runtimes = runtimes
        self.rounds = rounds
        self.tag = tag
        self.samples: Samples = {}
        self.counter = 0

    def record(self, measure: str, runtime: Runtime, value: float) -> None:
        self.samples.setdefault(measure, {}).setdefault(runtime.name, []).append(value)

    def order(self, round_no: int) -> list[Runtime]:
        return self.runtimes if round_no % 2 == 0 else list(reversed(self.runtimes))

    # --- one pod ---

    def configs(self, rt: Runtime) -> tuple[pb.PodSandboxConfig, pb.ContainerConfig]:
        self.counter += 1
        n = self.counter
        uid = f"{self.tag}-{n}"
        log_dir = Path(f"/var/lib/cri-py-bench/logs/{rt.name}/{uid}")
        log_dir.mkdir(parents=True, exist_ok=True)  # kubelet makes it; so do we
        pod = pb.PodSandboxConfig(
            metadata=pb.PodSandboxMetadata(name=f"bench-{n}", uid=uid, namespace="bench"),
            hostname=f"bench-{n}",
            log_directory=str(log_dir),
            linux=pb.LinuxPodSandboxConfig(
                cgroup_parent=f"{rt.pod_cgroup_parent}/pod{uid}",
                security_context=pb.LinuxSandboxSecurityContext(
                    namespace_options=pb.NamespaceOption(pid=pb.CONTAINER)
                ),
            ),
        )
        container = pb.ContainerConfig(
            metadata=pb.ContainerMetadata(name="c"),
            image=pb.ImageSpec(image=BUSYBOX),
            command=["sh", "-c", SCRIPT, uid],
            log_path="c.log",
        )
        return pod, container

    def start_pod(
        self, rt: Runtime, stub: pb_grpc.RuntimeServiceStub, timed: bool = False
    ) -> tuple[str, str, dict[str, float]]:
        """RunPodSandbox + CreateContainer + StartContainer; (pod ID, container ID, times)."""
        pod, container = self.configs(rt)
        s = stub
        t0 = time.perf_counter()
        sandbox_id = s.RunPodSandbox(pb.RunPodSandboxRequest(config=pod), timeout=TIMEOUT)
        t1 = time.perf_counter()
        cid = create_container(s, sandbox_id.pod_sandbox_id, pod, container)
        t2 = time.perf_counter()
        s.StartContainer(pb.StartContainerRequest(container_id=cid), timeout=TIMEOUT)
        t3 = time.perf_counter()
        times = {"RunPodSandbox": t1 - t0, "CreateContainer": t2 - t1, "StartContainer": t3 - t2}
        return sandbox_id.pod_sandbox_id, cid, times

    def stop_pod(
        self, stub: pb_grpc.RuntimeServiceStub, sandbox_id: str, cid: str
    ) -> dict[str, float]:
        s = stub
        t0 = time.perf_counter()
        s.StopContainer(pb.StopContainerRequest(container_id=cid, timeout=10), timeout=TIMEOUT)
        t1 = time.perf_counter()
        s.RemoveContainer(pb.RemoveContainerRequest(container_id=cid), timeout=TIMEOUT)
        t2 = time.perf_counter()
        s.StopPodSandbox(pb.StopPodSandboxRequest(pod_sandbox_id=sandbox_id), timeout=TIMEOUT)
        t3 = time.perf_counter()
        s.RemovePodSandbox(pb.RemovePodSandboxRequest(pod_sandbox_id=sandbox_id), timeout=TIMEOUT)
        t4 = time.perf_counter()
        return {
            "StopContainer": t1 - t0,
            "RemoveContainer": t2 - t1,
            "StopPodSandbox": t3 - t2,
            "RemovePodSandbox": t4 - t3,
        }

    def remove_all(self, rt: Runtime) -> None:
        stub = rt.runtime_stub()
        for sandbox in stub.ListPodSandbox(pb.ListPodSandboxRequest(), timeout=TIMEOUT).items:
            with contextlib.suppress(grpc.RpcError):
                stub.StopPodSandbox(
                    pb.StopPodSandboxRequest(pod_sandbox_id=sandbox.id), timeout=TIMEOUT
                )
                stub.RemovePodSandbox(
                    pb.RemovePodSandboxRequest(pod_sandbox_id=sandbox.id), timeout=TIMEOUT
                )

    # --- scenarios ---

    def lifecycles(self, rt: Runtime, count: int) -> None:
        stub = rt.runtime_stub()
        cpu_before = rt.cpu_seconds()
        for _ in range(count):
            t0 = time.perf_counter()
            sandbox_id, cid, up = self.start_pod(rt, stub)
            t1 = time.perf_counter()
            wait_trap(f"{self.tag}-{self.counter}")
            t2 = time.perf_counter()
            down = self.stop_pod(stub, sandbox_id, cid)
            t3 = time.perf_counter()
            for name, value in {**up, **down}.items():
                self.record(name, rt, value * 1000)
            # cri-py sets the process up in CreateContainer, containerd in StartContainer.
            both = up["CreateContainer"] + up["StartContainer"]
            self.record("CreateContainer + StartContainer", rt, both * 1000)
            self.record("pod+container from scratch (Run+Create+Start)", rt, (t1 - t0) * 1000)
            self.record("whole pod life (all 7 calls)", rt, (t1 - t0 + t3 - t2) * 1000)
        per_pod = (rt.cpu_seconds() - cpu_before) / count * 1000
        self.record("CPU time per pod life (daemon + shims)", rt, per_pod)

    def exec_sync(self, rt: Runtime, runs: int) -> None:
        stub = rt.runtime_stub()
        sandbox_id, cid, _ = self.start_pod(rt, stub)
        try:
            for _ in range(runs):
                t0 = time.perf_counter()
                reply = stub.ExecSync(
                    pb.ExecSyncRequest(container_id=cid, cmd=["true"], timeout=10),
                    timeout=TIMEOUT,
                )
                self.record("ExecSync round trip (`true`)", rt, (time.perf_counter() - t0) * 1000)
                assert reply.exit_code == 0, reply
        finally:
            self.stop_pod(stub, sandbox_id, cid)

    def pull_cold(self, rt: Runtime) -> None:
        images = rt.image_stub()
        spec = pb.ImageSpec(image=PULL_IMAGE)
        with contextlib.suppress(grpc.RpcError):
            images.RemoveImage(pb.RemoveImageRequest(image=spec), timeout=TIMEOUT)
        t0 = time.perf_counter()
        images.PullImage(pb.PullImageRequest(image=spec), timeout=TIMEOUT)
        self.record(f"PullImage {PULL_IMAGE} (cold)", rt, (time.perf_counter() - t0) * 1000)
        images.RemoveImage(pb.RemoveImageRequest(image=spec), timeout=TIMEOUT)

    def critest(self, rt: Runtime, samples: int) -> None:
        """One `critest -benchmark` run (bench/critest_bench.py). Its image benchmark pulls
        and removes PULL_IMAGE, as pull_cold does, never the images the other scenarios use."""
        measures = critest_bench.run(rt.socket, samples, PULL_IMAGE, [BUSYBOX, PAUSE_IMAGE])
        for measure, values in measures.items():
            for value in values:
                self.record(measure, rt, value)

    def parallel(self, rt: Runtime, size: int, memory: bool) -> None:
        stub = rt.runtime_stub()
        t0 = time.perf_counter()
        with ThreadPoolExecutor(max_workers=size) as pool:
            pods = list(pool.map(lambda _: self.start_pod(rt, stub), range(size)))
        self.record(
            f"{size} pods+containers in parallel (wall)", rt, (time.perf_counter() - t0) * 1000
        )
        if memory:
            time.sleep(1)
            self.memory_sample(rt, size)
        with ThreadPoolExecutor(max_workers=min(size, 10)) as pool:
            list(pool.map(lambda p: self.stop_pod(stub, p[0], p[1]), pods))

    def memory_sample(self, rt: Runtime, pods: int) -> None:
        self.record(f"daemon RSS, {pods} pods (MiB)", rt, rss_kb(rt.pid) / 1024)
        pss = sum(smaps_kb(pid, "Pss") for pid in rt.pod_processes())
        self.record(
            f"PSS of runtime processes but the daemon, per pod, {pods} pods (MiB)",
            rt,
            pss / 1024 / pods,
        )

    def lists(self, pods: int, runs: int) -> None:
        """`pods` pods in every runtime at once, then the calls, alternating runtimes."""
        started: dict[str, list[tuple[str, str, dict[str, float]]]] = {}
        try:
            for rt in self.runtimes:
                stub = rt.runtime_stub()
                with ThreadPoolExecutor(max_workers=10) as pool:
                    started[rt.name] = list(
                        pool.map(lambda _, rt=rt, stub=stub: self.start_pod(rt, stub), range(pods))
                    )
            for i in range(runs):
                for rt in self.order(i):
                    self.list_calls(rt, pods, started[rt.name][i % pods][1], i)
        finally:
            for rt in self.runtimes:
                self.stop_all(rt, started.get(rt.name, []))

    def scale(self, rt: Runtime, levels: tuple[int, ...], probes: int, runs: int) -> None:
        """Pods grow through `levels` (10 started at a time); at each level, `probes` pods
        more are started and stopped one by one (RunPodSandbox with N present), List* are
        called `runs` times, and the daemon's RSS and the runtime's PSS per pod are read.
        Measures are named "scale N=<n>: ..." (report.py plots them against N)."""
        stub = rt.runtime_stub()
        pods: list[tuple[str, str, dict[str, float]]] = []
        try:
            for level in levels:
                with ThreadPoolExecutor(max_workers=10) as pool:
                    pods += pool.map(lambda _: self.start_pod(rt, stub), range(level - len(pods)))
                time.sleep(1)
                prefix = f"scale N={level}:"
                for _ in range(probes):
                    sandbox_id, cid, times = self.start_pod(rt, stub)
                    self.record(f"{prefix} RunPodSandbox", rt, times["RunPodSandbox"] * 1000)
                    self.stop_pod(stub, sandbox_id, cid)
                for _ in range(runs):
                    t0 = time.perf_counter()
                    stub.ListPodSandbox(pb.ListPodSandboxRequest(), timeout=TIMEOUT)
                    t1 = time.perf_counter()
                    stub.ListContainers(pb.ListContainersRequest(), timeout=TIMEOUT)
                    t2 = time.perf_counter()
                    self.record(f"{prefix} ListPodSandbox", rt, (t1 - t0) * 1000)
                    self.record(f"{prefix} ListContainers", rt, (t2 - t1) * 1000)
                self.record(f"{prefix} daemon RSS (MiB)", rt, rss_kb(rt.pid) / 1024)
                pss_mib = sum(smaps_kb(pid, "Pss") for pid in rt.pod_processes()) / 1024
                self.record(f"{prefix} PSS of runtime processes per pod (MiB)", rt, pss_mib / level)
        finally:
            self.stop_all(rt, pods)

    def stop_all(self, rt: Runtime, pods: list[tuple[str, str, dict[str, float]]]) -> None:
        stub = rt.runtime_stub()
        with ThreadPoolExecutor(max_workers=10) as pool:
            list(pool.map(lambda p: self.stop_pod(stub, p[0], p[1]), pods))

    def list_calls(self, rt: Runtime, pods: int, container_id: str, turn: int) -> None:
        """One of each call; which goes first rotates with `turn` (the first after the other
        runtime's turn meets an idle daemon, which costs more in wake-up)."""
        stub = rt.runtime_stub()
        calls: dict[str, Callable[[], object]] = {
            f"ListPodSandbox, {pods} pods": lambda: stub.ListPodSandbox(
                pb.ListPodSandboxRequest(), timeout=TIMEOUT
            ),
            f"ListContainers, {pods} pods": lambda: stub.ListContainers(
                pb.ListContainersRequest(), timeout=TIMEOUT
            ),
            f"ContainerStatus, {pods} pods": lambda: stub.ContainerStatus(
                pb.ContainerStatusRequest(container_id=container_id), timeout=TIMEOUT
            ),
            # The floor every call pays: gRPC, the event loop, the call's logging.
            "Version (gRPC round trip floor)": lambda: stub.Version(
                pb.VersionRequest(), timeout=TIMEOUT
            ),
        }
        names = list(calls)
        for k in range(len(names)):
            name = names[(k + turn) % len(names)]
            t0 = time.perf_counter()
            calls[name]()
            self.record(name, rt, (time.perf_counter() - t0) * 1000)


def create_container(
    stub: pb_grpc.RuntimeServiceStub,
    sandbox_id: str,
    pod: pb.PodSandboxConfig,
    container: pb.ContainerConfig,
) -> str:
    request = pb.CreateContainerRequest(
        pod_sandbox_id=sandbox_id, config=container, sandbox_config=pod
    )
    return str(stub.CreateContainer(request, timeout=TIMEOUT).container_id)


def pull(rt: Runtime, image: str) -> None:
    rt.image_stub().PullImage(pb.PullImageRequest(image=pb.ImageSpec(image=image)), timeout=TIMEOUT)


def run(args: argparse.Namespace, out: Path) -> int:
    runtimes: list[Runtime] = [CriPy()]
    if args.compare == "containerd":
        runtimes.append(Containerd())
    elif args.compare:  # another cri-py source tree (e.g. `git worktree add`)
        runtimes.append(CriPy(Path(args.compare).resolve(), "cri-py-other"))
    problems = cleanup_host()  # a previous run's leftovers
    load_before = os.getloadavg()
    netns_before = netns_names()
    bench = Bench(runtimes, args.rounds, secrets.token_hex(3))
    started: list[Runtime] = []
    try:
        write_cni_conflist()
        for rt in runtimes:
            rt.start()
            started.append(rt)
        time.sleep(2)
        for rt in runtimes:
            bench.record("daemon RSS idle (MiB)", rt, rss_kb(rt.pid) / 1024)
            for image in (BUSYBOX, PAUSE_IMAGE):
                pull(rt, image)
            bench.lifecycles(rt, 1)  # warm-up, not recorded
        bench.samples.clear()
        for rt in runtimes:
            bench.record("daemon RSS idle (MiB)", rt, rss_kb(rt.pid) / 1024)
        only = set(args.only.split(",")) if args.only else set(SCENARIOS)
        for r in range(args.rounds if only & {"life", "exec", "pull"} else 0):
            print(f"round {r + 1}/{args.rounds}", flush=True)
            for rt in bench.order(r) if "life" in only else []:
                bench.lifecycles(rt, args.pods_per_round)
            for rt in bench.order(r) if "exec" in only else []:
                bench.exec_sync(rt, args.pods_per_round)
            for rt in bench.order(r) if "pull" in only else []:
                bench.pull_cold(rt)
        for size in (10, 50) if "parallel" in only else ():
            for r in range(args.parallel_rounds):
                print(f"{size} pods in parallel, round {r + 1}/{args.parallel_rounds}", flush=True)
                for rt in bench.order(r):
                    bench.parallel(rt, size, memory=r == 0)
        if "lists" in only:
            print(f"{args.list_pods} pods present: List* / ContainerStatus", flush=True)
            bench.lists(args.list_pods, args.list_runs)
        if "scale" in only:
            levels = tuple(sorted(int(n) for n in args.scale_levels.split(",")))
            for rt in runtimes:
                print(f"scale {rt.name}: {', '.join(map(str, levels))} pods", flush=True)
                bench.scale(rt, levels, args.scale_probes, args.scale_runs)
        for r in range(args.rounds if "critest" in only else 0):
            print(f"critest -benchmark, round {r + 1}/{args.rounds}", flush=True)
            for rt in bench.order(r):
                bench.critest(rt, args.pods_per_round)
    finally:
        for rt in started:
            with contextlib.suppress(Exception):
                bench.remove_all(rt)
        for rt in started:
            rt.stop()
        problems += cleanup_host(netns_before)
    meta = {
        "date": datetime.datetime.now(datetime.UTC).isoformat(timespec="seconds"),
        "rounds": args.rounds,
        "pods_per_round": args.pods_per_round,
        "parallel_rounds": args.parallel_rounds,
        "only": args.only or ",".join(SCENARIOS),
        "cpu_cgroups": {rt.name: [rt.cgroup, *rt.extra_cgroups] for rt in runtimes},
        "runtimes": [rt.name for rt in runtimes],
        "versions": report.versions(),
        # Shared machines: the load says how noisy the run was (ratios count, not absolutes).
        "loadavg_1m_before_after": [round(load_before[0], 1), round(os.getloadavg()[0], 1)],
        "cpus": os.cpu_count(),
        "cleanup_problems": problems,
    }
    table = report.write(out, bench.samples, meta)
    print(table)
    print(f"load average (1 min) before/after: {meta['loadavg_1m_before_after']}")
    print(f"results: {out}")
    if problems:
        print("cleanup left:", *problems, sep="\n  ")
    return 0


def main() -> int:
    parser = argparse.ArgumentParser(description="CRI benchmark, cri-py vs containerd")
    parser.add_argument(
        "--compare",
        default="",
        help="containerd, or the path of another cri-py source tree (before/after a change)",
    )
    parser.add_argument("--rounds", type=int, default=4, help="alternating rounds (default 4)")
    parser.add_argument("--pods-per-round", type=int, default=5, help="pod lives per round")
    parser.add_argument("--parallel-rounds", type=int, default=2)
    parser.add_argument("--list-pods", type=int, default=100)
    parser.add_argument("--list-runs", type=int, default=50)
    parser.add_argument(
        "--scale-levels",
        default=",".join(map(str, SCALE_LEVELS)),
        help="pods present at each step of the scale scenario",
    )
    parser.add_argument("--scale-probes", type=int, default=5, help="RunPodSandbox per level")
    parser.add_argument("--scale-runs", type=int, default=10, help="List* calls per level")
    parser.add_argument("--out", type=Path, default=None)
    parser.add_argument(
        "--only", default="", help=f"comma-separated subset of: {','.join(SCENARIOS)}"
    )
    args = parser.parse_args()
    stamp = datetime.datetime.now(datetime.UTC).strftime("%Y%m%dT%H%M%SZ")
    out = args.out or Path(__file__).resolve().parent / "results" / stamp
    return run(args, out)


if __name__ == "__main__":
    sys.exit(main())
