"""runtime.v1.RuntimeService: the handlers built so far; the rest answer UNIMPLEMENTED."""

from __future__ import annotations

import asyncio
import contextlib
import json
import time
from collections.abc import AsyncIterator, Iterator, Sequence
from typing import TypeVar

import cri_py
from cri_py.api import api_pb2 as pb
from cri_py.config import Config, to_data
from cri_py.errors import FailedPrecondition, InvalidArgument, Unimplemented
from cri_py.model.container import ContainerFilter, ContainerRecord
from cri_py.model.sandbox import SandboxFilter, SandboxState, SandboxView
from cri_py.runtime.containers import ContainerService
from cri_py.runtime.node import NodeState, conditions
from cri_py.runtime.sandboxes import SandboxService
from cri_py.runtime.stats_reader import filesystem_capacity
from cri_py.server import convert, convert_containers, convert_metrics, convert_stats
from cri_py.server.guard import Context, Serialized
from cri_py.server.images import STREAM_CHUNK
from cri_py.server.summary_cache import ReplyCache, SummaryCache
from cri_py.streaming.requests import AttachRequest, ExecRequest, PortForwardRequest
from cri_py.streaming.server import StreamServer

RUNTIME_NAME = "cri-py"
# The CRI's own version string for the Version RPC's `version` field (kubelet ignores it).
KUBELET_API_VERSION = "0.1.0"
RUNTIME_API_VERSION = "v1"

T = TypeVar("T")
# Pods per StreamPodSandboxMetrics message: a pod's metrics are a few KB, well under gRPC's cap.
METRICS_CHUNK = 50


class RuntimeServicer:
    """The RPCs of runtime.v1.RuntimeService built so far (see `Guarded` for the rest)."""

    def __init__(
        self,
        config: Config,
        node: NodeState,
        sandboxes: SandboxService,
        containers: ContainerService | None = None,
        streams: StreamServer | None = None,
    ) -> None:
        self._config = config
        self._streams_server = streams
        self._node = node
        self._sandboxes = sandboxes
        self._containers_service = containers
        # kubelet lists everything every second: summaries are rebuilt only for changed objects.
        self._pod_summaries: SummaryCache[SandboxView, pb.PodSandbox] = SummaryCache(
            convert.sandbox_summary, lambda v: (v.record, v.state)
        )
        self._container_summaries: SummaryCache[ContainerRecord, pb.Container] = SummaryCache(
            convert_containers.container_summary, lambda r: (r,)
        )
        # The last unfiltered List answers, as sent (kubelet's relist asks every second).
        self._pod_list = ReplyCache()
        self._container_list = ReplyCache()

    @property
    def _containers(self) -> ContainerService:
        if self._containers_service is None:
            raise Unimplemented("this daemon was started without the container service")
        return self._containers_service

    async def Version(self, request: pb.VersionRequest, context: Context) -> pb.VersionResponse:
        return pb.VersionResponse(
            version=KUBELET_API_VERSION,
            runtime_name=RUNTIME_NAME,
            runtime_version=cri_py.__version__,
            runtime_api_version=RUNTIME_API_VERSION,
        )

    async def Status(self, request: pb.StatusRequest, context: Context) -> pb.StatusResponse:
        status = pb.RuntimeStatus(
            conditions=[
                pb.RuntimeCondition(
                    type=c.type, status=c.status, reason=c.reason, message=c.message
                )
                for c in conditions(runtime_ready=True, network=self._sandboxes.network_state())
            ]
        )
        info: dict[str, str] = {}
        if request.verbose:
            info["config"] = json.dumps(
                {**to_data(self._config), "registries": sorted(self._config.registries)}
            )
            info["podCIDR"] = self._node.pod_cidr
            # For `cri-py info`: which network new pods get, and how many shims run.
            info["network"] = "cni" if self._sandboxes.network.uses_cni() else "builtin"
            info["shims"] = str(self._sandboxes.shim_count())
        return pb.StatusResponse(
            status=status,
            info=info,
            runtime_handlers=[
                pb.RuntimeHandler(
                    name=handler.name,
                    features=pb.RuntimeHandlerFeatures(
                        recursive_read_only_mounts=handler.recursive_read_only_mounts,
                        user_namespaces=handler.user_namespaces,
                    ),
                )
                for handler in self._sandboxes.handlers.features()
            ],
            # Merge and Strict both hold (the launcher resolves groups in the image).
            features=pb.RuntimeFeatures(supplemental_groups_policy=True),
        )

    async def RuntimeConfig(
        self, request: pb.RuntimeConfigRequest, context: Context
    ) -> pb.RuntimeConfigResponse:
        return pb.RuntimeConfigResponse(
            linux=pb.LinuxRuntimeConfiguration(
                cgroup_driver=pb.CgroupDriver.SYSTEMD
                if self._config.cgroups.driver == "systemd"
                else pb.CgroupDriver.CGROUPFS
            )
        )

    async def UpdateRuntimeConfig(
        self, request: pb.UpdateRuntimeConfigRequest, context: Context
    ) -> pb.UpdateRuntimeConfigResponse:
        self._node.set_pod_cidr(request.runtime_config.network_config.pod_cidr)
        return pb.UpdateRuntimeConfigResponse()

    # --- pod sandboxes: blocking work runs on worker threads, queries answer from memory ---

    async def RunPodSandbox(
        self, request: pb.RunPodSandboxRequest, context: Context
    ) -> pb.RunPodSandboxResponse:
        config = convert.sandbox_config(request.config)
        sandbox_id = await asyncio.to_thread(self._sandboxes.run, config, request.runtime_handler)
        return pb.RunPodSandboxResponse(pod_sandbox_id=sandbox_id)

    async def StopPodSandbox(
        self, request: pb.StopPodSandboxRequest, context: Context
    ) -> pb.StopPodSandboxResponse:
        await asyncio.to_thread(self._sandboxes.stop, request.pod_sandbox_id)
        return pb.StopPodSandboxResponse()

    async def RemovePodSandbox(
        self, request: pb.RemovePodSandboxRequest, context: Context
    ) -> pb.RemovePodSandboxResponse:
        await asyncio.to_thread(self._sandboxes.remove, request.pod_sandbox_id)
        return pb.RemovePodSandboxResponse()

    async def PodSandboxStatus(
        self, request: pb.PodSandboxStatusRequest, context: Context
    ) -> pb.PodSandboxStatusResponse:
        view = self._sandboxes.status(request.pod_sandbox_id)
        sandbox_id = view.record.id
        # kubelet with EventedPLEG takes a pod's containers from here, not from ListContainers,
        # whenever `timestamp` is set: without them it would start every container again.
        records = []
        if self._containers_service is not None:
            records = self._containers_service.list(ContainerFilter(sandbox_id=sandbox_id))
        return pb.PodSandboxStatusResponse(
            status=convert.sandbox_status(view),
            info=convert.sandbox_info(view) if request.verbose else {},
            containers_statuses=[
                convert_containers.container_status(r)
                for r in records
                if r.sandbox_id == sandbox_id
            ],
            timestamp=time.time_ns(),
        )

    async def ListPodSandbox(
        self, request: pb.ListPodSandboxRequest, context: Context
    ) -> pb.ListPodSandboxResponse | Serialized:
        selector = convert.sandbox_filter(request)
        if selector == SandboxFilter():
            return self._pod_list.reply(
                self._sandboxes.list_generation(), lambda: self._list_pods(selector)
            )
        return self._list_pods(selector)

    def _list_pods(self, selector: SandboxFilter) -> pb.ListPodSandboxResponse:
        views = self._sandboxes.list(selector)
        items = self._pod_summaries.summaries(
            ((v.record.id, v) for v in views), complete=selector == SandboxFilter()
        )
        return pb.ListPodSandboxResponse(items=items)

    # --- containers ---------------------------------------------------------------------------

    async def CreateContainer(
        self, request: pb.CreateContainerRequest, context: Context
    ) -> pb.CreateContainerResponse:
        config = convert_containers.container_config(request.config)
        container_id = await self._containers.create(request.pod_sandbox_id, config)
        return pb.CreateContainerResponse(container_id=container_id)

    async def StartContainer(
        self, request: pb.StartContainerRequest, context: Context
    ) -> pb.StartContainerResponse:
        await asyncio.to_thread(self._containers.start, request.container_id)
        return pb.StartContainerResponse()

    async def StopContainer(
        self, request: pb.StopContainerRequest, context: Context
    ) -> pb.StopContainerResponse:
        await asyncio.to_thread(self._containers.stop, request.container_id, request.timeout)
        return pb.StopContainerResponse()

    async def RemoveContainer(
        self, request: pb.RemoveContainerRequest, context: Context
    ) -> pb.RemoveContainerResponse:
        await self._containers.remove(request.container_id)
        return pb.RemoveContainerResponse()

    async def ListContainers(
        self, request: pb.ListContainersRequest, context: Context
    ) -> pb.ListContainersResponse | Serialized:
        selector = convert_containers.container_filter(request)
        if selector == ContainerFilter():
            return self._container_list.reply(
                self._containers.list_generation(), lambda: self._list_containers(selector)
            )
        return self._list_containers(selector)

    def _list_containers(self, selector: ContainerFilter) -> pb.ListContainersResponse:
        records = self._containers.list(selector)
        containers = self._container_summaries.summaries(
            ((r.id, r) for r in records), complete=selector == ContainerFilter()
        )
        return pb.ListContainersResponse(containers=containers)

    async def ContainerStatus(
        self, request: pb.ContainerStatusRequest, context: Context
    ) -> pb.ContainerStatusResponse:
        record = self._containers.status(request.container_id)
        info: dict[str, str] = {}
        if request.verbose:
            spec = await asyncio.to_thread(self._containers.spec_of, record.id)
            info = convert_containers.container_info(record, spec)
        return pb.ContainerStatusResponse(
            status=convert_containers.container_status(record), info=info
        )

    async def ExecSync(self, request: pb.ExecSyncRequest, context: Context) -> pb.ExecSyncResponse:
        stdout, stderr, code = await asyncio.to_thread(
            self._containers.exec_sync, request.container_id, tuple(request.cmd), request.timeout
        )
        return pb.ExecSyncResponse(stdout=stdout, stderr=stderr, exit_code=code)

    # --- streaming: the RPCs validate and hand out a one-time URL to the streaming server ---

    @property
    def _streams(self) -> StreamServer:
        if self._streams_server is None:
            raise Unimplemented("this daemon was started without the streaming server")
        return self._streams_server

    async def Exec(self, request: pb.ExecRequest, context: Context) -> pb.ExecResponse:
        streams = self._streams
        if not request.cmd:
            raise InvalidArgument("Exec needs a command")
        if not (request.stdin or request.stdout or request.stderr):
            raise InvalidArgument("one of stdin, stdout and stderr must be set")
        if request.tty and request.stderr:
            # A terminal has one output: kubelet's rule (stderr is merged into stdout).
            raise InvalidArgument("tty and stderr cannot both be set")
        record = self._containers.running(request.container_id)
        exec_request = ExecRequest(
            record.id,
            tuple(request.cmd),
            request.tty,
            request.stdin,
            request.stdout,
            request.stderr,
        )
        return pb.ExecResponse(url=streams.url(exec_request, "exec"))

    async def Attach(self, request: pb.AttachRequest, context: Context) -> pb.AttachResponse:
        streams = self._streams
        if not (request.stdin or request.stdout or request.stderr):
            raise InvalidArgument("one of stdin, stdout and stderr must be set")
        if request.tty and request.stderr:
            raise InvalidArgument("tty and stderr cannot both be set")
        record = self._containers.running(request.container_id)
        if request.tty != record.config.tty:
            raise InvalidArgument(
                f"tty={request.tty} does not match container {record.id} (tty={record.config.tty})"
            )
        if request.stdin and not record.config.stdin:
            raise InvalidArgument(f"container {record.id} was created without stdin")
        attach = AttachRequest(
            record.id, request.tty, request.stdin, request.stdout, request.stderr
        )
        return pb.AttachResponse(url=streams.url(attach, "attach"))

    async def PortForward(
        self, request: pb.PortForwardRequest, context: Context
    ) -> pb.PortForwardResponse:
        streams = self._streams
        view = self._sandboxes.status(request.pod_sandbox_id)
        if view.state != SandboxState.READY:
            raise FailedPrecondition(f"pod sandbox {view.record.id} is not ready")
        forward = PortForwardRequest(view.record.id, view.record.namespaces.get("net", ""))
        return pb.PortForwardResponse(url=streams.url(forward, "portforward"))

    async def ReopenContainerLog(
        self, request: pb.ReopenContainerLogRequest, context: Context
    ) -> pb.ReopenContainerLogResponse:
        await asyncio.to_thread(self._containers.reopen_log, request.container_id)
        return pb.ReopenContainerLogResponse()

    # --- resources and stats --------------------------------------------------------------------

    async def UpdateContainerResources(
        self, request: pb.UpdateContainerResourcesRequest, context: Context
    ) -> pb.UpdateContainerResourcesResponse:
        resources = convert.resources(request.linux)
        await asyncio.to_thread(self._containers.update_resources, request.container_id, resources)
        return pb.UpdateContainerResourcesResponse()

    async def UpdatePodSandboxResources(
        self, request: pb.UpdatePodSandboxResourcesRequest, context: Context
    ) -> pb.UpdatePodSandboxResourcesResponse:
        await asyncio.to_thread(
            self._sandboxes.update_resources,
            request.pod_sandbox_id,
            convert.resources(request.resources),
            convert.resources(request.overhead),
        )
        return pb.UpdatePodSandboxResourcesResponse()

    async def ContainerStats(
        self, request: pb.ContainerStatsRequest, context: Context
    ) -> pb.ContainerStatsResponse:
        record = self._containers.status(request.container_id)
        usage = await asyncio.to_thread(self._containers.usage, record)
        return pb.ContainerStatsResponse(stats=convert_stats.container_stats(usage, time.time_ns()))

    async def ListContainerStats(
        self, request: pb.ListContainerStatsRequest, context: Context
    ) -> pb.ListContainerStatsResponse:
        selector = convert_stats.container_stats_filter(request)
        usages = await asyncio.to_thread(self._containers.list_usage, selector)
        now = time.time_ns()
        return pb.ListContainerStatsResponse(
            stats=[convert_stats.container_stats(u, now) for u in usages]
        )

    async def PodSandboxStats(
        self, request: pb.PodSandboxStatsRequest, context: Context
    ) -> pb.PodSandboxStatsResponse:
        view = self._sandboxes.status(request.pod_sandbox_id)
        usages = await asyncio.to_thread(
            self._containers.sandbox_usage, SandboxFilter(id=view.record.id)
        )
        usage = next((u for u in usages if u.view.record.id == view.record.id), None)
        if usage is None:
            raise FailedPrecondition(f"pod sandbox {view.record.id} is not ready")
        return pb.PodSandboxStatsResponse(stats=convert_stats.sandbox_stats(usage, time.time_ns()))

    async def ListPodSandboxStats(
        self, request: pb.ListPodSandboxStatsRequest, context: Context
    ) -> pb.ListPodSandboxStatsResponse:
        selector = convert_stats.sandbox_stats_filter(request)
        usages = await asyncio.to_thread(self._containers.sandbox_usage, selector)
        now = time.time_ns()
        return pb.ListPodSandboxStatsResponse(
            stats=[convert_stats.sandbox_stats(u, now) for u in usages]
        )

    # --- the streamed lists (KEP-5825): the List answers, sent in chunks -----------------------

    async def StreamPodSandboxes(
        self, request: pb.StreamPodSandboxesRequest, context: Context
    ) -> AsyncIterator[pb.StreamPodSandboxesResponse]:
        listed = self._list_pods(
            convert.sandbox_filter(pb.ListPodSandboxRequest(filter=request.filter))
        )
        for chunk in _chunks(listed.items):
            yield pb.StreamPodSandboxesResponse(pod_sandboxes=chunk)

    async def StreamContainers(
        self, request: pb.StreamContainersRequest, context: Context
    ) -> AsyncIterator[pb.StreamContainersResponse]:
        listed = self._list_containers(
            convert_containers.container_filter(pb.ListContainersRequest(filter=request.filter))
        )
        for chunk in _chunks(listed.containers):
            yield pb.StreamContainersResponse(containers=chunk)

    async def StreamContainerStats(
        self, request: pb.StreamContainerStatsRequest, context: Context
    ) -> AsyncIterator[pb.StreamContainerStatsResponse]:
        listed = await self.ListContainerStats(
            pb.ListContainerStatsRequest(filter=request.filter), context
        )
        for chunk in _chunks(listed.stats):
            yield pb.StreamContainerStatsResponse(container_stats=chunk)

    async def StreamPodSandboxStats(
        self, request: pb.StreamPodSandboxStatsRequest, context: Context
    ) -> AsyncIterator[pb.StreamPodSandboxStatsResponse]:
        listed = await self.ListPodSandboxStats(
            pb.ListPodSandboxStatsRequest(filter=request.filter), context
        )
        for chunk in _chunks(listed.stats):
            yield pb.StreamPodSandboxStatsResponse(pod_sandbox_stats=chunk)

    # --- events and metrics ---------------------------------------------------------------------

    async def GetContainerEvents(
        self, request: pb.GetEventsRequest, context: Context
    ) -> AsyncIterator[pb.ContainerEventResponse]:
        """Every container and sandbox change from now on, until the client goes or the daemon
        stops (then the stream ends cleanly). A client that reads too slowly loses its oldest
        events (logged); the runtime never waits for it."""
        loop = asyncio.get_running_loop()
        ready = asyncio.Event()

        def wake() -> None:  # called on the publishing thread
            with contextlib.suppress(RuntimeError):  # the loop is closing: nobody to wake
                loop.call_soon_threadsafe(ready.set)

        subscription = self._containers.events.subscribe(wake)
        try:
            # Headers now: a client waiting for them knows it will miss nothing from here on.
            await context.send_initial_metadata(())
            while True:
                await ready.wait()
                ready.clear()
                events, ended = subscription.drain()
                for event in events:
                    # kubelet drops events without the pod's status (logging an error): the
                    # pod is gone, and its sandbox's DELETED event said so already.
                    if event.sandbox is not None:
                        yield convert_containers.container_event(event)
                if ended:
                    return
        finally:
            subscription.close()

    async def ListMetricDescriptors(
        self, request: pb.ListMetricDescriptorsRequest, context: Context
    ) -> pb.ListMetricDescriptorsResponse:
        return pb.ListMetricDescriptorsResponse(descriptors=convert_metrics.descriptors())

    async def _pod_metrics(self) -> list[pb.PodSandboxMetrics]:
        usages = await asyncio.to_thread(self._containers.sandbox_usage, SandboxFilter(), True)
        capacity = await asyncio.to_thread(filesystem_capacity, self._config.root_dir)
        now = time.time_ns()
        return [convert_metrics.pod_metrics(u, capacity, now) for u in usages]

    async def ListPodSandboxMetrics(
        self, request: pb.ListPodSandboxMetricsRequest, context: Context
    ) -> pb.ListPodSandboxMetricsResponse:
        return pb.ListPodSandboxMetricsResponse(pod_metrics=await self._pod_metrics())

    async def StreamPodSandboxMetrics(
        self, request: pb.StreamPodSandboxMetricsRequest, context: Context
    ) -> AsyncIterator[pb.StreamPodSandboxMetricsResponse]:
        """ListPodSandboxMetrics in chunks (KEP-5825: at least one item each, then EOF)."""
        pods = await self._pod_metrics()
        for start in range(0, len(pods), METRICS_CHUNK):
            yield pb.StreamPodSandboxMetricsResponse(
                pod_sandbox_metrics=pods[start : start + METRICS_CHUNK]
            )


def _chunks(items: Sequence[T]) -> Iterator[list[T]]:
    """A streamed list in messages of STREAM_CHUNK entries (none for an empty list, as
    StreamImages)."""
    for start in range(0, len(items), STREAM_CHUNK):
        yield list(items[start : start + STREAM_CHUNK])
