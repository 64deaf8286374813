"""runtime.v1.RuntimeService: the handlers built so far; the rest answer UNIMPLEMENTED."""

from __future__ import annotations

import asyncio
import json
import time

import cri_py
from cri_py.api import api_pb2 as pb
from cri_py.config import Config, to_data
from cri_py.errors import FailedPrecondition, Unimplemented
from cri_py.runtime.containers import ContainerService
from cri_py.runtime.model import SandboxFilter
from cri_py.runtime.node import NodeState, conditions
from cri_py.runtime.sandboxes import SandboxService
from cri_py.server import convert, convert_containers, convert_stats
from cri_py.server.guard import Context

RUNTIME_NAME = "cri-py"
# The CRI's own version string for the Version RPC's `version` field (kubelet ignores it).
KUBELET_API_VERSION = "0.1.0"
RUNTIME_API_VERSION = "v1"


class RuntimeServicer:
    """The RPCs of runtime.v1.RuntimeService built so far (see `Guarded` for the rest)."""

    def __init__(
        self,
        config: Config,
        node: NodeState,
        sandboxes: SandboxService,
        containers: ContainerService | None = None,
    ) -> None:
        self._config = config
        self._node = node
        self._sandboxes = sandboxes
        self._containers_service = containers

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
        return pb.StatusResponse(
            status=status,
            info=info,
            runtime_handlers=[pb.RuntimeHandler(name="", features=pb.RuntimeHandlerFeatures())],
            # Merge and Strict both hold (the launcher resolves groups in the image).
            features=pb.RuntimeFeatures(supplemental_groups_policy=True),
        )

    async def RuntimeConfig(
        self, request: pb.RuntimeConfigRequest, context: Context
    ) -> pb.RuntimeConfigResponse:
        return pb.RuntimeConfigResponse(
            linux=pb.LinuxRuntimeConfiguration(cgroup_driver=pb.CgroupDriver.CGROUPFS)
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
        return pb.PodSandboxStatusResponse(
            status=convert.sandbox_status(view),
            info=convert.sandbox_info(view) if request.verbose else {},
            timestamp=time.time_ns(),
        )

    async def ListPodSandbox(
        self, request: pb.ListPodSandboxRequest, context: Context
    ) -> pb.ListPodSandboxResponse:
        views = self._sandboxes.list(convert.sandbox_filter(request))
        return pb.ListPodSandboxResponse(items=[convert.sandbox_summary(v) for v in views])

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
    ) -> pb.ListContainersResponse:
        records = self._containers.list(convert_containers.container_filter(request))
        return pb.ListContainersResponse(
            containers=[convert_containers.container_summary(r) for r in records]
        )

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

    async def ReopenContainerLog(
        self, request: pb.ReopenContainerLogRequest, context: Context
    ) -> pb.ReopenContainerLogResponse:
        await asyncio.to_thread(self._containers.reopen_log, request.container_id)
        return pb.ReopenContainerLogResponse()

    # --- resources and stats --------------------------------------------------------------------

    async def UpdateContainerResources(
        self, request: pb.UpdateContainerResourcesRequest, context: Context
    ) -> pb.UpdateContainerResourcesResponse:
        resources = convert_containers.resources(request.linux)
        await asyncio.to_thread(self._containers.update_resources, request.container_id, resources)
        return pb.UpdateContainerResourcesResponse()

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
