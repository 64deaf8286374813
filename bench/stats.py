"""Cost of ListContainerStats and ListPodSandboxStats at N running containers.

Starts a throw-away daemon (as the integration tests do: its own root, run dir, socket, the
test bridge and a cgroup parent under /cri-py-tests), runs N busybox `sleep` containers in
N/10 pods, then times the list calls. The first call walks every writable layer; later ones
within the layer cache window read only cgroup files. Prints markdown table lines:

    | stats: ListContainerStats, <N> containers (warm) | min | p50 | max | runs |

Usage (as root): .venv/bin/python bench/stats.py [--containers N] [--runs N]
Needs the lab registry (`make registry images`). Removes every pod and cgroup it made.
"""

from __future__ import annotations

import argparse
import contextlib
import statistics
import sys
import tempfile
import time
from collections.abc import Callable
from pathlib import Path

import grpc

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

from cri_py.api import api_pb2 as pb  # noqa: E402
from tests.integration.conftest import start_daemon  # noqa: E402
from tests.integration.test_containers import (  # noqa: E402
    BUSYBOX,
    CONFIG,
    remove_cgroup_parent,
)


def timed(call: Callable[[], object], runs: int) -> list[float]:
    times = []
    for _ in range(runs):
        started = time.perf_counter()
        call()
        times.append((time.perf_counter() - started) * 1000)
    return times


def row(name: str, times: list[float]) -> str:
    return (
        f"| {name} | {min(times):.1f} ms | {statistics.median(times):.1f} ms "
        f"| {max(times):.1f} ms | {len(times)} |"
    )


def main() -> int:
    parser = argparse.ArgumentParser()
    parser.add_argument("--containers", type=int, default=100)
    parser.add_argument("--runs", type=int, default=20)
    args = parser.parse_args()
    with tempfile.TemporaryDirectory(prefix="cri-py-bench-") as tmp:
        daemon = start_daemon(Path(tmp) / "daemon", CONFIG)
        rt = daemon.runtime()
        pods: list[str] = []
        try:
            daemon.images().PullImage(
                pb.PullImageRequest(image=pb.ImageSpec(image=BUSYBOX)), timeout=120
            )
            started = time.perf_counter()
            for i in range(args.containers):
                if i % 10 == 0:
                    config = pb.PodSandboxConfig(
                        metadata=pb.PodSandboxMetadata(
                            name=f"bench{i}", uid=f"uid-bench{i}", namespace="bench"
                        )
                    )
                    request = pb.RunPodSandboxRequest(config=config)
                    pods.append(rt.RunPodSandbox(request, timeout=60).pod_sandbox_id)
                container = pb.ContainerConfig(
                    metadata=pb.ContainerMetadata(name=f"c{i}"),
                    image=pb.ImageSpec(image=BUSYBOX),
                    command=["sleep", "100000"],
                    linux=pb.LinuxContainerConfig(
                        resources=pb.LinuxContainerResources(memory_limit_in_bytes=64 << 20)
                    ),
                )
                cid = rt.CreateContainer(
                    pb.CreateContainerRequest(
                        pod_sandbox_id=pods[-1], config=container, sandbox_config=config
                    ),
                    timeout=60,
                ).container_id
                rt.StartContainer(pb.StartContainerRequest(container_id=cid), timeout=60)
            setup = time.perf_counter() - started
            n = args.containers
            print(f"setup: {n} containers in {len(pods)} pods, {setup:.1f} s")
            list_containers = pb.ListContainerStatsRequest()
            cold = timed(lambda: rt.ListContainerStats(list_containers, timeout=60), 1)
            print(row(f"stats: ListContainerStats, {n} containers (cold layers)", cold))
            warm = timed(lambda: rt.ListContainerStats(list_containers, timeout=60), args.runs)
            print(row(f"stats: ListContainerStats, {n} containers (warm)", warm))
            reply = rt.ListContainerStats(list_containers, timeout=60)
            assert len(reply.stats) == n, len(reply.stats)
            list_pods = pb.ListPodSandboxStatsRequest()
            pod_times = timed(lambda: rt.ListPodSandboxStats(list_pods, timeout=60), args.runs)
            print(row(f"stats: ListPodSandboxStats, {len(pods)} pods / {n} containers", pod_times))
        finally:
            for sandbox_id in pods:
                with contextlib.suppress(grpc.RpcError):
                    rt.StopPodSandbox(
                        pb.StopPodSandboxRequest(pod_sandbox_id=sandbox_id), timeout=60
                    )
                    rt.RemovePodSandbox(
                        pb.RemovePodSandboxRequest(pod_sandbox_id=sandbox_id), timeout=60
                    )
            daemon.stop()
            remove_cgroup_parent()
    return 0


if __name__ == "__main__":
    sys.exit(main())
