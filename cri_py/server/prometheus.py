"""The Prometheus endpoint: per-RPC latency and errors, image pulls, and the node's pods,
containers, shims, OOM kills and leaked resources.

Counters and histograms are fed by hooks (the guard for RPCs, the image service for pulls).
Whatever is a state of the node is read from the services at scrape time, so it cannot drift
from what the CRI reports. Each daemon has its own registry (never prometheus_client's global
one, which would mix in the process collectors of whoever imports us); the HTTP server runs in
its own thread and never touches the event loop.
"""

from __future__ import annotations

import threading
import time
from collections import Counter as Tally
from collections.abc import Callable, Iterable, Mapping
from dataclasses import dataclass
from typing import TYPE_CHECKING
from wsgiref.simple_server import WSGIServer

import grpc
from prometheus_client import CollectorRegistry, Counter, Histogram, generate_latest
from prometheus_client.core import GaugeMetricFamily, Metric
from prometheus_client.exposition import start_wsgi_server
from prometheus_client.registry import Collector

from cri_py.config import Config
from cri_py.errors import StartupError
from cri_py.log import get_logger

if TYPE_CHECKING:
    from cri_py.images.service import ImageService
    from cri_py.runtime.containers import ContainerService
    from cri_py.runtime.sandboxes import SandboxService

log = get_logger("cri_py.metrics")

# From a cached Version (sub-millisecond) to a slow pull or a stop with a long grace period.
RPC_BUCKETS = (0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1, 2.5, 5, 10, 30, 60, 120)
PULL_BUCKETS = (0.1, 0.25, 0.5, 1, 2.5, 5, 10, 30, 60, 120, 300, 600)
# The leak checker walks the disk and the kernel's tables: not once per scrape.
LEAK_CHECK_SECONDS = 60.0


@dataclass(frozen=True)
class NodeCounts:
    """What the node holds at one moment, by CRI state name (lower case)."""

    pods: Mapping[str, int]
    containers: Mapping[str, int]
    shims: int
    oom_killed: int
    images: int


POD_STATES = ("ready", "notready")
CONTAINER_STATES = ("created", "running", "exited", "unknown")
# The leak checker's kinds (`cri_py.runtime.leaks.Leak.kind`): always exported, 0 when none.
LEAK_KINDS = ("mount", "veth", "ip", "cgroup", "shim", "dir", "record")


def node_counts(
    sandboxes: SandboxService, containers: ContainerService | None, images: ImageService
) -> NodeCounts:
    """Counts from the services' in-memory state (thread-safe reads; no disk, no shim calls)."""
    from cri_py.model.container import ContainerFilter
    from cri_py.model.sandbox import SandboxFilter

    pods = Tally(view.state.name.lower() for view in sandboxes.list(SandboxFilter()))
    records = containers.list(ContainerFilter()) if containers is not None else []
    return NodeCounts(
        pods=pods,
        containers=Tally(record.state.name.lower() for record in records),
        shims=sandboxes.shim_count(),
        # kubelet's word for a container the kernel's OOM killer ended (the shim decides it).
        oom_killed=sum(1 for r in records if r.exit is not None and r.exit.reason == "OOMKilled"),
        images=len(images.list_images()),
    )


class CachedCounts:
    """Counts by kind that are expensive to take (the leak checker's), taken at most once per
    `ttl` seconds. A failing count is logged and reported as unknown (None) until the next
    attempt."""

    def __init__(
        self,
        count: Callable[[], Mapping[str, int]],
        ttl: float = LEAK_CHECK_SECONDS,
        clock: Callable[[], float] = time.monotonic,
    ) -> None:
        self._count = count
        self._ttl = ttl
        self._clock = clock
        self._lock = threading.Lock()
        self._taken_at: float | None = None
        self._value: Mapping[str, int] | None = None

    def __call__(self) -> Mapping[str, int] | None:
        with self._lock:  # concurrent scrapes share one scan
            now = self._clock()
            if self._taken_at is None or now - self._taken_at >= self._ttl:
                self._taken_at = now
                try:
                    self._value = self._count()
                except Exception as e:
                    log.warning("leak check failed", error=repr(e))
                    self._value = None
            return self._value


class _NodeCollector(Collector):
    """The gauges read at scrape time."""

    def __init__(
        self,
        counts: Callable[[], NodeCounts],
        leaks: Callable[[], Mapping[str, int] | None] | None,
    ) -> None:
        self._counts = counts
        self._leaks = leaks

    def collect(self) -> Iterable[Metric]:
        counts = self._counts()
        pods = GaugeMetricFamily("cri_py_pods", "Pod sandboxes by CRI state.", labels=["state"])
        for state in (*POD_STATES, *sorted(set(counts.pods) - set(POD_STATES))):
            pods.add_metric([state], counts.pods.get(state, 0))
        yield pods
        containers = GaugeMetricFamily(
            "cri_py_containers", "Containers by CRI state.", labels=["state"]
        )
        for state in (*CONTAINER_STATES, *sorted(set(counts.containers) - set(CONTAINER_STATES))):
            containers.add_metric([state], counts.containers.get(state, 0))
        yield containers
        yield GaugeMetricFamily("cri_py_shims", "Live per-pod shim processes.", value=counts.shims)
        yield GaugeMetricFamily(
            "cri_py_containers_oom_killed",
            "Containers still known to the runtime whose process the OOM killer ended.",
            value=counts.oom_killed,
        )
        yield GaugeMetricFamily("cri_py_images", "Images in the image store.", value=counts.images)
        if self._leaks is not None:
            leaked = self._leaks()
            if leaked is not None:
                family = GaugeMetricFamily(
                    "cri_py_leaked_resources",
                    "Resources the leak checker found that no record accounts for, by kind "
                    f"(checked at most once per {LEAK_CHECK_SECONDS:g}s).",
                    labels=["kind"],
                )
                for kind in (*LEAK_KINDS, *sorted(set(leaked) - set(LEAK_KINDS))):
                    family.add_metric([kind], leaked.get(kind, 0))
                yield family


class DaemonMetrics:
    """One daemon's metrics: the hooks that feed them and the registry that renders them."""

    def __init__(
        self,
        counts: Callable[[], NodeCounts],
        leaks: Callable[[], Mapping[str, int] | None] | None = None,
    ) -> None:
        self.registry = CollectorRegistry()
        self._rpc_seconds = Histogram(
            "cri_py_rpc_duration_seconds",
            "Time to answer a CRI call, by RPC (every outcome).",
            ["rpc"],
            buckets=RPC_BUCKETS,
            registry=self.registry,
        )
        self._rpc_errors = Counter(
            "cri_py_rpc_errors",
            "CRI calls answered with an error, by RPC and gRPC status code.",
            ["rpc", "code"],
            registry=self.registry,
        )
        self._pull_bytes = Counter(
            "cri_py_image_pull_bytes",
            "Bytes of image blobs (layers, configs) received from registries.",
            registry=self.registry,
        )
        self._pull_seconds = Histogram(
            "cri_py_image_pull_duration_seconds",
            "Time of each successful image pull (shared pulls count once).",
            buckets=PULL_BUCKETS,
            registry=self.registry,
        )
        self.registry.register(_NodeCollector(counts, leaks))

    def observe_rpc(self, rpc: str, seconds: float, code: grpc.StatusCode) -> None:
        self._rpc_seconds.labels(rpc).observe(seconds)
        if code != grpc.StatusCode.OK:
            self._rpc_errors.labels(rpc, code.name).inc()

    def observe_downloaded(self, count: int) -> None:
        self._pull_bytes.inc(count)

    def observe_pull(self, seconds: float) -> None:
        self._pull_seconds.observe(seconds)

    def render(self) -> bytes:
        """The text exposition format, as `GET /metrics` answers."""
        return generate_latest(self.registry)


class MetricsServer:
    """`GET /metrics` over HTTP on `address:port`, served by prometheus_client's WSGI server
    in a daemon thread."""

    def __init__(self, metrics: DaemonMetrics, address: str, port: int) -> None:
        self._metrics = metrics
        self._address = address
        self._port = port
        self._server: WSGIServer | None = None
        self._thread: threading.Thread | None = None

    def start(self) -> int:
        """Starts serving; returns the port (the chosen one when configured as 0)."""
        self._server, self._thread = start_wsgi_server(
            self._port, self._address, self._metrics.registry
        )
        port: int = self._server.server_port
        log.info("metrics serving", address=self._address, port=port, path="/metrics")
        return port

    def close(self) -> None:
        """Stops serving (waits up to the server's 0.5 s poll interval); idempotent."""
        server, self._server = self._server, None
        if server is None:
            return
        server.shutdown()
        server.server_close()
        if self._thread is not None:
            self._thread.join(5.0)


def leak_counts(config: Config) -> Mapping[str, int]:
    """The leak checker's findings on this host, by kind (a scan of a few seconds)."""
    from cri_py.runtime.leaks import find_leaks

    return Tally(leak.kind for leak in find_leaks(config))


def start_metrics(
    config: Config,
    sandboxes: SandboxService,
    containers: ContainerService | None,
    images: ImageService,
) -> tuple[DaemonMetrics, MetricsServer] | None:
    """The daemon's metrics and their HTTP server, fed by the image service's hooks; None
    when `metrics.address` is empty (the default: off)."""
    if not config.metrics.address:
        return None
    metrics = DaemonMetrics(
        lambda: node_counts(sandboxes, containers, images),
        CachedCounts(lambda: leak_counts(config)),
    )
    images.on_downloaded = metrics.observe_downloaded
    images.on_pulled = metrics.observe_pull
    server = MetricsServer(metrics, config.metrics.address, config.metrics.port)
    try:
        server.start()
    except OSError as e:
        where = f"{config.metrics.address}:{config.metrics.port}"
        raise StartupError(f"metrics endpoint {where}: {e.strerror or e}") from None
    return metrics, server
