"""Where an extension (NRI: `cri_py.nri.hooks`) hooks into the pod and container lifecycle: one
call per event, made by the services at the point the event happens. The services know only
this protocol; `NO_HOOKS` (the default) does nothing, so a daemon without extensions pays a
method call per event and nothing else.

Calls run on the services' worker threads (and, for `container_stopped`, on the thread that
learnt of the exit). Pre-event hooks may refuse with a `CriError`, failing the CRI call before
anything is visible; post-event hooks are notifications and never fail the call.
"""

from __future__ import annotations

from typing import Any, Protocol

from cri_py.model.container import ContainerRecord
from cri_py.model.resources import Resources
from cri_py.model.sandbox import SandboxRecord


class LifecycleHooks(Protocol):
    # --- pods ---
    def run_pod_sandbox(self, sandbox: SandboxRecord) -> None:
        """The pod is set up (namespaces, network) but not visible yet; raising undoes it."""

    def stop_pod_sandbox(self, sandbox: SandboxRecord) -> None:
        """The pod's containers are stopped, its sandbox not yet torn down."""

    def remove_pod_sandbox(self, sandbox: SandboxRecord) -> None: ...

    def update_pod_sandbox(
        self, sandbox: SandboxRecord, resources: Resources, overhead: Resources
    ) -> None:
        """Before the pod's new resources are applied; raising refuses the update."""

    def post_update_pod_sandbox(self, sandbox: SandboxRecord) -> None: ...

    # --- containers ---
    def create_container(
        self, sandbox: SandboxRecord, container: ContainerRecord, spec: dict[str, Any]
    ) -> dict[str, Any]:
        """The spec the container will be created from (adjusted, a new dict, or `spec`
        itself); raising fails CreateContainer before anything is made."""
        return spec

    def post_create_container(self, container: ContainerRecord) -> None: ...

    def undo_create_container(
        self, sandbox: SandboxRecord, container: ContainerRecord, spec: dict[str, Any]
    ) -> None:
        """A create that `create_container` let through failed afterwards: it never existed."""

    def start_container(self, container: ContainerRecord) -> None:
        """Before the container's process is let go; raising fails StartContainer."""

    def post_start_container(self, container: ContainerRecord) -> None: ...

    def update_container(self, container: ContainerRecord, resources: Resources) -> Resources:
        """The resources an UpdateContainerResources applies (possibly changed)."""
        return resources

    def post_update_container(self, container: ContainerRecord) -> None: ...

    def container_stopped(self, container: ContainerRecord) -> None:
        """The container's process has exited (stopped, killed or on its own)."""

    def remove_container(self, container: ContainerRecord) -> None: ...


class NoHooks:
    """No extension: every event passes unchanged."""

    def run_pod_sandbox(self, sandbox: SandboxRecord) -> None:
        pass

    def stop_pod_sandbox(self, sandbox: SandboxRecord) -> None:
        pass

    def remove_pod_sandbox(self, sandbox: SandboxRecord) -> None:
        pass

    def update_pod_sandbox(
        self, sandbox: SandboxRecord, resources: Resources, overhead: Resources
    ) -> None:
        pass

    def post_update_pod_sandbox(self, sandbox: SandboxRecord) -> None:
        pass

    def create_container(
        self, sandbox: SandboxRecord, container: ContainerRecord, spec: dict[str, Any]
    ) -> dict[str, Any]:
        return spec

    def post_create_container(self, container: ContainerRecord) -> None:
        pass

    def undo_create_container(
        self, sandbox: SandboxRecord, container: ContainerRecord, spec: dict[str, Any]
    ) -> None:
        pass

    def start_container(self, container: ContainerRecord) -> None:
        pass

    def post_start_container(self, container: ContainerRecord) -> None:
        pass

    def update_container(self, container: ContainerRecord, resources: Resources) -> Resources:
        return resources

    def post_update_container(self, container: ContainerRecord) -> None:
        pass

    def container_stopped(self, container: ContainerRecord) -> None:
        pass

    def remove_container(self, container: ContainerRecord) -> None:
        pass


NO_HOOKS: LifecycleHooks = NoHooks()
