"""NRI behind the services' hooks: which refusals fail the CRI call, what an undone create
tells plugins, and plugins' updates through UpdateContainerResources' own path."""

from __future__ import annotations

from typing import Any

import pytest

from cri_py.errors import FailedPrecondition, NotFound
from cri_py.model.container import ContainerConfig, ContainerMetadata, ContainerRecord
from cri_py.model.resources import Resources
from cri_py.model.sandbox import PodMetadata, SandboxConfig, SandboxRecord
from cri_py.nri import api_pb2 as api
from cri_py.nri.adaptation import PluginError
from cri_py.nri.hooks import NriHooks

SANDBOX = SandboxRecord(
    id="p1",
    config=SandboxConfig(metadata=PodMetadata(name="web", uid="u", namespace="ns")),
    created_at=0,
)
CONTAINER = ContainerRecord(
    id="c1",
    sandbox_id="p1",
    config=ContainerConfig(metadata=ContainerMetadata(name="app"), image="busybox"),
    created_at=0,
    image_id="sha256:x",
)


class Adaptation:
    """Records the events; refuses the ones named in `refuse`."""

    def __init__(self, refuse: tuple[str, ...] = ()) -> None:
        self.refuse = refuse
        self.events: list[tuple[str, Any]] = []

    def wants(self, event: int) -> bool:
        return True

    def __getattr__(self, name: str) -> Any:
        def event(*args: Any) -> Any:
            self.events.append((name, args))
            if name in self.refuse:
                raise PluginError(f"NRI plugin 00-x failed {name}: no")
            if name == "create_container":
                return args[2]
            if name == "update_container":
                return args[2]
            return None

        return event


class Services:
    def __init__(self) -> None:
        self.updated: list[tuple[str, Resources]] = []

    def status(self, sandbox_id: str) -> Any:
        if sandbox_id != "p1":
            raise NotFound(sandbox_id)
        return type("View", (), {"record": SANDBOX})()

    def list(self, selector: Any) -> list[Any]:
        return []

    def spec_of(self, container_id: str) -> dict[str, Any]:
        return {"process": {"args": ["sh"]}}

    def update(self, container_id: str, resources: Resources) -> None:
        if container_id == "gone":
            raise NotFound(f"container {container_id}")
        self.updated.append((container_id, resources))


def hooks(adaptation: Adaptation, services: Services | None = None) -> NriHooks:
    services = services or Services()
    return NriHooks(adaptation, services, services, services.update)  # type: ignore[arg-type]


@pytest.mark.parametrize(
    ("event", "call"),
    [
        ("run_pod_sandbox", lambda h: h.run_pod_sandbox(SANDBOX)),
        ("create_container", lambda h: h.create_container(SANDBOX, CONTAINER, {})),
        ("start_container", lambda h: h.start_container(CONTAINER)),
        ("update_container", lambda h: h.update_container(CONTAINER, Resources(cpu_shares=2))),
        (
            "update_pod_sandbox",
            lambda h: h.update_pod_sandbox(SANDBOX, Resources(), Resources()),
        ),
    ],
)
def test_a_refusal_of_a_pre_event_fails_the_cri_call(event: str, call: Any) -> None:
    with pytest.raises(FailedPrecondition, match=f"00-x failed {event}"):
        call(hooks(Adaptation(refuse=(event,))))


@pytest.mark.parametrize(
    "call",
    [
        lambda h: h.stop_pod_sandbox(SANDBOX),
        lambda h: h.remove_pod_sandbox(SANDBOX),
        lambda h: h.post_create_container(CONTAINER),
        lambda h: h.post_start_container(CONTAINER),
        lambda h: h.container_stopped(CONTAINER),
        lambda h: h.remove_container(CONTAINER),
    ],
)
def test_a_refusal_of_a_notification_is_only_logged(call: Any) -> None:
    refuse = (
        "stop_pod_sandbox",
        "remove_pod_sandbox",
        "post_create_container",
        "post_start_container",
        "stop_container",
        "remove_container",
    )
    call(hooks(Adaptation(refuse=refuse)))


def test_create_hands_plugins_a_copy_and_an_undone_create_is_stopped_and_removed() -> None:
    adaptation = Adaptation()
    spec: dict[str, Any] = {"process": {"env": []}}
    result = hooks(adaptation).create_container(SANDBOX, CONTAINER, spec)
    assert result == spec and result is not spec
    adaptation.events.clear()
    hooks(adaptation).undo_create_container(SANDBOX, CONTAINER, spec)
    assert [name for name, _ in adaptation.events] == [
        "container_created",
        "stop_container",
        "remove_container",
    ]
    stopped = adaptation.events[1][1][1]
    assert (stopped.id, stopped.state) == ("c1", api.CONTAINER_STOPPED)


def test_container_events_carry_the_pod_even_when_it_is_gone() -> None:
    adaptation = Adaptation()
    orphan = ContainerRecord(**{**CONTAINER.__dict__, "sandbox_id": "gone"})
    hooks(adaptation).remove_container(orphan)
    pod = adaptation.events[0][1][0]
    assert pod.id == "gone"


def test_plugin_updates_go_through_the_update_path_and_failures_are_reported() -> None:
    services = Services()
    good = api.ContainerUpdate(container_id="c1")
    good.linux.resources.cpu.shares.value = 256
    missing = api.ContainerUpdate(container_id="gone")
    tolerated = api.ContainerUpdate(container_id="gone", ignore_failure=True)
    unsupported = api.ContainerUpdate(container_id="c1")
    unsupported.linux.resources.pids.limit = 10
    failed = hooks(Adaptation(), services).apply_updates([good, missing, tolerated, unsupported])
    assert [u.container_id for u in failed] == ["gone", "c1"]
    assert services.updated == [("c1", Resources(cpu_shares=256))]


def test_notifications_nobody_subscribed_to_cost_no_spec_read() -> None:
    class Unwanted(Adaptation):
        def wants(self, event: int) -> bool:
            return False

    class Counting(Services):
        reads = 0

        def spec_of(self, container_id: str) -> dict[str, Any]:
            Counting.reads += 1
            return {}

    adaptation = Unwanted()
    h = hooks(adaptation, Counting())
    h.container_stopped(CONTAINER)
    h.post_start_container(CONTAINER)
    h.remove_container(CONTAINER)
    assert Counting.reads == 0
    assert [name for name, _ in adaptation.events] == ["container_created"]
