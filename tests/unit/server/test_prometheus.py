"""The Prometheus endpoint: RPC hooks through the guard, scrape-time gauges, the HTTP server."""

from __future__ import annotations

import urllib.request
from collections.abc import AsyncIterator, Mapping
from pathlib import Path

import grpc
import pytest
from prometheus_client.parser import text_string_to_metric_families

from cri_py import errors
from cri_py.api import api_pb2 as pb
from cri_py.api import api_pb2_grpc as pb_grpc
from cri_py.server.guard import service_handler
from cri_py.server.prometheus import CachedCounts, DaemonMetrics, MetricsServer, NodeCounts


def samples(text: bytes) -> dict[tuple[str, frozenset[tuple[str, str]]], float]:
    found = {}
    for family in text_string_to_metric_families(text.decode()):
        for sample in family.samples:
            found[(sample.name, frozenset(sample.labels.items()))] = sample.value
    return found


def value(text: bytes, name: str, **labels: str) -> float:
    return samples(text)[(name, frozenset(labels.items()))]


COUNTS = NodeCounts(
    pods={"ready": 2, "notready": 1},
    containers={"running": 3, "exited": 1},
    shims=2,
    oom_killed=1,
    images=4,
)


def test_node_gauges_are_read_at_scrape_time() -> None:
    current = [COUNTS]
    metrics = DaemonMetrics(lambda: current[0])
    text = metrics.render()
    assert value(text, "cri_py_pods", state="ready") == 2
    assert value(text, "cri_py_pods", state="notready") == 1
    assert value(text, "cri_py_containers", state="running") == 3
    assert value(text, "cri_py_containers", state="created") == 0  # every state is exported
    assert value(text, "cri_py_shims") == 2
    assert value(text, "cri_py_containers_oom_killed") == 1
    assert value(text, "cri_py_images") == 4
    current[0] = NodeCounts(pods={}, containers={}, shims=0, oom_killed=0, images=0)
    assert value(metrics.render(), "cri_py_pods", state="ready") == 0
    # Without a leak checker, no leak metric rather than a made-up zero.
    assert b"cri_py_leaked_resources" not in text


def test_leak_counts_by_kind_are_cached_for_the_ttl() -> None:
    now = [0.0]
    scans: list[Mapping[str, int]] = [{"mount": 2}, {"cgroup": 1}]
    taken = []

    def scan() -> Mapping[str, int]:
        taken.append(now[0])
        return scans[len(taken) - 1]

    metrics = DaemonMetrics(lambda: COUNTS, CachedCounts(scan, ttl=60, clock=lambda: now[0]))
    text = metrics.render()
    assert value(text, "cri_py_leaked_resources", kind="mount") == 2
    assert value(text, "cri_py_leaked_resources", kind="veth") == 0
    now[0] = 59.0
    assert value(metrics.render(), "cri_py_leaked_resources", kind="mount") == 2
    now[0] = 60.0
    text = metrics.render()
    assert value(text, "cri_py_leaked_resources", kind="mount") == 0
    assert value(text, "cri_py_leaked_resources", kind="cgroup") == 1
    assert taken == [0.0, 60.0]


def test_a_failing_leak_check_leaves_the_metric_out() -> None:
    def scan() -> Mapping[str, int]:
        raise PermissionError("no")

    metrics = DaemonMetrics(lambda: COUNTS, CachedCounts(scan))
    text = metrics.render()
    assert b"cri_py_leaked_resources" not in text
    assert value(text, "cri_py_shims") == 2


def test_image_pull_bytes_and_durations() -> None:
    metrics = DaemonMetrics(lambda: COUNTS)
    metrics.observe_downloaded(1000)
    metrics.observe_downloaded(24)
    metrics.observe_pull(0.3)
    text = metrics.render()
    assert value(text, "cri_py_image_pull_bytes_total") == 1024
    assert value(text, "cri_py_image_pull_duration_seconds_count") == 1
    assert value(text, "cri_py_image_pull_duration_seconds_bucket", le="0.5") == 1
    assert value(text, "cri_py_image_pull_duration_seconds_bucket", le="0.25") == 0


class FakeRuntime:
    async def Version(self, request: pb.VersionRequest, context: object) -> pb.VersionResponse:
        return pb.VersionResponse(runtime_name="fake")

    async def PodSandboxStatus(self, request: pb.PodSandboxStatusRequest, context: object) -> None:
        raise errors.NotFound(f"pod sandbox {request.pod_sandbox_id} not found")


Guarded = tuple[pb_grpc.RuntimeServiceStub, DaemonMetrics]


@pytest.fixture
async def guarded(
    tmp_path: Path,
) -> AsyncIterator[tuple[pb_grpc.RuntimeServiceStub, DaemonMetrics]]:
    metrics = DaemonMetrics(lambda: COUNTS)
    server = grpc.aio.server()
    service = pb.DESCRIPTOR.services_by_name["RuntimeService"]
    server.add_generic_rpc_handlers(
        [service_handler(service, pb, FakeRuntime(), metrics.observe_rpc)]
    )
    address = f"unix://{tmp_path}/metrics.sock"
    server.add_insecure_port(address)
    await server.start()
    async with grpc.aio.insecure_channel(address) as channel:
        yield pb_grpc.RuntimeServiceStub(channel), metrics
    await server.stop(None)


async def test_every_rpc_is_timed_and_errors_are_counted_by_code(
    guarded: Guarded,
) -> None:
    stub, metrics = guarded
    await stub.Version(pb.VersionRequest())
    await stub.Version(pb.VersionRequest())
    for _ in range(3):
        with pytest.raises(grpc.aio.AioRpcError):
            await stub.PodSandboxStatus(pb.PodSandboxStatusRequest(pod_sandbox_id="x"))
    with pytest.raises(grpc.aio.AioRpcError):
        await stub.RemoveContainer(pb.RemoveContainerRequest(container_id="x"))
    text = metrics.render()
    assert value(text, "cri_py_rpc_duration_seconds_count", rpc="Version") == 2
    assert value(text, "cri_py_rpc_duration_seconds_count", rpc="PodSandboxStatus") == 3
    assert value(text, "cri_py_rpc_errors_total", rpc="PodSandboxStatus", code="NOT_FOUND") == 3
    assert value(text, "cri_py_rpc_errors_total", rpc="RemoveContainer", code="UNIMPLEMENTED") == 1
    assert ("cri_py_rpc_errors_total", frozenset({("rpc", "Version"), ("code", "OK")})) not in (
        samples(text)
    )


def test_server_answers_get_metrics_on_its_port_and_stops() -> None:
    metrics = DaemonMetrics(lambda: COUNTS)
    server = MetricsServer(metrics, "127.0.0.1", 0)
    port = server.start()
    try:
        with urllib.request.urlopen(f"http://127.0.0.1:{port}/metrics", timeout=5) as response:
            assert response.status == 200
            assert value(response.read(), "cri_py_shims") == 2
    finally:
        server.close()
    with pytest.raises(OSError):
        urllib.request.urlopen(f"http://127.0.0.1:{port}/metrics", timeout=2)
    server.close()  # idempotent
