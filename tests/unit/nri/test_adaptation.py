"""The runtime side of NRI against plugins written on cri-py's own framing (fake_plugin.py):
registration, configuration, synchronization, event subscription and order, a plugin's
error, timeout or hang-up, adjustments chained through plugins, unsolicited updates and
plugins started from the plugin dir."""

from __future__ import annotations

import socket
import sys
import threading
import time
from collections.abc import Iterator, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import pytest

from cri_py.errors import StartupError
from cri_py.nri import api_pb2 as api
from cri_py.nri.adaptation import Adaptation, PluginError, Settings

from .fake_plugin import FakePlugin, RuntimeRefused

ROOT = Path(__file__).resolve().parents[3]
SPEC: dict[str, Any] = {"process": {"args": ["/pause"], "env": ["PATH=/bin"]}, "linux": {}}


@dataclass
class Runtime:
    """What the adaptation asks of the runtime: the state to synchronize, updates to apply."""

    pods: list[api.PodSandbox] = field(default_factory=list)
    containers: list[api.Container] = field(default_factory=list)
    updates: list[api.ContainerUpdate] = field(default_factory=list)

    def snapshot(self) -> tuple[list[api.PodSandbox], list[api.Container]]:
        return list(self.pods), list(self.containers)

    def update(self, updates: Sequence[api.ContainerUpdate]) -> list[api.ContainerUpdate]:
        self.updates.extend(updates)
        return [u for u in updates if u.container_id == "unknown"]


@pytest.fixture
def runtime() -> Runtime:
    return Runtime(
        pods=[api.PodSandbox(id="pod-1", name="web")],
        containers=[api.Container(id="ctr-1", pod_sandbox_id="pod-1", name="app")],
    )


def make_adaptation(tmp_path: Path, runtime: Runtime, **settings: Any) -> Adaptation:
    values = {
        "socket_path": str(tmp_path / "nri" / "nri.sock"),
        "plugin_path": str(tmp_path / "plugins"),
        "plugin_config_path": str(tmp_path / "conf"),
        "registration_timeout": 2.0,
        "request_timeout": 1.0,
        **settings,
    }
    return Adaptation(Settings(**values), "cri-py", "1.2.3", runtime.snapshot, runtime.update)


@pytest.fixture
def adaptation(tmp_path: Path, runtime: Runtime) -> Iterator[Adaptation]:
    nri = make_adaptation(tmp_path, runtime)
    nri.start()
    try:
        yield nri
    finally:
        nri.stop()


def wait_until(predicate: Any, timeout: float = 5.0) -> None:
    deadline = time.monotonic() + timeout
    while not predicate():
        if time.monotonic() > deadline:
            raise AssertionError("condition not met in time")
        time.sleep(0.01)


def join(nri: Adaptation, plugin: FakePlugin) -> FakePlugin:
    plugin.connect(nri.settings.socket_path)
    wait_until(lambda: f"{plugin.index}-{plugin.name}" in nri.plugins())
    return plugin


def pod() -> api.PodSandbox:
    return api.PodSandbox(id="pod-2", name="db", namespace="ns", uid="u")


def container(spec: dict[str, Any]) -> api.Container:
    return api.Container(id="ctr-2", pod_sandbox_id="pod-2", name="db", env=spec["process"]["env"])


def test_a_plugin_registers_is_configured_then_synchronized_with_what_exists(
    adaptation: Adaptation,
) -> None:
    plugin = join(adaptation, FakePlugin("probe", "07", [api.RUN_POD_SANDBOX]))
    assert plugin.configured is not None
    assert (plugin.configured.runtime_name, plugin.configured.runtime_version) == (
        "cri-py",
        "1.2.3",
    )
    assert (plugin.configured.registration_timeout, plugin.configured.request_timeout) == (
        2000,
        1000,
    )
    assert plugin.configured.NRI_version == "v0.12.2"
    sync = plugin.wait_call("Synchronize")
    assert [p.id for p in sync.pods] == ["pod-1"]
    assert [c.id for c in sync.containers] == ["ctr-1"]
    assert plugin.methods() == ["Configure", "Synchronize"]
    assert adaptation.plugins() == ["07-probe"]


def test_events_reach_only_subscribers_in_index_order(adaptation: Adaptation) -> None:
    late = join(adaptation, FakePlugin("late", "10", [api.RUN_POD_SANDBOX]))
    early = join(adaptation, FakePlugin("early", "05", [api.RUN_POD_SANDBOX, api.STOP_POD_SANDBOX]))
    assert adaptation.plugins() == ["05-early", "10-late"]
    adaptation.run_pod_sandbox(pod())
    adaptation.stop_pod_sandbox(pod())
    assert early.methods()[-2:] == ["RunPodSandbox", "StopPodSandbox"]
    assert late.methods()[-1] == "RunPodSandbox" and "StopPodSandbox" not in late.methods()
    first = next(t for m, _, t in early.calls if m == "RunPodSandbox")
    second = next(t for m, _, t in late.calls if m == "RunPodSandbox")
    assert first < second
    assert early.requests("RunPodSandbox")[0].pod.name == "db"


def test_a_plugins_error_fails_the_event_names_the_plugin_and_keeps_it(
    adaptation: Adaptation,
) -> None:
    def refuse(request: Any) -> None:
        raise ValueError("induced failure")

    join(adaptation, FakePlugin("strict", "00", [api.RUN_POD_SANDBOX], {"RunPodSandbox": refuse}))
    with pytest.raises(PluginError, match=r"00-strict failed RunPodSandbox: induced failure"):
        adaptation.run_pod_sandbox(pod())
    assert adaptation.plugins() == ["00-strict"]


def test_a_plugin_that_does_not_answer_in_time_is_disconnected_and_the_event_goes_on(
    adaptation: Adaptation,
) -> None:
    release = threading.Event()

    def hang(request: Any) -> None:
        release.wait(10)

    slow = join(
        adaptation, FakePlugin("slow", "00", [api.RUN_POD_SANDBOX], {"RunPodSandbox": hang})
    )
    other = join(adaptation, FakePlugin("other", "01", [api.RUN_POD_SANDBOX]))
    started = time.monotonic()
    adaptation.run_pod_sandbox(pod())
    release.set()
    assert 0.9 < time.monotonic() - started < 3
    assert other.requests("RunPodSandbox")
    assert adaptation.plugins() == ["01-other"]
    assert slow.closed.wait(5)


def test_a_plugin_that_hangs_up_is_dropped(adaptation: Adaptation) -> None:
    gone = join(adaptation, FakePlugin("gone", "00", [api.RUN_POD_SANDBOX]))
    gone.close()
    wait_until(lambda: adaptation.plugins() == [])
    adaptation.run_pod_sandbox(pod())


def test_adjustments_chain_through_plugins_and_conflicts_fail_the_create(
    adaptation: Adaptation,
) -> None:
    def set_x(request: api.CreateContainerRequest) -> api.CreateContainerResponse:
        reply = api.CreateContainerResponse()
        reply.adjust.env.add(key="X", value="1")
        return reply

    def see_x(request: api.CreateContainerRequest) -> api.CreateContainerResponse:
        reply = api.CreateContainerResponse()
        reply.adjust.annotations["saw"] = ",".join(request.container.env)
        return reply

    join(adaptation, FakePlugin("a", "00", [api.CREATE_CONTAINER], {"CreateContainer": set_x}))
    second = FakePlugin("b", "01", [api.CREATE_CONTAINER], {"CreateContainer": see_x})
    join(adaptation, second)
    spec = adaptation.create_container(pod(), container, {"process": {"env": ["PATH=/bin"]}})
    assert spec["process"]["env"] == ["PATH=/bin", "X=1"]
    assert spec["annotations"] == {"saw": "PATH=/bin,X=1"}
    second.handlers["CreateContainer"] = set_x
    with pytest.raises(PluginError, match="both tried to set env 'X'"):
        adaptation.create_container(pod(), container, {"process": {"env": []}})


def test_a_container_being_created_is_in_a_new_plugins_sync_until_it_is_listed(
    adaptation: Adaptation,
) -> None:
    adaptation.create_container(pod(), container, {"process": {"env": []}})
    first = join(adaptation, FakePlugin("first", "00"))
    assert [c.id for c in first.wait_call("Synchronize").containers] == ["ctr-1", "ctr-2"]
    adaptation.container_created("ctr-2")
    second = join(adaptation, FakePlugin("second", "01"))
    assert [c.id for c in second.wait_call("Synchronize").containers] == ["ctr-1"]


def test_a_create_waits_for_a_synchronize_in_progress_and_is_then_delivered(
    adaptation: Adaptation,
) -> None:
    release = threading.Event()

    def slow_sync(request: Any) -> None:
        release.wait(5)

    plugin = FakePlugin("slow", "00", [api.CREATE_CONTAINER], {"Synchronize": slow_sync})
    threading.Thread(target=plugin.connect, args=(adaptation.settings.socket_path,)).start()
    plugin.wait_call("Synchronize")
    done = threading.Event()
    threading.Thread(
        target=lambda: (
            adaptation.create_container(pod(), container, {"process": {"env": []}}),
            done.set(),
        )
    ).start()
    assert not done.wait(0.3)  # held back by the Synchronize
    release.set()
    assert done.wait(5)
    assert plugin.wait_call("CreateContainer").container.id == "ctr-2"


def test_update_containers_from_a_plugin_go_through_the_runtime_and_report_failures(
    adaptation: Adaptation, runtime: Runtime
) -> None:
    plugin = join(adaptation, FakePlugin("tuner", "00"))
    good = api.ContainerUpdate(container_id="ctr-1")
    good.linux.resources.memory.limit.value = 1 << 30
    bad = api.ContainerUpdate(container_id="unknown")
    failed = plugin.update_containers([good, bad])
    assert [u.container_id for u in failed] == ["unknown"]
    assert [u.container_id for u in runtime.updates] == ["ctr-1", "unknown"]
    assert runtime.updates[0].linux.resources.memory.limit.value == 1 << 30


def test_updates_returned_by_an_event_are_applied(adaptation: Adaptation, runtime: Runtime) -> None:
    def shrink(request: Any) -> api.StopContainerResponse:
        update = api.ContainerUpdate(container_id="ctr-1")
        update.linux.resources.cpu.shares.value = 2
        return api.StopContainerResponse(update=[update])

    join(adaptation, FakePlugin("x", "00", [api.STOP_CONTAINER], {"StopContainer": shrink}))
    adaptation.stop_container(pod(), container({"process": {"env": []}}))
    wait_until(lambda: bool(runtime.updates))
    assert runtime.updates[0].linux.resources.cpu.shares.value == 2


@pytest.mark.parametrize(("name", "index"), [("ok", "1"), ("ok", "a1"), ("bad/name", "00")])
def test_a_plugin_with_a_bad_name_or_index_is_refused(
    adaptation: Adaptation, name: str, index: str
) -> None:
    plugin = FakePlugin(name, index)
    with pytest.raises(RuntimeRefused, match="invalid plugin"):
        plugin.connect(adaptation.settings.socket_path)
    assert plugin.closed.wait(5)
    assert adaptation.plugins() == []


def test_a_connection_that_never_registers_is_closed_after_the_registration_timeout(
    tmp_path: Path, runtime: Runtime
) -> None:
    nri = make_adaptation(tmp_path, runtime, registration_timeout=0.3)
    nri.start()
    try:
        sock = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
        sock.connect(nri.settings.socket_path)
        sock.settimeout(5)
        assert sock.recv(1) == b""  # closed by the runtime
        sock.close()
    finally:
        nri.stop()


def test_an_older_plugin_without_the_dedicated_rpc_gets_a_state_change(
    adaptation: Adaptation,
) -> None:
    def old(request: Any) -> None:
        raise NotImplementedError("method StopPodSandbox")

    plugin = FakePlugin("old", "00", [api.STOP_POD_SANDBOX], {"StopPodSandbox": old})
    join(adaptation, plugin)
    adaptation.stop_pod_sandbox(pod())
    change = plugin.wait_call("StateChange")
    assert (change.event, change.pod.id) == (api.STOP_POD_SANDBOX, "pod-2")


def test_plugins_in_the_plugin_dir_are_started_with_their_config_and_stopped(
    tmp_path: Path, runtime: Runtime
) -> None:
    plugins, conf = tmp_path / "plugins", tmp_path / "conf"
    plugins.mkdir()
    conf.mkdir()
    script = plugins / "05-fake"
    script.write_text(
        f"#!{sys.executable}\nimport sys\nsys.path.insert(0, {str(ROOT)!r})\n"
        "from tests.unit.nri.fake_plugin import main\nmain()\n"
    )
    script.chmod(0o755)
    (plugins / "not-a-plugin").write_text("")
    (conf / "fake.conf").write_text("level: 3\n")
    nri = make_adaptation(tmp_path, runtime, registration_timeout=10.0, request_timeout=5.0)
    nri.start()
    try:
        wait_until(lambda: nri.plugins() == ["05-fake"], timeout=20)
        spec = nri.create_container(pod(), container, {"process": {"env": []}})
        assert spec["annotations"] == {
            "fake-plugin/started-by": "runtime",
            "fake-plugin/name": "fake",
            "fake-plugin/config": "level: 3",
        }
        process = nri._plugins[0].process
        assert process is not None and process.poll() is None
    finally:
        nri.stop()
    assert process.wait(5) is not None


def test_a_socket_path_taken_by_something_else_stops_the_start_with_a_clear_error(
    tmp_path: Path, runtime: Runtime
) -> None:
    nri = make_adaptation(tmp_path, runtime)
    taken = Path(nri.settings.socket_path)
    taken.parent.mkdir(parents=True)
    taken.write_text("not a socket")
    with pytest.raises(StartupError, match=r"NRI socket .*nri.sock"):
        nri.start()
    assert taken.read_text() == "not a socket"
