"""NRI behind the services' lifecycle hooks (`cri_py.runtime.lifecycle_hooks`): each hook turns
the runtime's records into NRI's messages (`convert.py`), has the adaptation relay the event,
and turns what plugins answered back into the runtime's terms: an adjusted spec, resources,
or a CRI error naming the plugin that refused.

Which refusals fail the CRI call follows containerd: RunPodSandbox, CreateContainer (and its
adjustments), StartContainer, UpdateContainerResources and UpdatePodSandboxResources fail;
stop, remove and the post-events are logged (a pod must always be stoppable).
"""

from __future__ import annotations

import copy
from collections.abc import Callable, Sequence
from typing import Any, Protocol

from cri_py.config import NriConfig
from cri_py.errors import CriError, FailedPrecondition, InvalidArgument, NotFound
from cri_py.log import get_logger
from cri_py.model.container import ContainerFilter, ContainerRecord
from cri_py.model.resources import Resources
from cri_py.model.sandbox import SandboxFilter, SandboxRecord
from cri_py.nri import api_pb2 as api
from cri_py.nri import convert
from cri_py.nri.adaptation import Adaptation, PluginError, Settings
from cri_py.nri.adjust import AdjustmentError, model_resources, resources_from_model

log = get_logger("cri_py.nri")


class Sandboxes(Protocol):
    def status(self, sandbox_id: str) -> Any: ...
    def list(self, selector: SandboxFilter) -> list[Any]: ...


class Containers(Protocol):
    def list(self, selector: ContainerFilter) -> list[ContainerRecord]: ...
    def spec_of(self, container_id: str) -> dict[str, Any]: ...


class NriHooks:
    def __init__(
        self,
        adaptation: Adaptation,
        sandboxes: Sandboxes,
        containers: Containers,
        update_resources: Callable[[str, Resources], None],
    ) -> None:
        self.adaptation = adaptation
        self._sandboxes = sandboxes
        self._containers = containers
        self._update_resources = update_resources

    # --- what the adaptation asks the runtime ---------------------------------------------------

    def snapshot(self) -> tuple[list[api.PodSandbox], list[api.Container]]:
        """Every pod and container the runtime holds, for a plugin's Synchronize."""
        pods = [convert.pod_sandbox(view.record) for view in self._sandboxes.list(SandboxFilter())]
        containers = [
            convert.container(record, self._containers.spec_of(record.id))
            for record in self._containers.list(ContainerFilter())
        ]
        return pods, containers

    def apply_updates(self, updates: Sequence[api.ContainerUpdate]) -> list[api.ContainerUpdate]:
        """Plugins' updates of containers' resources, through UpdateContainerResources' own
        path (not its hooks: an update a plugin asked for is not an event for plugins)."""
        failed = []
        for update in updates:
            try:
                resources = model_resources(update.linux.resources)
                self._update_resources(update.container_id, resources)
            except (AdjustmentError, CriError, OSError) as e:
                if not update.ignore_failure:
                    log.warning(
                        "NRI container update failed", container=update.container_id, error=str(e)
                    )
                    failed.append(update)
        return failed

    # --- helpers -----------------------------------------------------------------------------

    def _pod(self, sandbox_id: str) -> api.PodSandbox:
        try:
            return convert.pod_sandbox(self._sandboxes.status(sandbox_id).record)
        except NotFound:
            return api.PodSandbox(id=sandbox_id)

    def _container(self, record: ContainerRecord) -> api.Container:
        return convert.container(record, self._containers.spec_of(record.id))

    @staticmethod
    def _logged(event: str, call: Callable[[], None], **fields: str) -> None:
        try:
            call()
        except PluginError as e:
            log.warning(f"NRI {event} failed", error=str(e), **fields)

    # --- pods --------------------------------------------------------------------------------

    def run_pod_sandbox(self, sandbox: SandboxRecord) -> None:
        try:
            self.adaptation.run_pod_sandbox(convert.pod_sandbox(sandbox))
        except PluginError as e:
            raise FailedPrecondition(f"pod sandbox {sandbox.id}: {e}") from None

    def stop_pod_sandbox(self, sandbox: SandboxRecord) -> None:
        pod = convert.pod_sandbox(sandbox)
        self._logged(
            "StopPodSandbox", lambda: self.adaptation.stop_pod_sandbox(pod), sandbox=sandbox.id
        )

    def remove_pod_sandbox(self, sandbox: SandboxRecord) -> None:
        pod = convert.pod_sandbox(sandbox)
        self._logged(
            "RemovePodSandbox", lambda: self.adaptation.remove_pod_sandbox(pod), sandbox=sandbox.id
        )

    def update_pod_sandbox(
        self, sandbox: SandboxRecord, resources: Resources, overhead: Resources
    ) -> None:
        try:
            self.adaptation.update_pod_sandbox(
                convert.pod_sandbox(sandbox),
                resources_from_model(overhead),
                resources_from_model(resources),
            )
        except PluginError as e:
            raise FailedPrecondition(f"pod sandbox {sandbox.id}: {e}") from None

    def post_update_pod_sandbox(self, sandbox: SandboxRecord) -> None:
        pod = convert.pod_sandbox(sandbox)
        self._logged(
            "PostUpdatePodSandbox",
            lambda: self.adaptation.post_update_pod_sandbox(pod),
            sandbox=sandbox.id,
        )

    # --- containers --------------------------------------------------------------------------

    def create_container(
        self, sandbox: SandboxRecord, container: ContainerRecord, spec: dict[str, Any]
    ) -> dict[str, Any]:
        working = copy.deepcopy(spec)
        try:
            return self.adaptation.create_container(
                convert.pod_sandbox(sandbox),
                lambda s: convert.container(container, s),
                working,
            )
        except PluginError as e:
            raise FailedPrecondition(f"container {container.config.metadata.name}: {e}") from None

    def post_create_container(self, container: ContainerRecord) -> None:
        self.adaptation.container_created(container.id)
        if not self.adaptation.wants(api.POST_CREATE_CONTAINER):
            return
        pod, described = self._pod(container.sandbox_id), self._container(container)
        self._logged(
            "PostCreateContainer",
            lambda: self.adaptation.post_create_container(pod, described),
            container=container.id,
        )

    def undo_create_container(
        self, sandbox: SandboxRecord, container: ContainerRecord, spec: dict[str, Any]
    ) -> None:
        # As containerd: plugins that let the container through hear that it is gone.
        self.adaptation.container_created(container.id)
        pod, described = convert.pod_sandbox(sandbox), convert.container(container, spec)
        described.state = api.CONTAINER_STOPPED
        self._logged(
            "StopContainer",
            lambda: self.adaptation.stop_container(pod, described),
            container=container.id,
        )
        self._logged(
            "RemoveContainer",
            lambda: self.adaptation.remove_container(pod, described),
            container=container.id,
        )

    def start_container(self, container: ContainerRecord) -> None:
        if not self.adaptation.wants(api.START_CONTAINER):
            return
        try:
            self.adaptation.start_container(
                self._pod(container.sandbox_id), self._container(container)
            )
        except PluginError as e:
            raise FailedPrecondition(f"container {container.id}: {e}") from None

    def post_start_container(self, container: ContainerRecord) -> None:
        if not self.adaptation.wants(api.POST_START_CONTAINER):
            return
        pod, described = self._pod(container.sandbox_id), self._container(container)
        self._logged(
            "PostStartContainer",
            lambda: self.adaptation.post_start_container(pod, described),
            container=container.id,
        )

    def update_container(self, container: ContainerRecord, resources: Resources) -> Resources:
        try:
            changed = self.adaptation.update_container(
                self._pod(container.sandbox_id),
                self._container(container),
                resources_from_model(resources),
            )
            return model_resources(changed)
        except PluginError as e:
            raise FailedPrecondition(f"container {container.id}: {e}") from None
        except AdjustmentError as e:
            raise InvalidArgument(f"container {container.id}: NRI update refused: {e}") from None

    def post_update_container(self, container: ContainerRecord) -> None:
        if not self.adaptation.wants(api.POST_UPDATE_CONTAINER):
            return
        pod, described = self._pod(container.sandbox_id), self._container(container)
        self._logged(
            "PostUpdateContainer",
            lambda: self.adaptation.post_update_container(pod, described),
            container=container.id,
        )

    def container_stopped(self, container: ContainerRecord) -> None:
        if not self.adaptation.wants(api.STOP_CONTAINER):
            return
        pod, described = self._pod(container.sandbox_id), self._container(container)
        self._logged(
            "StopContainer",
            lambda: self.adaptation.stop_container(pod, described),
            container=container.id,
        )

    def remove_container(self, container: ContainerRecord) -> None:
        if not self.adaptation.wants(api.REMOVE_CONTAINER):
            self.adaptation.container_created(container.id)  # never pending past its removal
            return
        pod, described = self._pod(container.sandbox_id), self._container(container)
        self._logged(
            "RemoveContainer",
            lambda: self.adaptation.remove_container(pod, described),
            container=container.id,
        )


def start_nri(config: NriConfig, sandboxes: Any, containers: Any, version: str) -> NriHooks:
    """NRI for a daemon: the adaptation started (plugins launched, socket listening) and its
    hooks installed in the sandbox and container services."""
    settings = Settings(
        socket_path=config.socket_path,
        plugin_path=config.plugin_path,
        plugin_config_path=config.plugin_config_path,
        registration_timeout=config.registration_timeout_seconds,
        request_timeout=config.request_timeout_seconds,
    )
    hooks: NriHooks | None = None

    def snapshot() -> tuple[list[api.PodSandbox], list[api.Container]]:
        assert hooks is not None
        return hooks.snapshot()

    def update(updates: Sequence[api.ContainerUpdate]) -> list[api.ContainerUpdate]:
        assert hooks is not None
        return hooks.apply_updates(updates)

    adaptation = Adaptation(settings, "cri-py", version, snapshot, update)
    hooks = NriHooks(adaptation, sandboxes, containers, containers.resources.update)
    sandboxes.hooks = hooks
    containers.table.hooks = hooks
    adaptation.start()
    return hooks
