"""GetContainerEvents and the metrics RPCs against a real daemon: every subscriber sees a
container's CREATED, STARTED, STOPPED and DELETED in order with the pod's statuses, a subscriber
that stops reading holds nobody up, streams end cleanly on SIGTERM, and ListPodSandboxMetrics
reports a running container's numbers.

Pods run on this module's bridge `cri-pyt7` (10.92.0.0/24); the lab registry must be up.
"""

from __future__ import annotations

import json
import os
import queue
import signal
import threading
import time
from collections.abc import Iterator
from pathlib import Path

import grpc
import pytest

from cri_py.api import api_pb2 as pb
from cri_py.api import api_pb2_grpc as pb_grpc

from .conftest import Daemon, needs_root, start_daemon
from .test_containers import BUSYBOX, CGROUP_PARENT, ROOT, Lab, open_lab

pytestmark = needs_root

CONFIG = (
    (ROOT / "e2e" / "lab-config.yaml").read_text()
    + "network:\n  bridge: cri-pyt7\n  subnet: 10.92.0.0/24\n  cni_conf_dir: /nonexistent\n"
    + f"cgroups:\n  default_parent: {CGROUP_PARENT}\n"
)
# Events carry every container's status (annotations too): big ones must get through.
CHANNEL_OPTIONS = [("grpc.max_receive_message_length", 64 * 1024 * 1024)]
WAIT = 20.0


class Subscriber:
    """A GetContainerEvents stream read on a thread into a queue (None: the stream ended)."""

    def __init__(self, daemon: Daemon, read: bool = True) -> None:
        self.channel = grpc.insecure_channel(daemon.address, options=CHANNEL_OPTIONS)
        self.stream = pb_grpc.RuntimeServiceStub(self.channel).GetContainerEvents(
            pb.GetEventsRequest()
        )
        # The daemon sends headers once subscribed: nothing published after this is missed.
        self.stream.initial_metadata()
        self.events: queue.Queue[pb.ContainerEventResponse | None] = queue.Queue()
        self.error: grpc.RpcError | None = None
        self.unread: list[pb.ContainerEventResponse] = []
        if read:
            threading.Thread(target=self._read, daemon=True).start()

    def _read(self) -> None:
        try:
            for event in self.stream:
                self.events.put(event)
        except grpc.RpcError as e:
            self.error = e
        self.events.put(None)

    def until(self, container_id: str, last: int) -> list[pb.ContainerEventResponse]:
        """The events for `container_id` not returned before, in order, up to one of type
        `last` (other IDs' events stay for their own calls)."""
        deadline = time.monotonic() + WAIT
        while True:
            mine = [e for e in self.unread if e.container_id == container_id]
            ends = [i for i, e in enumerate(mine) if e.container_event_type == last]
            if ends:
                taken = mine[: ends[0] + 1]
                self.unread = [e for e in self.unread if all(e is not t for t in taken)]
                return taken
            try:
                event = self.events.get(timeout=max(0.0, deadline - time.monotonic()))
            except queue.Empty:
                raise AssertionError(f"no event {last} for {container_id}; saw {mine}") from None
            assert event is not None, f"the stream ended early: {self.error}"
            self.unread.append(event)

    def close(self) -> None:
        self.stream.cancel()
        self.channel.close()


@pytest.fixture(scope="module")
def lab(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Lab]:
    with open_lab(tmp_path_factory.mktemp("events"), CONFIG) as opened:
        yield opened


@pytest.fixture
def subscribers(lab: Lab) -> Iterator[list[Subscriber]]:
    opened: list[Subscriber] = []
    try:
        yield opened
    finally:
        for s in opened:
            s.close()


def kinds(events: list[pb.ContainerEventResponse]) -> list[int]:
    return [e.container_event_type for e in events]


def test_two_subscribers_see_a_containers_life_in_order_with_statuses(
    lab: Lab, subscribers: list[Subscriber]
) -> None:
    subscribers += [Subscriber(lab.daemon), Subscriber(lab.daemon)]
    pod = lab.run_pod("events")
    for s in subscribers:
        pod_events = s.until(pod, pb.CONTAINER_STARTED_EVENT)
        assert kinds(pod_events) == [pb.CONTAINER_CREATED_EVENT, pb.CONTAINER_STARTED_EVENT]
        assert pod_events[-1].pod_sandbox_status.state == pb.SANDBOX_READY
    rt = lab.daemon.runtime()
    cid = lab.create(pod, "app", ["sleep", "3600"])
    lab.start(cid)
    # kubelet with EventedPLEG reads the pod's containers from PodSandboxStatus (it has a
    # timestamp), not from ListContainers.
    status = rt.PodSandboxStatus(pb.PodSandboxStatusRequest(pod_sandbox_id=pod), timeout=10)
    assert status.timestamp > 0
    assert [(c.id, c.state) for c in status.containers_statuses] == [(cid, pb.CONTAINER_RUNNING)]
    rt.StopContainer(pb.StopContainerRequest(container_id=cid, timeout=0), timeout=30)
    rt.RemoveContainer(pb.RemoveContainerRequest(container_id=cid), timeout=30)
    for s in subscribers:
        events = s.until(cid, pb.CONTAINER_DELETED_EVENT)
        assert kinds(events) == [
            pb.CONTAINER_CREATED_EVENT,
            pb.CONTAINER_STARTED_EVENT,
            pb.CONTAINER_STOPPED_EVENT,
            pb.CONTAINER_DELETED_EVENT,
        ]
        for event in events:
            # kubelet builds the pod's status from these two alone.
            assert event.pod_sandbox_status.id == pod
            assert event.pod_sandbox_status.metadata.uid == "uid-events"
            assert event.created_at > 0
        created, started, stopped, deleted = events
        states = [
            {c.id: c.state for c in e.containers_statuses} for e in (created, started, stopped)
        ]
        assert states == [
            {cid: pb.CONTAINER_CREATED},
            {cid: pb.CONTAINER_RUNNING},
            {cid: pb.CONTAINER_EXITED},
        ]
        assert stopped.containers_statuses[0].exit_code == 137
        assert [c.id for c in deleted.containers_statuses] == []  # gone from the pod
        assert created.created_at <= started.created_at <= stopped.created_at
    lab.remove_pod(pod)
    for s in subscribers:
        pod_events = s.until(pod, pb.CONTAINER_DELETED_EVENT)
        assert kinds(pod_events) == [pb.CONTAINER_STOPPED_EVENT, pb.CONTAINER_DELETED_EVENT]
        # kubelet drops the pod from its cache when the sandbox's DELETED carries its status.
        assert pod_events[-1].pod_sandbox_status.id == pod
        assert pod_events[-1].pod_sandbox_status.state == pb.SANDBOX_NOTREADY


def test_a_subscriber_that_stops_reading_does_not_block_the_runtime(
    lab: Lab, subscribers: list[Subscriber]
) -> None:
    stalled = Subscriber(lab.daemon, read=False)
    reader = Subscriber(lab.daemon)
    subscribers += [stalled, reader]
    pod = lab.run_pod("stalled")
    rt = lab.daemon.runtime()
    # Each event carries every container's status with these annotations: megabytes soon
    # fill what the stalled stream's transport will buffer.
    big = {"padding": "x" * 256 * 1024}
    last = ""
    for n in range(8):
        config = pb.ContainerConfig(
            metadata=pb.ContainerMetadata(name=f"c{n}"),
            image=pb.ImageSpec(image=BUSYBOX),
            command=["sleep", "3600"],
            annotations=big,
        )
        started = time.monotonic()
        last = rt.CreateContainer(
            pb.CreateContainerRequest(
                pod_sandbox_id=pod, config=config, sandbox_config=lab.configs[pod]
            ),
            timeout=30,
        ).container_id
        assert time.monotonic() - started < 10
        lab.start(last)
    # The reading subscriber got everything, the stalled one held nobody up.
    assert kinds(reader.until(last, pb.CONTAINER_STARTED_EVENT)) == [
        pb.CONTAINER_CREATED_EVENT,
        pb.CONTAINER_STARTED_EVENT,
    ]
    lab.remove_pod(pod)
    reader.until(pod, pb.CONTAINER_DELETED_EVENT)


def test_a_lost_shim_stops_its_containers_and_its_pod_in_the_stream(
    lab: Lab, subscribers: list[Subscriber]
) -> None:
    subscriber = Subscriber(lab.daemon)
    subscribers.append(subscriber)
    # One PID namespace for the pod: its init dies with the shim, and the container with it.
    pod = lab.run_pod("lost", pid_mode=0)
    cid = lab.create(pod, "app", ["sleep", "3600"], pid_mode=0)
    lab.start(cid)
    subscriber.until(cid, pb.CONTAINER_STARTED_EVENT)
    status = lab.daemon.runtime().PodSandboxStatus(
        pb.PodSandboxStatusRequest(pod_sandbox_id=pod, verbose=True), timeout=10
    )
    os.kill(json.loads(status.info["info"])["pid"], signal.SIGKILL)
    (stopped,) = subscriber.until(cid, pb.CONTAINER_STOPPED_EVENT)
    assert stopped.containers_statuses[0].state == pb.CONTAINER_EXITED
    *_, pod_stopped = subscriber.until(pod, pb.CONTAINER_STOPPED_EVENT)
    assert pod_stopped.pod_sandbox_status.state == pb.SANDBOX_NOTREADY
    lab.remove_pod(pod)


def test_metrics_of_a_running_container(lab: Lab) -> None:
    pod = lab.run_pod("metrics")
    cid = lab.create(pod, "app", ["sh", "-c", "echo hi > /tmp/file; sleep 3600"])
    lab.start(cid)
    rt = lab.daemon.runtime()
    descriptors = {
        d.name: list(d.label_keys)
        for d in rt.ListMetricDescriptors(pb.ListMetricDescriptorsRequest(), timeout=10).descriptors
    }
    response = rt.ListPodSandboxMetrics(pb.ListPodSandboxMetricsRequest(), timeout=30)
    (metrics,) = [m for m in response.pod_metrics if m.pod_sandbox_id == pod]
    (container,) = metrics.container_metrics
    assert container.container_id == cid
    values: dict[str, list[pb.Metric]] = {}
    for m in [*metrics.metrics, *container.metrics]:
        assert len(m.label_values) == len(descriptors[m.name]), m.name
        values.setdefault(m.name, []).append(m)

    def value(name: str) -> int:
        return values[name][0].value.value

    assert list(values["container_memory_usage_bytes"][0].label_values) == [cid, "app", BUSYBOX]
    assert value("container_memory_usage_bytes") > 0
    assert value("container_processes") >= 1 and value("container_threads") >= 1
    assert value("container_file_descriptors") >= 3
    assert value("container_fs_usage_bytes") > 0  # /tmp/file in the writable layer
    assert value("container_fs_limit_bytes") > value("container_fs_usage_bytes")
    assert abs(value("container_last_seen") - time.time()) < 60
    eth0 = [
        m for m in values["container_network_receive_bytes_total"] if m.label_values[3] == "eth0"
    ]
    assert eth0 and eth0[0].label_values[:2] == [pod, "POD"]
    streamed = [
        m.pod_sandbox_id
        for chunk in rt.StreamPodSandboxMetrics(pb.StreamPodSandboxMetricsRequest(), timeout=30)
        for m in chunk.pod_sandbox_metrics
    ]
    assert pod in streamed
    lab.remove_pod(pod)


def test_streams_end_cleanly_when_the_daemon_stops(tmp_path: Path) -> None:
    daemon = start_daemon(tmp_path / "daemon", CONFIG)
    try:
        subscriber = Subscriber(daemon)
        started = time.monotonic()
        assert daemon.stop(signal.SIGTERM) == 0
        # Not the 5 s grace for unary calls: the streams end first, with OK.
        assert time.monotonic() - started < 4
        assert subscriber.events.get(timeout=WAIT) is None
        assert subscriber.error is None
        subscriber.close()
    finally:
        daemon.stop(signal.SIGKILL)
